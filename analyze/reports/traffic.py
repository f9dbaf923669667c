"""Traffic: top talkers, bytes per zone pair and region pair with a cost estimate, internet egress.

Pair kinds: same_zone, cross_zone, cross_region, internet_egress (cluster -> internet),
internet_ingress (free at the usual providers), unknown (an end whose zone the tape does not
know: a ClusterIP of UDP traffic, an unowned address).

Bytes are flow bytes (IP total length, headers included) from `sums.flow_sums`: each packet
counted once, ClusterIPs replaced by the pod behind them where the tape knows it (so the zone of
the real destination is used). Cost = GB (10^9 bytes) x the price of the pair's kind
(analyze.reports.prices); `cost_usd_month` scales the tape window to 30 days.
"""

from __future__ import annotations

import polars as pl

from ..analysis import Analysis
from ..enrich import name_sql
from .prices import Prices
from .filters import Filters, check_by

TALKERS_SQL = """
WITH d AS MATERIALIZED (
    SELECT {src} AS src, {dst} AS dst, packets, bytes FROM {flows} WHERE {where}
)
SELECT endpoint, sum(bytes_out)::UBIGINT AS bytes_out, sum(bytes_in)::UBIGINT AS bytes_in,
       sum(packets_out)::UBIGINT AS packets_out, sum(packets_in)::UBIGINT AS packets_in,
       (sum(bytes_out) + sum(bytes_in))::UBIGINT AS bytes_total
FROM (
    SELECT src AS endpoint, bytes AS bytes_out, 0 AS bytes_in, packets AS packets_out, 0 AS packets_in FROM d
    UNION ALL
    SELECT dst, 0, bytes, 0, packets FROM d
)
GROUP BY endpoint ORDER BY bytes_total DESC, endpoint LIMIT {top}
"""

PAIRS_SQL = """
SELECT {a} AS src_{level}, {b} AS dst_{level}, kind, sum(bytes)::UBIGINT AS bytes, sum(packets)::UBIGINT AS packets,
       sum(bytes * price) / 1e9 AS cost_usd,
       sum(bytes * price) / 1e9 * {month_factor} AS cost_usd_month
FROM (
    SELECT *, CASE kind WHEN 'cross_region' THEN {p.cross_region} WHEN 'cross_zone' THEN {p.cross_zone}
                        WHEN 'internet_egress' THEN {p.internet_egress} ELSE {p.same_zone} END AS price
    FROM (
        SELECT src_zone, dst_zone, src_region, dst_region, bytes, packets,
               CASE WHEN src_kind IN ('pod', 'node', 'host') AND dst_kind = 'external' THEN 'internet_egress'
                    WHEN src_kind = 'external' AND dst_kind IN ('pod', 'node', 'host') THEN 'internet_ingress'
                    WHEN src_region IS NOT NULL AND dst_region IS NOT NULL AND src_region <> dst_region THEN 'cross_region'
                    WHEN src_zone IS NOT NULL AND dst_zone IS NOT NULL AND src_zone <> dst_zone THEN 'cross_zone'
                    WHEN src_zone IS NOT NULL AND src_zone = dst_zone THEN 'same_zone'
                    ELSE 'unknown' END AS kind
        FROM {flows} WHERE {where}
    )
)
GROUP BY ALL ORDER BY bytes DESC, 1, 2
"""

EGRESS_SQL = """
WITH seen AS (
    SELECT coalesce(dst_dns, dst_real) AS destination, dst_dns IS NOT NULL AS named, min(ts_start) AS first_seen, max(ts_end) AS last_seen
    FROM {seen}
    WHERE dst_kind = 'external' AND src_kind IN ('pod', 'node', 'host') AND {where}
    GROUP BY ALL
),
out AS (
    SELECT coalesce(dst_dns, dst_real) AS destination, dst_dns IS NOT NULL AS named,
           sum(bytes)::UBIGINT AS bytes_out, count(DISTINCT src_real) AS sources,
           list(DISTINCT {src} ORDER BY {src})[1:5] AS top_sources,
           sum(bytes) / 1e9 * {price} AS cost_usd
    FROM {flows}
    WHERE dst_kind = 'external' AND src_kind IN ('pod', 'node', 'host') AND {where}
    GROUP BY ALL
)
SELECT o.destination, o.named, o.bytes_out, o.sources, o.top_sources, s.first_seen, s.last_seen, o.cost_usd
FROM out o JOIN seen s ON s.destination = o.destination AND s.named = o.named
ORDER BY bytes_out DESC, destination
"""


def _month_factor(a: Analysis) -> float:
    start, end = a.window
    if start is None or end is None or end <= start:
        return float("nan")
    return 30 * 86400e9 / (end - start)


def talkers(a: Analysis, by: str = "workload", top: int = 20, filters: Filters | None = None) -> pl.DataFrame:
    """Top `top` endpoints by bytes sent plus received."""
    check_by(by)
    f = filters or Filters()
    flows = a.flow_sums(f.time_sql("ts_start"))
    sql = TALKERS_SQL.format(src=name_sql("src", by, "src_real"), dst=name_sql("dst", by, "dst_real"), top=int(top), flows=flows, where=f.namespace_sql("src_namespace", "dst_namespace"))
    return a.sql(sql).pl()


def zone_pairs(a: Analysis, level: str = "zone", prices: Prices | None = None, filters: Filters | None = None) -> pl.DataFrame:
    """Bytes per (src, dst) zone or region pair, the pair's kind and its cost."""
    if level not in ("zone", "region"):
        from ...errors import UsageError

        raise UsageError(f"level must be zone or region, not {level!r}")
    f = filters or Filters()
    flows = a.flow_sums(f.time_sql("ts_start"))
    src = f"CASE WHEN kind = 'internet_ingress' THEN 'internet' ELSE coalesce(src_{level}, '?') END"
    dst = f"CASE WHEN kind = 'internet_egress' THEN 'internet' ELSE coalesce(dst_{level}, '?') END"
    sql = PAIRS_SQL.format(a=src, b=dst, level=level, p=prices or Prices(), month_factor=_month_factor(a), flows=flows, where=f.namespace_sql("src_namespace", "dst_namespace"))
    return a.sql(sql).pl()


def egress(a: Analysis, by: str = "workload", prices: Prices | None = None, filters: Filters | None = None) -> pl.DataFrame:
    """Internet egress by destination: the DNS name the cluster asked for, else the IP."""
    check_by(by)
    f = filters or Filters()
    flows, seen = a.flow_sums(f.time_sql("ts_start")), a.flow_seen(f.time_sql("ts_start"))
    sql = EGRESS_SQL.format(src=name_sql("src", by, "src_real"), price=(prices or Prices()).internet_egress, flows=flows, seen=seen,
                            where=f.namespace_sql("src_namespace", "dst_namespace"))
    return a.sql(sql).pl()
