"""DNS: failures by name and rcode (NXDOMAIN storms, search-path noise) and slow lookups.

Search-path noise: a client resolving `golang.org` from a pod first asks
`golang.org.<ns>.svc.cluster.local`, `golang.org.svc.cluster.local`, ... (ndots), which fail
with NXDOMAIN by design. An NXDOMAIN is marked `search_path` when its name is a search-path
expansion (`<base>.<ns>.svc.cluster.local`, `<base>.svc.cluster.local`, `<base>.cluster.local`,
`<base>.<...>.internal`) and the same client resolved the base name, or another expansion of
it, successfully within 10 s: the search went on and succeeded, so those failures are noise.
A name that never resolves (a missing service), and any SERVFAIL or unanswered query, is a
real failure.
"""

from __future__ import annotations

import polars as pl

from ..analysis import Analysis
from ..enrich import name_sql
from .filters import Filters, check_by

FAILURES_SQL = """
WITH failed AS (
    SELECT q.*, {client} AS client,
           q.rcode_name = 'NXDOMAIN' AND q.base IS NOT NULL AND EXISTS (
               SELECT 1 FROM {dns_x} b
               WHERE b.client_ip = q.client_ip AND b.rcode = 0 AND b.qname <> q.qname
                 AND (b.qname = q.base OR starts_with(b.qname, q.base || '.'))
                 AND b.ts_query >= q.ts_query - INTERVAL 10 SECOND AND b.ts_query <= q.ts_query + INTERVAL 10 SECOND) AS search_path
    FROM (SELECT *, nullif(regexp_extract(qname, '^(.+?)\\.((?:[a-z0-9-]+\\.)?svc\\.cluster\\.local|cluster\\.local|[a-z0-9.-]+\\.internal)$', 1), '') AS base
          FROM {dns}) q
    WHERE (q.rcode IS NULL OR q.rcode <> 0) AND {where}
)
SELECT qname, coalesce(rcode_name, 'NO ANSWER') AS rcode_name, search_path, count(*) AS failures,
       count(DISTINCT client) AS clients, list(DISTINCT client ORDER BY client)[1:5] AS top_clients,
       min(ts_query) AS first_seen, max(ts_query) AS last_seen
FROM failed
GROUP BY ALL ORDER BY search_path, failures DESC, qname
"""

SLOW_SQL = """
SELECT qname, server_ip, count(*) AS slow_lookups,
       quantile_cont(latency_ns, 0.50) / 1e6 AS p50_ms, max(latency_ns) / 1e6 AS max_ms,
       min(ts_query) AS first_seen, max(ts_query) AS last_seen
FROM {dns}
WHERE latency_ns >= {threshold_ns} AND {where}
GROUP BY ALL ORDER BY slow_lookups DESC, qname, server_ip
"""


def dns_failures(a: Analysis, by: str = "workload", filters: Filters | None = None, search_path: bool = True) -> pl.DataFrame:
    """Failed lookups (rcode other than NOERROR, or unanswered) per name and rcode; without
    `search_path`, the expected NXDOMAINs of search-path expansion are left out."""
    check_by(by)
    f = filters or Filters()
    df = a.sql(FAILURES_SQL.format(client=name_sql("client", by), where=f.where("q.ts_query", "q.client_namespace"),
                                      dns=a.materialised("enriched_dns"), dns_x=a.materialised("ft_dns_x"))).pl()
    return df if search_path else df.filter(~pl.col("search_path"))


def slow_lookups(a: Analysis, threshold_ms: float = 100.0, filters: Filters | None = None) -> pl.DataFrame:
    """Lookups slower than `threshold_ms`, per name and server."""
    f = filters or Filters()
    return a.sql(SLOW_SQL.format(threshold_ns=int(threshold_ms * 1e6), where=f.where("ts_query", "client_namespace"),
                                    dns=a.materialised("enriched_dns"))).pl()
