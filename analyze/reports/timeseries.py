"""Latency over time: HTTP percentiles per edge and time bucket, for the busiest edges.

Buckets are 1 s for tapes under a minute, 10 s up to 30 minutes and 1 minute otherwise (or `bucket_s`),
aligned to the clock (a 10 s bucket starts at :00, :10, ...); a bucket's `ts` is its start.
Edges are named as topology names them (granularity `by`); `top` keeps the edges with the most
requests over the whole filtered window, `edges` picks (client, server) pairs instead.
The edges are chosen from analyze.sums' exact per-edge counts; then only the HTTP exchanges
between IPs that were one of those edges at some time are named, each at its own time, and
their percentiles are exact.
"""

from __future__ import annotations

import polars as pl

from ...errors import UsageError
from ..analysis import Analysis
from ..enrich import has_processes, has_substitutions, name_sql, named_exchanges_sql, server_name_sql
from .filters import Filters, check_by

SQL = """
WITH
-- the chosen edges, and every (client, server, addressed server) IP triple that was one of them at
-- some time: only those rows are named one by one (still each at its own time)
named_sums AS (SELECT {client} AS client, {server} AS server, client_ip, server_ip, seen_server_ip, n FROM {http} WHERE lb IS NOT NULL AND {ns}),
chosen AS ({chosen}),
triples AS (SELECT DISTINCT s.client_ip, s.server_ip, s.seen_server_ip FROM named_sums s JOIN chosen c ON s.client = c.client AND s.server = c.server),
rows AS ({rows}),
h AS (
    SELECT time_bucket(INTERVAL '{bucket_s} seconds', ts) AS ts, {client} AS client, {server} AS server, status, server_error, latency_ns
    FROM rows WHERE latency_ns IS NOT NULL AND {where}
)
SELECT h.ts, h.client, h.server, count(*) AS requests,
       count(*) FILTER (WHERE server_error) AS errors_5xx,
       quantile_cont(latency_ns, 0.50) / 1e6 AS p50_ms,
       quantile_cont(latency_ns, 0.95) / 1e6 AS p95_ms,
       quantile_cont(latency_ns, 0.99) / 1e6 AS p99_ms
FROM h JOIN chosen c ON h.client = c.client AND h.server = c.server
GROUP BY h.ts, h.client, h.server, c.rank ORDER BY c.rank, h.ts
"""

# the busiest edges over the whole filtered window, from the exact per-edge counts of analyze.sums
TOP = ("SELECT client, server, row_number() OVER (ORDER BY sum(n) DESC, client, server) AS rank FROM named_sums "
       "GROUP BY client, server ORDER BY rank LIMIT {top}")

# HTTP exchanges (enrich.ft_http_x) of the chosen edges' IP triples
CHOSEN_ROWS = ("SELECT x.* FROM ft_http_x x SEMI JOIN triples t ON x.client_ip = t.client_ip AND x.server_ip = t.server_ip "
               "AND x.seen_server_ip = t.seen_server_ip")


def default_bucket_s(a: Analysis) -> int:
    """1 s for a tape under a minute (a 10 s bucket would leave a short capture one or two
    points), 10 s up to 30 minutes, else 60 s."""
    start, end = a.window
    if start is None or end is None:
        return 60
    if end - start < 60 * 10**9:
        return 1
    return 10 if end - start <= 30 * 60 * 10**9 else 60


def latency_over_time(a: Analysis, by: str = "workload", bucket_s: int | None = None, top: int = 5, edges: list[tuple[str, str]] | None = None,
                      filters: Filters | None = None) -> pl.DataFrame:
    """Columns ts (bucket start), client, server, requests, errors_5xx, p50_ms, p95_ms, p99_ms."""
    check_by(by)
    bucket = int(bucket_s) if bucket_s is not None else default_bucket_s(a)
    if bucket <= 0:
        raise UsageError(f"bucket must be a positive number of seconds, not {bucket_s!r}")
    f = filters or Filters()
    if edges:
        values = ", ".join(f"({_lit(c)}, {_lit(s)}, {i})" for i, (c, s) in enumerate(edges))
        chosen = f"SELECT * FROM (VALUES {values}) AS v(client, server, rank)"
    else:
        if top <= 0:
            raise UsageError(f"top must be positive, not {top}")
        chosen = TOP.format(top=int(top))
    rows = named_exchanges_sql(f"({CHOSEN_ROWS})", has_substitutions(a.con), has_processes(a.con))
    sql = SQL.format(bucket_s=bucket, client=name_sql("client", by), server=server_name_sql(by), where=f.where("ts", "client_namespace", "server_namespace"),
                     chosen=chosen, http=a.http_sums(f.time_sql("ts")), ns=f.namespace_sql("client_namespace", "server_namespace"), rows=rows)
    return a.sql(sql).pl()


def _lit(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"
