"""flowtape.analyze: everything that reads a tape.

Top level: the naming core (enrich, sums, sketch, analysis) and the `tape.report` API; reports/ compute
DataFrames, render/ draws them, ci/ judges them. Imports flowtape's core; never flowtape.capture."""
