"""Topology: who talked to whom — connections, bytes each way, requests, errors, latency.

Edges are between endpoints named at a granularity (`by`): pod, workload, service, namespace,
node or zone, as the cluster named them at the time of each exchange (see analyze.enrich).
Each exchange and connection is counted once, even when both of its ends were recorded.
"""

from __future__ import annotations

import polars as pl

from ...reader import Tape
from ..enrich import GRANULARITIES, create_views, name_sql, resolve_sql
from .filters import Filters

SQL = """
WITH
http_n AS (
    SELECT {http_client_name} AS client, {http_server_name} AS server, x.status, x.latency_ns,
           x.client_namespace_, x.server_namespace_
    FROM (
        SELECT h.*, {hc_cols}, {hs_cols},
               hc_namespace AS client_namespace_, hs_namespace AS server_namespace_
        FROM ft_http_x h {hc_joins} {hs_joins}
        WHERE {time_filter_h}
    ) x
),
conn_n AS (
    SELECT {conn_client_name} AS client, {conn_server_name} AS server, x.bytes_c2s, x.bytes_s2c, x.close_state,
           x.client_namespace_, x.server_namespace_
    FROM (
        SELECT c.*, {cc_cols}, {cs_cols},
               cc_namespace AS client_namespace_, cs_namespace AS server_namespace_
        FROM ft_conn_x c {cc_joins} {cs_joins}
        WHERE {time_filter_c}
    ) x
),
http_e AS (
    SELECT client, server, count(*) AS requests,
           count(*) FILTER (WHERE status >= 500) AS errors_5xx,
           count(*) FILTER (WHERE status IS NULL) AS unanswered,
           quantile_cont(latency_ns, 0.50) / 1e6 AS p50_ms,
           quantile_cont(latency_ns, 0.95) / 1e6 AS p95_ms,
           quantile_cont(latency_ns, 0.99) / 1e6 AS p99_ms
    FROM http_n WHERE {ns_filter} GROUP BY ALL
),
conn_e AS (
    SELECT client, server, count(*) AS connections,
           count(*) FILTER (WHERE close_state IN ('refused', 'timeout', 'failed')) AS failed_connections,
           sum(bytes_c2s) AS bytes_c2s, sum(bytes_s2c) AS bytes_s2c
    FROM conn_n WHERE {ns_filter} GROUP BY ALL
)
SELECT coalesce(c.client, h.client) AS client, coalesce(c.server, h.server) AS server,
       coalesce(c.connections, 0) AS connections, coalesce(c.failed_connections, 0) AS failed_connections,
       coalesce(c.bytes_c2s, 0)::UBIGINT AS bytes_c2s, coalesce(c.bytes_s2c, 0)::UBIGINT AS bytes_s2c,
       coalesce(h.requests, 0) AS requests, coalesce(h.errors_5xx, 0) AS errors_5xx,
       CASE WHEN h.requests > 0 THEN h.errors_5xx / h.requests END AS error_rate,
       h.p50_ms, h.p95_ms, h.p99_ms
FROM conn_e c FULL OUTER JOIN http_e h ON c.client = h.client AND c.server = h.server
ORDER BY requests DESC, bytes_c2s + bytes_s2c DESC, client, server
"""


def topology(tape: Tape, by: str = "workload", filters: Filters | None = None) -> pl.DataFrame:
    """Edges between endpoints named at granularity `by`, one row per (client, server)."""
    if by not in GRANULARITIES:
        from ...errors import UsageError

        raise UsageError(f"--by must be one of {', '.join(GRANULARITIES)}, not {by!r}")
    f = filters or Filters()
    create_views(tape.con)
    hc_joins, hc_cols = resolve_sql("h", "client_ip", "ts", "hc")
    hs_joins, hs_cols = resolve_sql("h", "seen_server_ip" if by == "service" else "server_ip", "ts", "hs")
    cc_joins, cc_cols = resolve_sql("c", "client_ip", "ts", "cc")
    cs_joins, cs_cols = resolve_sql("c", "seen_server_ip" if by == "service" else "server_ip", "ts", "cs")
    sql = SQL.format(
        http_client_name=name_sql("x.hc", "x.client_ip", by),
        http_server_name=name_sql("x.hs", "x.server_ip", by),
        conn_client_name=name_sql("x.cc", "x.client_ip", by),
        conn_server_name=name_sql("x.cs", "x.server_ip", by),
        hc_cols=hc_cols, hs_cols=hs_cols, cc_cols=cc_cols, cs_cols=cs_cols,
        hc_joins=hc_joins, hs_joins=hs_joins, cc_joins=cc_joins, cs_joins=cs_joins,
        time_filter_h=f.time_sql("h.ts"), time_filter_c=f.time_sql("c.ts"),
        ns_filter=f.namespace_sql("client_namespace_", "server_namespace_"),
    )
    return tape.sql(sql).pl()
