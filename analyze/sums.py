"""Shared aggregates: each big table is scanned once per tape and time filter, then named.

Reports over HTTP exchanges and flows do not group millions of enriched rows each: they read
small tables that were summed on the raw columns first (endpoint IPs, the key that names them
exactly at that time, see enrich.ip_keyed_sums_sql and segment_sums_sql, and the report dimensions),
and named after.
A tape does not change while it is open, so each table is computed once per open tape and time
filter (analyze.analysis.Analysis owns them: `a.http_sums(...)`), and shared by every report of
a set (`flowtape report` with several sections, `tape.report.*`, the HTML report). Naming stays exact across IP reuse: rows are keyed by the
instants at which a name changes (enrich.ft_cuts), never by a plain IP lookup.

- http_sums (build_http_sums): per (client, server and addressed server IP, each with the key
  that names it at the time, method, route, latency bucket): requests, 5xx, unanswered, max latency; a name can
  span several rows (an IP renamed back), so readers sum. Percentiles come from the latency
  buckets (analyze.sketch: within 1 % of the exact value).
- flow_sums (build_flow_sums): per (recording node, src, dst, each named at the time): bytes,
  packets, rows; each packet counted once per cluster. flow_seen (build_flow_seen): first start
  and last end of the flows to external destinations, per the same keys (egress only).
- The per-row pass of each (the scan of every exchange or flow, summed per IP and key or segment)
  runs on the analysis' engine (analyze.engines: DuckDB, or Spark with the same SQL transpiled);
  naming its result and merging per name stay on the tape's DuckDB connection.
- materialised (build_materialised): the named rows of the smaller tables (DNS exchanges,
  connections), which several reports read whole: named once instead of once per report (DNS alone was three times).
"""

from __future__ import annotations

import duckdb

from .enrich import (EXCHANGE_PKEYS, FLOW_PKEYS, NAME_FIELDS, PROCESS_FIELDS, enriched_dns_sql, has_processes, has_substitutions,
                     ip_keyed_sums_sql, ip_named_sql, key_names_sql, segment_named_sql, segment_rows_sql, segment_start_sql, with_names_sql)
from .engines import DUCKDB, Engine
from .sketch import bucket_sql

ROUTE = (
    "array_to_string(list_transform(string_split(split_part({path}, '?', 1), '/'), lambda s: "
    "CASE WHEN regexp_full_match(s, '[0-9]+|[0-9a-fA-F]{{8}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{12}}|[0-9a-fA-F]{{16,}}') "
    "THEN '{{id}}' ELSE s END), '/')"
)
"""A path's route: the query string dropped, ID-like segments (numbers, UUIDs, long hex) as {id}."""

# Every path is templated once (hundreds of distinct paths for millions of requests). Rows are
# summed per route number `rid`, named after: grouping 5.6M exchanges by an integer instead of
# the route's text is 10 % faster. The distinct paths are a scan of every exchange: the engine's.
_PATHS = "SELECT DISTINCT path FROM http WHERE path IS NOT NULL"
_ROUTES = """
CREATE TEMP TABLE IF NOT EXISTS ft_routes AS
SELECT path, route, dense_rank() OVER (ORDER BY route)::INTEGER AS rid
FROM (SELECT path, {route} AS route FROM ft_paths);
CREATE TEMP TABLE IF NOT EXISTS ft_route_ids AS SELECT DISTINCT rid, route FROM ft_routes"""

HTTP_AGGREGATES = ("count(*) AS n, count(*) FILTER (WHERE server_error) AS n_5xx, count(*) FILTER (WHERE status IS NULL) AS n_unanswered, "
                   "max(latency_ns) AS max_latency_ns")

# BIGINT sums: a UBIGINT sum accumulates in 128 bits (5 % slower on 50M flows); no flow row nears 2^63
FLOW_AGGREGATES = "sum(bytes::BIGINT)::UBIGINT AS bytes, sum(packets::BIGINT)::UBIGINT AS packets, count(*) AS flow_rows"
FLOW_MERGE = {"bytes": "sum(bytes)::UBIGINT", "packets": "sum(packets)::UBIGINT", "flow_rows": "sum(flow_rows)::BIGINT"}

SEEN_AGGREGATES = "min(ts_start) AS ts_start, max(ts_end) AS ts_end"
SEEN_MERGE = {"ts_start": "min(ts_start)", "ts_end": "max(ts_end)"}

def _merged(body: str, merge: dict[str, str]) -> str:
    """The rows of `body` (one per naming key: a minute, a cut, a segment) summed per name: most
    endpoints keep their names for the whole tape, so this is a tenth of the rows or less."""
    cols = ", ".join(f"{expr} AS {c}" for c, expr in merge.items())
    return f"SELECT * EXCLUDE ({', '.join(merge)}), {cols} FROM ({body}) GROUP BY ALL"


def build_http_sums(con: duckdb.DuckDBPyConnection, name: str, time_filter: str, engine: Engine = DUCKDB) -> None:
    """Create `name`: a temporary view of HTTP exchanges (each counted once, see enrich.ft_http_x)
    summed per client, server and addressed server IP, each named at the time (`client_*`,
    `server_*`, `seen_*`), method, route and latency bucket `lb`: n, n_5xx, n_unanswered,
    max_latency_ns. One name can span rows (an IP's name changing and changing back): readers
    sum. Rows without a latency have lb NULL. `time_filter` is a condition on `ts` (the request's).
    The per-row passes (the paths, the keyed sums) run on `engine`; the rest on `con`."""
    if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'ft_paths'").fetchall()[0][0]:
        engine.create_table(con, "ft_paths", _PATHS)
    con.execute(_ROUTES.format(route=ROUTE.format(path="path")))
    substitutions, processes = has_substitutions(con), has_processes(con)
    base = (f"(SELECT x.*, r.rid, {bucket_sql('x.latency_ns')} AS lb FROM ft_http_x x LEFT JOIN ft_routes r ON r.path = x.path "
            f"WHERE {time_filter})")
    # Not merged per name as flows are: an IP's keys here are its own cuts, so two keys of one IP
    # almost always name it differently (86k rows -> 78k on the bench tape, for 0.07 s).
    ends = [("client", "client_ip"), ("server", "server_ip")] + ([("seen", "seen_server_ip")] if substitutions else [])
    # Stored: the summed rows keyed by IP and cut, and the names of those keys (a few hundred).
    # The view joins them, with the route's text and, when nobody addressed a ClusterIP, the
    # seen_* copy of the server: storing 86k rows with 30 name columns cost more than joining.
    # the processes at both ends, as keys (ft_proc_keys), when some were seen outside Kubernetes
    group = "method, rid, lb" + (", client_pkey, server_pkey" if processes else "")
    engine.create_table(con, f"{name}_rows", ip_keyed_sums_sql(base, 'ts', ends, group, HTTP_AGGREGATES))
    con.execute(f"CREATE TEMP TABLE {name}_names AS {key_names_sql(f'{name}_rows', ends)}")
    seen = "" if substitutions else ", server_ip AS seen_server_ip, " + ", ".join(f"server_{f} AS seen_{f}" for f in NAME_FIELDS + PROCESS_FIELDS)
    named = with_names_sql(f"{name}_rows", f"{name}_names", ends, pkeys=EXCHANGE_PKEYS if processes else None)
    con.execute(f"CREATE TEMP VIEW {name} AS SELECT s.* EXCLUDE (rid), ri.route{seen} FROM ({named}) s LEFT JOIN ft_route_ids ri ON ri.rid = s.rid")


Window = tuple[int | None, int | None]


def build_flow_sums(con: duckdb.DuckDBPyConnection, name: str, time_filter: str, window: Window, engine: Engine = DUCKDB) -> None:
    """Create `name`: a temporary table of flow bytes, packets and rows summed per node and named
    src/dst (`src_*`, `dst_*`; exactly as a per-row lookup names them, see enrich.segment_sums_sql),
    each packet counted once per cluster. `time_filter` is a condition on `ts_start`."""
    _flow_table(con, name, f"(SELECT * FROM ft_flow_real WHERE {time_filter})", FLOW_AGGREGATES, FLOW_MERGE, window, engine)


def build_flow_seen(con: duckdb.DuckDBPyConnection, name: str, sums_table: str, time_filter: str, window: Window,
                    engine: Engine = DUCKDB) -> None:
    """Create `name`: a temporary table of the first start (`ts_start`) and last end (`ts_end`) of
    the flows to the IPs that `sums_table` (build_flow_sums) names external, per the same node, src
    and dst names.

    Kept apart from flow_sums: two timestamps per row cost a quarter of that pass over every flow,
    and only egress needs them; here a scan of dst_ip picks the few flows to those IPs first."""
    ips = [r[0] for r in con.execute(f"SELECT DISTINCT dst_real FROM {sums_table} WHERE dst_kind = 'external' ORDER BY 1").fetchall()]
    listed = "(" + ", ".join("'" + ip.replace("'", "''") + "'" for ip in ips) + ")"
    base = f"(SELECT * FROM ft_flow_real WHERE ({time_filter}) AND {'dst_real IN ' + listed if ips else 'false'})"
    _flow_table(con, name, base, SEEN_AGGREGATES, SEEN_MERGE, window, engine)


def _flow_table(con: duckdb.DuckDBPyConnection, name: str, base: str, aggregates: str, merge: dict[str, str], window: Window,
                engine: Engine) -> None:
    ends = [("src", "src_real"), ("dst", "dst_real")]
    processes = has_processes(con)
    group, pkeys = ("node, src_pkey, dst_pkey", FLOW_PKEYS) if processes else ("node", None)
    start, end = window
    if start is not None and end is not None and end >= start:
        # a segment per row instead of a lookup per row and IP: on 50M flows, 1 s less
        engine.create_table(con, f"{name}_g", segment_rows_sql(base, "ts_start", ends, group, aggregates, segment_start_sql(con, start, end)))
        body = f"WITH {segment_named_sql(f'{name}_g', ends, pkeys)}"
    else:
        engine.create_table(con, f"{name}_g", ip_keyed_sums_sql(base, "ts_start", ends, group, aggregates))
        body = f"WITH {ip_named_sql(f'{name}_g', ends, pkeys)}"
    con.execute(f"""CREATE TEMP TABLE {name} AS {_merged(body, merge)}
        HAVING node = src_node OR src_node IS NULL OR src_node NOT IN (SELECT node FROM ft_flow_nodes)""")


MATERIALISABLE = ("ft_dns_x", "enriched_dns", "enriched_connections")


def build_materialised(con: duckdb.DuckDBPyConnection, name: str, view: str, source: str) -> None:
    """Create `name`: a temporary table holding the rows of `view` (one of MATERIALISABLE), read
    from `source` (for enriched_dns: the materialised ft_dns_x, named once instead of per report)."""
    rows = enriched_dns_sql(source, has_processes(con)) if view == "enriched_dns" else f"SELECT * FROM {view}"
    con.execute(f"CREATE TEMP TABLE {name} AS {rows}")
