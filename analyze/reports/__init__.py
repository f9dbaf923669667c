"""Reports: functions of a Tape returning Polars DataFrames. Rendering is elsewhere (analyze.render)."""
