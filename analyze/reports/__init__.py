"""Reports: functions of a tape's Analysis (analyze.analysis) returning Polars DataFrames, with their filters and prices.

May import the naming core (enrich, sums, sketch, analysis); never analyze.render (rendering is separate)."""
