"""Latency: HTTP per edge and per route, DNS lookups per name and server, TCP connect and srtt.

Routes template ID-like path segments (numbers, UUIDs, long hex) as `{id}` and drop the query
string, so `/orders/1001` and `/orders/1002` are one route `/orders/{id}`.

HTTP percentiles come from a log-bucketed latency histogram and are within 1 % of the exact
value (analyze.sketch); max_ms is exact. DNS and TCP percentiles are exact.
"""

from __future__ import annotations

import polars as pl

from ..analysis import Analysis
from ..enrich import name_sql, server_name_sql
from ..sketch import percentile_sql, ranks_sql
from .filters import Filters, check_by

HTTP_SQL = """
SELECT client, server{route_cols}, sum(n)::BIGINT AS requests, sum(n_5xx)::BIGINT AS errors_5xx,
       {p50} AS p50_ms, {p95} AS p95_ms, {p99} AS p99_ms, max(max_latency_ns) / 1e6 AS max_ms
FROM (
    SELECT *, {ranks} FROM (
        -- one histogram row per edge (and route) and bucket before the window
        SELECT {client} AS client, {server} AS server{route_cols}, lb, sum(n) AS n, sum(n_5xx) AS n_5xx, max(max_latency_ns) AS max_latency_ns
        FROM {http} WHERE lb IS NOT NULL AND {ns}{route_where}
        GROUP BY ALL
    )
)
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
FROM {dns} WHERE {where}
GROUP BY ALL ORDER BY lookups DESC, qname, server_ip
"""

TCP_SQL = """
SELECT {client} AS client, {server} AS server, count(*) AS connections,
       quantile_cont(connect_latency_ns, 0.50) / 1e6 AS connect_p50_ms,
       quantile_cont(connect_latency_ns, 0.99) / 1e6 AS connect_p99_ms,
       quantile_cont(srtt_us, 0.50) / 1e3 AS srtt_p50_ms,
       quantile_cont(srtt_us, 0.99) / 1e3 AS srtt_p99_ms,
       sum(retransmits)::UBIGINT AS retransmits
FROM {conns} WHERE {where}
GROUP BY ALL ORDER BY connections DESC, client, server
"""


def http_latency(a: Analysis, by: str = "workload", per_route: bool = False, filters: Filters | None = None) -> pl.DataFrame:
    """HTTP latency (time to first response byte) per edge, or per edge, method and route."""
    check_by(by)
    f = filters or Filters()
    keys = "client, server, method, route" if per_route else "client, server"
    sql = HTTP_SQL.format(client=name_sql("client", by), server=server_name_sql(by), route_cols=", method, route" if per_route else "",
                          route_order=", method, route" if per_route else "", route_where=" AND route IS NOT NULL" if per_route else "",
                          http=a.http_sums(f.time_sql("ts")), ns=f.namespace_sql("client_namespace", "server_namespace"),
                          ranks=ranks_sql(keys), p50=percentile_sql(0.50), p95=percentile_sql(0.95), p99=percentile_sql(0.99))
    return a.sql(sql).pl()


def dns_latency(a: Analysis, filters: Filters | None = None) -> pl.DataFrame:
    """DNS lookup latency per name asked and server."""
    f = filters or Filters()
    return a.sql(DNS_SQL.format(where=f.where("ts_query", "client_namespace"), dns=a.materialised("enriched_dns"))).pl()


def tcp_latency(a: Analysis, by: str = "workload", filters: Filters | None = None) -> pl.DataFrame:
    """TCP connect time (client side) and smoothed RTT per edge."""
    check_by(by)
    f = filters or Filters()
    sql = TCP_SQL.format(client=name_sql("client", by), server=server_name_sql(by), where=f.where("ts", "client_namespace", "server_namespace"),
                         conns=a.materialised("enriched_connections"))
    return a.sql(sql).pl()
