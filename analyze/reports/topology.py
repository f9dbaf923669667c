"""Topology: who talked to whom — connections, bytes each way, requests, errors, latency.

Edges are between endpoints named at a granularity (`by`): pod, workload, service, namespace,
node or zone, as the cluster named them at the time of each exchange (see analyze.enrich).
Each exchange and connection is counted once, even when both of its ends were recorded.
Latency percentiles (time to first response byte) come from a log-bucketed histogram and are
within 1 % of the exact value (analyze.sketch).
"""

from __future__ import annotations

import polars as pl

from ..analysis import Analysis
from ..enrich import name_sql, server_name_sql
from ..sketch import percentile_sql, ranks_sql
from .filters import Filters, check_by

SQL = """
WITH
http_n AS (SELECT {client} AS client, {server} AS server, lb, n, n_5xx, n_unanswered FROM {http} WHERE {ns}),
conn_n AS (SELECT {client} AS client, {server} AS server, close_state, bytes_c2s, bytes_s2c FROM {conns} WHERE {where}),
-- bound cardinality: the `top` busiest endpoints keep their names, the rest become 'other'
weights AS (
    SELECT e, sum(w) AS w FROM (
        SELECT client AS e, n AS w FROM http_n UNION ALL SELECT server, n FROM http_n
        UNION ALL SELECT client, 1 FROM conn_n UNION ALL SELECT server, 1 FROM conn_n
    ) GROUP BY e
),
kept AS (SELECT e FROM weights ORDER BY w DESC, e LIMIT {top}),
http_k AS (
    SELECT CASE WHEN client IN (SELECT e FROM kept) THEN client ELSE 'other' END AS client,
           CASE WHEN server IN (SELECT e FROM kept) THEN server ELSE 'other' END AS server,
           lb, n, n_5xx, n_unanswered
    FROM http_n
),
-- percentiles from the latency histogram of the merged rows (analyze.sketch: within 1 %)
http_e AS (
    SELECT client, server, sum(n) AS requests, sum(n_5xx) AS errors_5xx, sum(n_unanswered) AS unanswered,
           {p50} AS p50_ms, {p95} AS p95_ms, {p99} AS p99_ms
    -- one histogram row per edge and bucket before the window: a tenth of the rows to sort
    FROM (SELECT *, {ranks} FROM (SELECT client, server, lb, sum(n) AS n, sum(n_5xx) AS n_5xx, sum(n_unanswered) AS n_unanswered
                                  FROM http_k GROUP BY ALL))
    GROUP BY client, server
),
conn_e AS (
    SELECT CASE WHEN client IN (SELECT e FROM kept) THEN client ELSE 'other' END AS client,
           CASE WHEN server IN (SELECT e FROM kept) THEN server ELSE 'other' END AS server,
           count(*) AS connections,
           count(*) FILTER (WHERE close_state IN ('refused', 'timeout', 'failed')) AS failed_connections,
           sum(bytes_c2s) AS bytes_c2s, sum(bytes_s2c) AS bytes_s2c
    FROM conn_n GROUP BY ALL
)
SELECT coalesce(c.client, h.client) AS client, coalesce(c.server, h.server) AS server,
       coalesce(c.connections, 0) AS connections, coalesce(c.failed_connections, 0) AS failed_connections,
       coalesce(c.bytes_c2s, 0)::UBIGINT AS bytes_c2s, coalesce(c.bytes_s2c, 0)::UBIGINT AS bytes_s2c,
       coalesce(h.requests, 0)::BIGINT AS requests, coalesce(h.errors_5xx, 0)::BIGINT AS errors_5xx,
       CASE WHEN h.requests > 0 THEN h.errors_5xx / h.requests END AS error_rate,
       h.p50_ms, h.p95_ms, h.p99_ms
FROM conn_e c FULL OUTER JOIN http_e h ON c.client = h.client AND c.server = h.server
ORDER BY requests DESC, bytes_c2s + bytes_s2c DESC, client, server
"""


def topology(a: Analysis, by: str = "workload", filters: Filters | None = None, top: int | None = None) -> pl.DataFrame:
    """Edges between endpoints named at granularity `by`, one row per (client, server).

    With `top`, only the `top` busiest endpoints keep their names; the others are merged
    into `other` (percentiles are computed over the merged rows' histogram, not averaged).
    """
    check_by(by)
    f = filters or Filters()
    http = a.http_sums(f.time_sql("ts"))
    sql = SQL.format(client=name_sql("client", by), server=server_name_sql(by), where=f.where("ts", "client_namespace", "server_namespace"), top=int(top) if top else "NULL",
                     http=http, conns=a.materialised("enriched_connections"), ns=f.namespace_sql("client_namespace", "server_namespace"), ranks=ranks_sql("client, server"),
                     p50=percentile_sql(0.50), p95=percentile_sql(0.95), p99=percentile_sql(0.99))
    return a.sql(sql).pl()
