"""Where the heavy per-row stage of the reports runs: DuckDB (default) or Apache Spark.

The reports read small tables that analyze.sums builds from one pass over every HTTP exchange
and flow (per IP and cut, per segment). That pass is the only part whose cost grows with the
tape; naming its few rows and finishing the reports stays on the tape's DuckDB connection. An
engine is handed that pass as DuckDB SQL and leaves its result in a DuckDB temporary table:

- DuckDBEngine runs it in place;
- analyze.engines.spark.SparkEngine transpiles the same SQL to Spark SQL (SQLGlot), runs it over the
  tape's Parquet parts, and brings the result back as Arrow (docs/spark.md).

So each report's logic is written once, in the SQL the sums builders already produce.

May import the core (flowtape.errors, flowtape.schema); never the reports or render: analyze.sums
calls it, not the other way round.
"""

from __future__ import annotations

from typing import Protocol

import duckdb

ENGINES = ("duckdb", "spark")


class Engine(Protocol):
    name: str

    def create_table(self, con: duckdb.DuckDBPyConnection, name: str, sql: str) -> None:
        """Create the temporary table `name` on `con` holding the rows of `sql` (DuckDB SQL over
        the tape's views and the analysis' ft_* tables)."""
        ...


class DuckDBEngine:
    name = "duckdb"

    def create_table(self, con: duckdb.DuckDBPyConnection, name: str, sql: str) -> None:
        con.execute(f"CREATE TEMP TABLE {name} AS {sql}")


DUCKDB = DuckDBEngine()


def make_engine(name: str, tape: object, master: str | None = None) -> Engine:
    """The engine called `name` (one of ENGINES) for `tape`; a one-line error when it cannot run."""
    from ...errors import UsageError

    if name == "duckdb":
        if master:
            raise UsageError("--spark-master needs --engine spark")
        return DUCKDB
    if name == "spark":
        from .spark import SparkEngine

        return SparkEngine(tape, master)
    raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, not {name!r}")
