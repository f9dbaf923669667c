"""flowtape: a flight recorder for cluster networks.

    >>> import flowtape
    >>> tape = flowtape.open("fixtures/tiny.tape")
    >>> sorted(tape.nodes)
    ['node-a', 'node-b']
"""

from __future__ import annotations

import os as _os
import sys as _sys

__version__ = "0.1.0"

# `flowtape record` runs for days on a node. pyarrow's default allocator (mimalloc) keeps what the
# writer's per-rotation buffers freed: a 20-s replay of 2.7k requests/s grew anonymous memory by
# 69-77 MiB with it and by 18 MiB with the system allocator, CPU unchanged (docs/recorder.md). pyarrow
# reads this variable once, when it is imported (just below, through .reader): so it is set here, only
# for the recorder (the analysis commands keep mimalloc, faster for DuckDB/Polars handing Arrow around)
# and never over a value the user set.
if _sys.argv[1:2] == ["record"]:
    _os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

from .errors import Exit, FlowtapeError, UsageError  # noqa: E402
from .schema import FORMAT, TABLES  # noqa: E402
from . import reader  # noqa: E402
from .tape import Problem, Tape, TapeWriter  # noqa: E402


def _analysis(tape: Tape):
    """Every open tape's analysis state: the one place where the core meets flowtape.analyze."""
    from .analyze.analysis import Analysis

    return Analysis(tape)


reader.ANALYSIS = _analysis


def open(path: str, engine: str = "duckdb", spark_master: str | None = None) -> Tape:  # noqa: A001 - the public API is flowtape.open
    """Open a tape for reading: DuckDB views and Polars LazyFrames over its tables.

    `engine` says where the reports' heavy per-row stage runs: "duckdb" (in process) or "spark"
    (Apache Spark, `spark_master` default local[2]; docs/spark.md). Everything else is DuckDB's."""
    from .analyze.engines import ENGINES

    if engine not in ENGINES:
        raise UsageError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    return Tape(path, engine=engine, spark_master=spark_master)


__all__ = ["FORMAT", "TABLES", "Exit", "FlowtapeError", "Problem", "Tape", "TapeWriter", "open", "__version__"]
