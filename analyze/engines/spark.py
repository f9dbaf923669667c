"""The Spark engine: the heavy per-row stage of the reports on Apache Spark (docs/spark.md).

analyze.sums hands every per-row pass to an engine as DuckDB SQL (analyze.engines). This one
turns that SQL into Spark SQL with SQLGlot and runs it over the tape's Parquet parts; the
result (a few thousand rows per IP and cut, or per segment) comes back as Arrow into a DuckDB
temporary table, and the tape's DuckDB connection names it and finishes the reports as it
does for the DuckDB engine. One definition of each report, two engines.

What the transpiling adds to SQLGlot's duckdb -> spark translation:
- Timestamps are int64 epoch nanoseconds on the Spark side: Spark's own timestamps hold
  microseconds, and the cuts that name an IP (enrich.ft_cuts) are nanosecond instants, so the
  Parquet `timestamp[ns]` columns are read as longs (spark.sql.legacy.parquet.nanosAsLong) and
  `epoch_ns(x)` becomes `x`, `INTERVAL n SECOND` n * 10^9, a timestamp literal its epoch ns.
- Unsigned types (DuckDB UBIGINT, ...) become BIGINT; the result is cast back to the types
  DuckDB gives the same SQL (DESCRIBE), so both engines hand the reports identical tables.
- Every table the SQL names is found where it lives: the tape's event tables are read by Spark
  from the parts (Hive partitions `node=...` as they are); a DuckDB view (ft_http_x,
  ft_flow_real) is transpiled in turn from its definition; a DuckDB table (the small analysis
  state: ft_ip_cuts, ft_routes, ft_conn_subst, ...) is shipped to Spark as Arrow.
- An ASOF join (flows -> the process of their connection, on tapes with processes outside
  Kubernetes) becomes an equality join on the interval [ts, next ts) of the joined rows (_asof).
"""

from __future__ import annotations

import atexit
import datetime as dt
import itertools
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import QueryError, Unsupported, UsageError
from ...schema import TABLES

DEFAULT_MASTER = "local[2]"

_INTERVAL_NS = {"NANOSECOND": 1, "MICROSECOND": 1_000, "MILLISECOND": 1_000_000, "SECOND": 1_000_000_000, "MINUTE": 60_000_000_000,
                "HOUR": 3_600_000_000_000, "DAY": 86_400_000_000_000}

_TO_INTERVAL = {f"TO_{unit}S": ns for unit, ns in _INTERVAL_NS.items()}

_session: Any = None
_session_master: str | None = None
_log_dir: Path | None = None
_ids = itertools.count(1)


def check_available() -> None:
    """Raise Unsupported (exit 7) with one line when this machine cannot run Spark."""
    java_home = os.environ.get("JAVA_HOME")
    if not (java_home and Path(java_home, "bin", "java").exists()) and not shutil.which("java"):
        raise Unsupported("--engine spark needs Java 17 or later: apt-get install openjdk-17-jre-headless (or set JAVA_HOME)")
    try:
        import pyspark  # noqa: F401
        import sqlglot  # noqa: F401
    except ImportError as e:
        raise Unsupported(f"--engine spark needs {e.name}: pip install 'flowtape[spark]'") from None


def session(master: str = DEFAULT_MASTER) -> Any:
    """The process' SparkSession for `master`, started on first use (a different master restarts it).

    Local masters get few shuffle partitions (the per-row stage's results are small) and quiet
    logging; a cluster keeps its own defaults, adaptive execution coalescing partitions."""
    global _session, _session_master, _log_dir
    if _session is not None and _session_master == master:
        return _session
    stop()
    from pyspark.sql import SparkSession

    b = (SparkSession.builder.master(master).appName("flowtape")
         .config("spark.ui.enabled", "false")
         .config("spark.ui.showConsoleProgress", "false")
         .config("spark.sql.session.timeZone", "UTC")
         .config("spark.sql.legacy.parquet.nanosAsLong", "true")  # timestamp[ns] as epoch ns (see the module docstring)
         .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")  # node=... stays a string
         .config("spark.sql.execution.arrow.pyspark.enabled", "true"))
    if master.startswith("local"):
        b = b.config("spark.sql.shuffle.partitions", "4").config("spark.default.parallelism", "4")
    # The JVM writes its start-up notes and logs to the stderr it inherits: a file, not the
    # user's terminal (a failure reaches us as an exception and is reported as one line)
    _log_dir = Path(tempfile.mkdtemp(prefix="flowtape-spark-"))
    log = _log_dir / "jvm.log"
    saved, fd = os.dup(2), os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 2)
    try:
        s = b.getOrCreate()
    except Exception as e:  # the JVM did not start: a bad master URL, a Java too old
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        _log_dir = None  # kept for the user to read
        raise Unsupported(f"--engine spark: Spark did not start with master {master!r}: {first[:200]} (log: {log})") from None
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
    s.sparkContext.setLogLevel("ERROR")
    _session, _session_master = s, master
    return s


@atexit.register
def stop() -> None:
    """Stop the process' SparkSession, if any, and remove its log."""
    global _session, _session_master, _log_dir
    if _session is not None:
        try:
            _session.stop()
        finally:
            _session, _session_master = None, None
    if _log_dir is not None:
        shutil.rmtree(_log_dir, ignore_errors=True)
        _log_dir = None


def _ns(text: str) -> int:
    """Epoch nanoseconds of a timestamp literal (ISO 8601; naive is UTC)."""
    t = dt.datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    t = t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t
    delta = t - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def to_spark(tree: Any) -> Any:
    """`tree` (SQLGlot, read as DuckDB) rewritten for Spark with timestamps as epoch ns (module docstring)."""
    from sqlglot import exp

    unsigned = {exp.DataType.Type.UBIGINT, exp.DataType.Type.UINT, exp.DataType.Type.USMALLINT, exp.DataType.Type.UTINYINT}
    times = {exp.DataType.Type.TIMESTAMP, exp.DataType.Type.TIMESTAMPTZ, exp.DataType.Type.TIMESTAMP_NS}

    def fix(node: Any) -> Any:
        if isinstance(node, exp.Anonymous) and node.name.upper() == "EPOCH_NS":
            return node.expressions[0]
        if isinstance(node, exp.Anonymous) and node.name.upper() in _TO_INTERVAL:
            # DuckDB's own spelling of an INTERVAL in a view's stored SQL: to_seconds(CAST(5 AS DOUBLE))
            arg = node.expressions[0]
            while isinstance(arg, exp.Cast):
                arg = arg.this
            ns = _TO_INTERVAL[node.name.upper()]
            if isinstance(arg, exp.Literal) and not arg.is_string:
                return exp.Literal.number(round(float(arg.this) * ns))
            return exp.Cast(this=exp.Mul(this=exp.paren(arg), expression=exp.Literal.number(ns)), to=exp.DataType.build("BIGINT"))
        if isinstance(node, exp.Cast) and node.to.this in times:
            if isinstance(node.this, exp.Literal) and node.this.is_string:
                return exp.Literal.number(_ns(node.this.this))
            raise QueryError(f"the Spark engine cannot translate {node.sql(dialect='duckdb')[:120]} (timestamps are epoch ns there)")
        if isinstance(node, exp.Interval):
            unit = node.args.get("unit")
            unit = (unit.name if unit is not None else "").upper().rstrip("S")
            if unit not in _INTERVAL_NS or not isinstance(node.this, exp.Literal):
                raise QueryError(f"the Spark engine cannot translate {node.sql(dialect='duckdb')}")
            return exp.Literal.number(int(node.this.this) * _INTERVAL_NS[unit])
        if isinstance(node, exp.DataType) and node.this in unsigned:
            return exp.DataType.build("BIGINT")
        return node

    # ASOF joins first: their rewrite holds timestamp expressions that the second pass converts
    tree = tree.transform(lambda n: _asof(n) if isinstance(n, exp.Join) and n.args.get("method") == "ASOF" else n)
    return tree.transform(fix)


def _asof(join: Any) -> Any:
    """An ASOF join as a plain one, which Spark has: `ASOF [LEFT] JOIN t a ON <equalities> AND x >= a.ts`
    picks, per row, the a with the latest ts at or before x among those with equal keys, i.e. the a
    whose [ts, next ts of its keys) holds x. So `t` gets its next ts (lead over the keys) and the
    join asks for that interval: a hash join on the keys, one match at most."""
    from sqlglot import exp

    def refuse() -> Any:
        raise Unsupported(f"--engine spark: cannot translate the ASOF join {join.sql(dialect='duckdb')[:160]}; use --engine duckdb")

    table = join.this
    if not isinstance(table, exp.Table) or not table.alias:
        refuse()
    alias = table.alias
    def conjuncts(e: Any) -> list[Any]:  # DuckDB stores views' conditions wrapped in parentheses
        e = e.unnest()
        return conjuncts(e.this) + conjuncts(e.expression) if isinstance(e, exp.And) else [e]

    preds = conjuncts(join.args["on"]) if join.args.get("on") is not None else []
    mine = lambda e: isinstance(e, exp.Column) and e.table == alias  # noqa: E731
    keys, bound = [], None
    for p in preds:
        if isinstance(p, exp.EQ) and (mine(p.this) != mine(p.expression)):
            keys.append(p.this if mine(p.this) else p.expression)
        elif isinstance(p, (exp.GTE, exp.GT)) and mine(p.expression) and not mine(p.this) and bound is None:
            bound = (p.this, p.expression, isinstance(p, exp.GTE))  # x >= a.ts
        elif isinstance(p, (exp.LTE, exp.LT)) and mine(p.this) and not mine(p.expression) and bound is None:
            bound = (p.expression, p.this, isinstance(p, exp.LTE))  # a.ts <= x
        else:
            refuse()
    if bound is None or not keys:
        refuse()
    x, ts, inclusive = bound
    part = ", ".join(k.name for k in keys)
    sub = exp.maybe_parse(f"(SELECT *, lead({ts.name}) OVER (PARTITION BY {part} ORDER BY {ts.name}) AS __asof_next FROM {table.name})",
                          dialect="duckdb")
    nxt = exp.column("__asof_next", table=alias)
    within = exp.LT(this=x.copy(), expression=nxt) if inclusive else exp.LTE(this=x.copy(), expression=nxt.copy())
    on = exp.and_(join.args["on"].copy(), exp.paren(exp.or_(exp.Is(this=nxt.copy(), expression=exp.Null()), within)))
    return exp.Join(this=exp.Subquery(this=sub.this if isinstance(sub, exp.Subquery) else sub, alias=exp.TableAlias(this=exp.to_identifier(alias))),
                    on=on, side=join.args.get("side"), kind=join.args.get("kind"))


def _spark_arrow(table: pa.Table) -> pa.Table:
    """`table` with the types Spark's side uses: timestamps as int64 epoch ns, unsigned as int64."""
    cols = []
    for f, col in zip(table.schema, table.columns):
        cols.append(pc.cast(col, _spark_type(f.type)))
    return pa.Table.from_arrays(cols, names=table.column_names)


def _spark_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_timestamp(t):
        return pa.int64()  # cast below goes through ns first
    if pa.types.is_unsigned_integer(t):
        return pa.int64() if t.bit_width >= 32 else pa.int32()
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(_spark_type(t.value_type))
    if pa.types.is_map(t):
        return pa.map_(_spark_type(t.key_type), _spark_type(t.item_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _spark_type(f.type)) for f in t])
    return t


def _to_ns(table: pa.Table) -> pa.Table:
    """Timestamp columns (any unit) as ns first, so the int64 cast gives epoch ns."""
    cols = [pc.cast(c, pa.timestamp("ns", tz=f.type.tz)) if pa.types.is_timestamp(f.type) else c for f, c in zip(table.schema, table.columns)]
    return pa.Table.from_arrays(cols, names=table.column_names)


class SparkEngine:
    """Runs analyze.sums' per-row passes on Spark for one open tape (see the module docstring)."""

    name = "spark"

    def __init__(self, tape: Any, master: str | None = None) -> None:
        check_available()
        self.tape = tape
        self.master = master or DEFAULT_MASTER
        if not isinstance(self.master, str) or not self.master.strip():
            raise UsageError("--spark-master: give a Spark master URL such as local[2] or spark://HOST:7077")
        # Spark temporary views are per session: names carry this tape's number, so two open
        # tapes never read each other's tables
        self._prefix = f"ft{next(_ids)}_"
        self._made: dict[str, str] = {}
        self.timings: list[tuple[str, float]] = []  # (table, seconds: translating, shipping, Spark), for the benchmark

    @property
    def spark(self) -> Any:
        return session(self.master)

    def create_table(self, con: duckdb.DuckDBPyConnection, name: str, sql: str) -> None:
        import sqlglot

        types = con.execute(f"DESCRIBE {sql}").fetchall()  # what DuckDB would have made: the result is cast back to it
        t0 = time.perf_counter()
        text = self.spark_sql(con, sqlglot.parse_one(sql, read="duckdb"))
        try:
            result = self.spark.sql(text).toArrow()
        except Exception as e:
            raise QueryError.failed(e) from None
        self.timings.append((name, time.perf_counter() - t0))
        tmp = f"__spark_{name}"
        con.register(tmp, result)
        try:
            cols = ", ".join(
                f'CAST(make_timestamp_ns("{c}") AS {t}) AS "{c}"' if "TIMESTAMP" in t.upper() else f'CAST("{c}" AS {t}) AS "{c}"'
                for c, t, *_ in types)
            con.execute(f"CREATE TEMP TABLE {name} AS SELECT {cols} FROM {tmp}")
        finally:
            con.unregister(tmp)

    def spark_sql(self, con: duckdb.DuckDBPyConnection, tree: Any) -> str:
        """`tree` (DuckDB SQL) as Spark SQL, every table it names made available to Spark."""
        from sqlglot import exp

        tree = to_spark(tree)
        ctes = {c.alias_or_name for c in tree.find_all(exp.CTE)}
        for t in list(tree.find_all(exp.Table)):
            if not isinstance(t.this, exp.Identifier) or t.name in ctes or t.args.get("db"):
                continue
            source = t.name
            if not t.alias:
                t.set("alias", exp.TableAlias(this=exp.to_identifier(source)))
            t.set("this", exp.to_identifier(self._source(con, source)))
        return tree.sql(dialect="spark")

    def _source(self, con: duckdb.DuckDBPyConnection, name: str) -> str:
        """The Spark name of DuckDB's `name`: a tape table read from its parts, a view
        transpiled, a table shipped (always anew: the analysis replaces some of its tables)."""
        import sqlglot

        spark_name = self._prefix + name
        decl = TABLES.get(name)
        if decl is not None and decl.kind == "event" and self.tape.files(name):
            if name not in self._made:
                self._read_parts(name, spark_name)
                self._made[name] = spark_name
            return spark_name
        # a temporary view first, as DuckDB resolves the name
        view = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = ? AND NOT internal ORDER BY temporary DESC", [name]).fetchall()
        if view and decl is None:
            if name not in self._made:
                create = sqlglot.parse_one(view[0][0], read="duckdb")
                body = self.spark_sql(con, create.expression)
                self.spark.sql(f"CREATE OR REPLACE TEMPORARY VIEW {spark_name} AS {body}")
                self._made[name] = spark_name
            return spark_name
        if view or con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]).fetchall()[0][0]:
            # small analysis state (or a state table / an empty tape table): shipped as Arrow
            table = _spark_arrow(_to_ns(con.sql(f'SELECT * FROM "{name}"').to_arrow_table()))
            self.spark.createDataFrame(table).createOrReplaceTempView(spark_name)
            return spark_name
        raise QueryError(f"the Spark engine found no table or view {name!r} on the tape's connection")

    def _read_parts(self, name: str, spark_name: str) -> None:
        """Register the readable parts of tape table `name` (Tape.files: the parts DuckDB reads,
        damaged ones left out) with the table's columns in declared order; a column a part
        predates (schema.Column.added) is null there, and absent from every part, a typed null."""
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import from_arrow_type

        decl = TABLES[name]
        base = str(Path(self.tape.path) / name)
        # footers are read for a merged schema only when parts differ in columns (a big tape has
        # thousands of parts: merging reads every footer)
        mixed = len({p.columns for p in self.tape.parts if p.table == name}) > 1
        df = self.spark.read.option("basePath", base).option("mergeSchema", str(mixed).lower()).parquet(*self.tape.files(name))
        have = set(df.columns)
        cols = [F.col(c.name) if c.name in have else F.lit(None).cast(from_arrow_type(_spark_type(c.type))).alias(c.name) for c in decl.columns]
        df.select(*cols).createOrReplaceTempView(spark_name)
