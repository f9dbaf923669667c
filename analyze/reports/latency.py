"""Latency: HTTP per edge and per route, DNS lookups per name and server, TCP connect and srtt.

Routes template ID-like path segments (numbers, UUIDs, long hex) as `{id}` and drop the query
string, so `/orders/1001` and `/orders/1002` are one route `/orders/{id}`.
"""

from __future__ import annotations

import polars as pl

from ...reader import Tape
from ..enrich import create_views, name_sql, server_name_sql
from .filters import Filters, check_by

ROUTE = (
    "array_to_string(list_transform(string_split(split_part({path}, '?', 1), '/'), lambda s: "
    "CASE WHEN regexp_full_match(s, '[0-9]+|[0-9a-fA-F]{{8}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{12}}|[0-9a-fA-F]{{16,}}') "
    "THEN '{{id}}' ELSE s END), '/')"
)

HTTP_SQL = """
WITH routes AS (SELECT path, {route} AS route FROM (SELECT DISTINCT path FROM ft_http_x))  -- template each path once
SELECT {client} AS client, {server} AS server{route_cols}, count(*) AS requests,
       count(*) FILTER (WHERE status >= 500) AS errors_5xx,
       quantile_cont(latency_ns, 0.50) / 1e6 AS p50_ms,
       quantile_cont(latency_ns, 0.95) / 1e6 AS p95_ms,
       quantile_cont(latency_ns, 0.99) / 1e6 AS p99_ms,
       max(latency_ns) / 1e6 AS max_ms
FROM enriched_http {route_join}
WHERE latency_ns IS NOT NULL AND {where}
GROUP BY ALL
ORDER BY requests DESC, client, server{route_order}
"""

DNS_SQL = """
SELECT qname, server_ip, count(*) AS lookups,
       count(*) FILTER (WHERE ts_answer IS NULL) AS unanswered,
       quantile_cont(latency_ns, 0.50) / 1e6 AS p50_ms,
       quantile_cont(latency_ns, 0.95) / 1e6 AS p95_ms,
       quantile_cont(latency_ns, 0.99) / 1e6 AS p99_ms,
       max(latency_ns) / 1e6 AS max_ms
FROM enriched_dns WHERE {where}
GROUP BY ALL ORDER BY lookups DESC, qname, server_ip
"""

TCP_SQL = """
SELECT {client} AS client, {server} AS server, count(*) AS connections,
       quantile_cont(connect_latency_ns, 0.50) / 1e6 AS connect_p50_ms,
       quantile_cont(connect_latency_ns, 0.99) / 1e6 AS connect_p99_ms,
       quantile_cont(srtt_us, 0.50) / 1e3 AS srtt_p50_ms,
       quantile_cont(srtt_us, 0.99) / 1e3 AS srtt_p99_ms,
       sum(retransmits)::UBIGINT AS retransmits
FROM enriched_connections WHERE {where}
GROUP BY ALL ORDER BY connections DESC, client, server
"""


def http_latency(tape: Tape, by: str = "workload", per_route: bool = False, filters: Filters | None = None) -> pl.DataFrame:
    """HTTP latency (time to first response byte) per edge, or per edge, method and route."""
    check_by(by)
    f = filters or Filters()
    create_views(tape.con)
    route_cols = ", method, routes.route" if per_route else ""
    sql = HTTP_SQL.format(client=name_sql("client", by), server=server_name_sql(by), route_cols=route_cols, route_order=", method, route" if per_route else "", route=ROUTE.format(path="path"),
        route_join="JOIN routes USING (path)" if per_route else "", where=f.where("ts", "client_namespace", "server_namespace"))
    return tape.sql(sql).pl()


def dns_latency(tape: Tape, filters: Filters | None = None) -> pl.DataFrame:
    """DNS lookup latency per name asked and server."""
    f = filters or Filters()
    create_views(tape.con)
    return tape.sql(DNS_SQL.format(where=f.where("ts_query", "client_namespace"))).pl()


def tcp_latency(tape: Tape, by: str = "workload", filters: Filters | None = None) -> pl.DataFrame:
    """TCP connect time (client side) and smoothed RTT per edge."""
    check_by(by)
    f = filters or Filters()
    create_views(tape.con)
    sql = TCP_SQL.format(client=name_sql("client", by), server=server_name_sql(by), where=f.where("ts", "client_namespace", "server_namespace"))
    return tape.sql(sql).pl()
