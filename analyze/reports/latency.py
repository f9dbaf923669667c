"""Latency: HTTP per edge and per route, DNS lookups per name and server, TCP connect and srtt.

Routes template ID-like path segments (numbers, UUIDs, long hex) as `{id}` and drop the query
string, so `/orders/1001` and `/orders/1002` are one route `/orders/{id}`.
"""

from __future__ import annotations

import polars as pl

from ...errors import UsageError
from ...reader import Tape
from ..enrich import GRANULARITIES, create_views, name_sql, resolve_sql
from .filters import Filters

ROUTE = (
    "array_to_string(list_transform(string_split(split_part({path}, '?', 1), '/'), lambda s: "
    "CASE WHEN regexp_full_match(s, '[0-9]+|[0-9a-fA-F]{{8}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{12}}|[0-9a-fA-F]{{16,}}') "
    "THEN '{{id}}' ELSE s END), '/')"
)

HTTP_SQL = """
SELECT {group_cols}, count(*) AS requests,
       count(*) FILTER (WHERE status >= 500) AS errors_5xx,
       quantile_cont(latency_ns, 0.50) / 1e6 AS p50_ms,
       quantile_cont(latency_ns, 0.95) / 1e6 AS p95_ms,
       quantile_cont(latency_ns, 0.99) / 1e6 AS p99_ms,
       max(latency_ns) / 1e6 AS max_ms
FROM (
    SELECT {client_name} AS client, {server_name} AS server, x.method, {route} AS route, x.status, x.latency_ns,
           x.hc_namespace, x.hs_namespace
    FROM (SELECT h.*, {hc_cols}, {hs_cols} FROM ft_http_x h {hc_joins} {hs_joins} WHERE {time_filter}) x
)
WHERE latency_ns IS NOT NULL AND {ns_filter}
GROUP BY ALL
ORDER BY requests DESC, {group_cols}
"""

DNS_SQL = """
SELECT qname, server_ip, count(*) AS lookups,
       count(*) FILTER (WHERE ts_answer IS NULL) AS unanswered,
       quantile_cont(latency_ns, 0.50) / 1e6 AS p50_ms,
       quantile_cont(latency_ns, 0.95) / 1e6 AS p95_ms,
       quantile_cont(latency_ns, 0.99) / 1e6 AS p99_ms,
       max(latency_ns) / 1e6 AS max_ms
FROM dns WHERE {time_filter}
GROUP BY ALL ORDER BY lookups DESC, qname, server_ip
"""

TCP_SQL = """
SELECT {client_name} AS client, {server_name} AS server, count(*) AS connections,
       quantile_cont(connect_latency_ns, 0.50) / 1e6 AS connect_p50_ms,
       quantile_cont(connect_latency_ns, 0.99) / 1e6 AS connect_p99_ms,
       quantile_cont(srtt_us, 0.50) / 1e3 AS srtt_p50_ms,
       quantile_cont(srtt_us, 0.99) / 1e3 AS srtt_p99_ms
FROM (SELECT c.*, {cc_cols}, {cs_cols} FROM ft_conn_x c {cc_joins} {cs_joins} WHERE {time_filter}) x
WHERE {ns_filter}
GROUP BY ALL ORDER BY connections DESC, client, server
"""


def _check_by(by: str) -> None:
    if by not in GRANULARITIES:
        raise UsageError(f"--by must be one of {', '.join(GRANULARITIES)}, not {by!r}")


def http_latency(tape: Tape, by: str = "workload", per_route: bool = False, filters: Filters | None = None) -> pl.DataFrame:
    """HTTP latency (time to first response byte) per edge, or per edge and route."""
    _check_by(by)
    f = filters or Filters()
    create_views(tape.con)
    hc_joins, hc_cols = resolve_sql("h", "client_ip", "ts", "hc")
    hs_joins, hs_cols = resolve_sql("h", "seen_server_ip" if by == "service" else "server_ip", "ts", "hs")
    sql = HTTP_SQL.format(
        group_cols="client, server, method, route" if per_route else "client, server",
        client_name=name_sql("x.hc", "x.client_ip", by), server_name=name_sql("x.hs", "x.server_ip", by),
        route=ROUTE.format(path="x.path"), hc_cols=hc_cols, hs_cols=hs_cols, hc_joins=hc_joins, hs_joins=hs_joins,
        time_filter=f.time_sql("h.ts"), ns_filter=f.namespace_sql("hc_namespace", "hs_namespace"),
    )
    return tape.sql(sql).pl()


def dns_latency(tape: Tape, filters: Filters | None = None) -> pl.DataFrame:
    """DNS lookup latency per name asked and server."""
    f = filters or Filters()
    return tape.sql(DNS_SQL.format(time_filter=f.time_sql("ts_query"))).pl()


def tcp_latency(tape: Tape, by: str = "workload", filters: Filters | None = None) -> pl.DataFrame:
    """TCP connect time (client side) and smoothed RTT per edge."""
    _check_by(by)
    f = filters or Filters()
    create_views(tape.con)
    cc_joins, cc_cols = resolve_sql("c", "client_ip", "ts", "cc")
    cs_joins, cs_cols = resolve_sql("c", "seen_server_ip" if by == "service" else "server_ip", "ts", "cs")
    sql = TCP_SQL.format(
        client_name=name_sql("x.cc", "x.client_ip", by), server_name=name_sql("x.cs", "x.server_ip", by),
        cc_cols=cc_cols, cs_cols=cs_cols, cc_joins=cc_joins, cs_joins=cs_joins,
        time_filter=f.time_sql("c.ts"), ns_filter=f.namespace_sql("cc_namespace", "cs_namespace"),
    )
    return tape.sql(sql).pl()
