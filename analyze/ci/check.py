"""`flowtape check`: evaluate written rules (analyze.ci.rules) on one tape.

One result row per rule: the measured value, the limit and a status:
- `ok`        the rule holds;
- `violated`  it does not (exit 5);
- `no_data`   nothing matched the rule's selectors (exit 5 unless the rule says missing = "pass":
              a typo in a name must not pass silently);
- `skipped`   fewer matching requests than the rule's min_requests: not judged.

HTTP metrics are computed over every exchange matching the selectors, as one number (p99 of
all of them, not per edge). Bytes are flow bytes (IP total length) per minute of the tape's
window; cross-zone means both ends' zones are known and differ. External endpoints are named
by the tape's DNS answers (an IP used while its lookup failed keeps the name it had).
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

import polars as pl

from .diff import IPNAMES, canon_name, ip_names, use_ip_names, window_s
from ..enrich import name_sql, server_name_sql
from .rules import Rule

if TYPE_CHECKING:
    from ..analysis import Analysis

FAILING = ("violated", "no_data")
"""Statuses that fail `flowtape check` (exit 5)."""

RESULT_SCHEMA = {"rule": pl.Utf8, "check": pl.Utf8, "subject": pl.Utf8, "value": pl.Float64, "limit": pl.Float64, "status": pl.Utf8, "detail": pl.Utf8}

HTTP_SQL = """
SELECT count(*) AS n, count(*) FILTER (WHERE server_error) AS errors,
       quantile_cont(latency_ns, 0.50) / 1e6 AS p50_ms, quantile_cont(latency_ns, 0.95) / 1e6 AS p95_ms,
       quantile_cont(latency_ns, 0.99) / 1e6 AS p99_ms, count(DISTINCT client || ' -> ' || server) AS edges
FROM (
    SELECT {client} AS client, {server} AS server, e.client_namespace, e.server_namespace, e.status, e.server_error, e.latency_ns
    FROM enriched_http e LEFT JOIN {ipnames} mc ON mc.ip = e.client_ip LEFT JOIN {ipnames} ms ON ms.ip = e.server_ip
) WHERE {where}
"""

CALLS_SQL = """
SELECT client, server, sum(requests) AS requests, sum(connections) AS connections FROM (
    SELECT {client} AS client, {server} AS server, e.client_namespace, e.server_namespace, 1 AS requests, 0 AS connections
    FROM enriched_http e LEFT JOIN {ipnames} mc ON mc.ip = e.client_ip LEFT JOIN {ipnames} ms ON ms.ip = e.server_ip
    UNION ALL
    SELECT {client} AS client, {server} AS server, e.client_namespace, e.server_namespace, 0, 1
    FROM enriched_connections e LEFT JOIN {ipnames} mc ON mc.ip = e.client_ip LEFT JOIN {ipnames} ms ON ms.ip = e.server_ip
) WHERE {where}
GROUP BY client, server ORDER BY sum(requests) + sum(connections) DESC, client, server
"""

FLOWS_SQL = """
SELECT coalesce(sum(bytes), 0)::DOUBLE AS bytes FROM (
    SELECT {src} AS src, {dst} AS dst, src_zone, dst_zone, bytes FROM enriched_flows
) WHERE {where}
"""

EGRESS_SQL = """
SELECT destination, sum(bytes)::DOUBLE AS bytes, string_agg(DISTINCT client, ', ' ORDER BY client) AS sources FROM (
    SELECT CASE WHEN e.dst_dns IS NOT NULL THEN e.dst_dns WHEN md.name IS NOT NULL THEN md.name ELSE e.dst_real END AS destination,
           {src} AS client, e.src_namespace AS client_namespace, e.bytes
    FROM enriched_flows e LEFT JOIN {ipnames} md ON md.ip = e.dst_real
    WHERE e.dst_kind = 'external' AND e.src_kind IN ('pod', 'node', 'host')
) WHERE {where}
GROUP BY destination ORDER BY bytes DESC, destination
"""


def _where(sel: dict[str, str], cols: dict[str, str]) -> tuple[str, list[str]]:
    """Selectors as SQL: globs for names, equality for namespaces and zones; values as parameters."""
    parts, params = ["true"], []
    for k, v in sel.items():
        if k not in cols:
            continue
        if k.endswith("_namespace") or k.endswith("_zone"):
            parts.append(f"{cols[k]} = ?")
        else:
            parts.append(f"{cols[k]} GLOB ?")
        params.append(v)
    return " AND ".join(parts), params


EDGE_COLS = {"client": "client", "server": "server", "client_namespace": "client_namespace", "server_namespace": "server_namespace"}
FLOW_COLS = {"src": "src", "dst": "dst", "src_zone": "src_zone", "dst_zone": "dst_zone"}


def check(tape, rules: list[Rule]) -> pl.DataFrame:
    """Evaluate `rules` on `tape`; one row per rule (see the module docstring for statuses)."""
    use_ip_names(tape, ip_names(tape))
    secs = window_s(tape)
    rows = [_one(tape.analysis, r, secs) for r in rules]
    return pl.DataFrame(rows, schema=RESULT_SCHEMA)


def _names(by: str) -> tuple[str, str]:
    return canon_name("client", name_sql("client", by), "mc"), canon_name("server", server_name_sql(by), "ms")


def _one(an: "Analysis", r: Rule, secs: float) -> dict:
    subject = r.describe()
    out = {"rule": r.name, "subject": subject}
    if r.kind == "metric" and r.metric in ("bytes_per_min", "cross_zone_bytes_per_min"):
        where, params = _where(r.selectors, FLOW_COLS)
        if r.metric == "cross_zone_bytes_per_min":
            where += " AND src_zone IS NOT NULL AND dst_zone IS NOT NULL AND src_zone <> dst_zone"
        sql = FLOWS_SQL.format(src=name_sql("src", r.by, "src_real"), dst=name_sql("dst", r.by, "dst_real"), where=where)
        v = an.sql(sql, params).fetchall()[0][0] / (secs / 60)
        ok = v < r.below
        return out | {"check": r.metric, "value": v, "limit": r.below, "status": "ok" if ok else "violated",
                      "detail": f"flow bytes per minute over {secs:g} s"}
    if r.kind == "metric":
        client, server = _names(r.by)
        where, params = _where(r.selectors, EDGE_COLS)
        n, errors, p50, p95, p99, edges = an.sql(HTTP_SQL.format(client=client, server=server, ipnames=IPNAMES, where=where), params).fetchall()[0]
        base = out | {"check": r.metric, "limit": r.below}
        if n == 0:
            st = "no_data" if r.missing == "fail" else "ok"
            return base | {"value": None, "status": st, "detail": "no HTTP exchange matches the selectors"}
        v = {"p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "error_rate": errors / n, "requests_per_s": n / secs}[r.metric]
        detail = f"{n} requests on {edges} edge{'s' if edges != 1 else ''}" + (f", {errors} server errors (responses >= 500, failed gRPC calls)" if r.metric == "error_rate" else "")
        if n < r.min_requests:
            return base | {"value": v, "status": "skipped", "detail": f"too few requests to judge ({n} < min_requests {r.min_requests})"}
        if v is None:
            return base | {"value": None, "status": "no_data", "detail": detail + "; no latency measured"}
        return base | {"value": v, "status": "ok" if v < r.below else "violated", "detail": detail}
    if r.kind == "no_calls":
        client, server = _names(r.by)
        where, params = _where(r.selectors, EDGE_COLS)
        df = an.sql(CALLS_SQL.format(client=client, server=server, ipnames=IPNAMES, where=where), params).pl()
        calls = int(df["requests"].sum() + df["connections"].sum()) if len(df) else 0
        detail = "none" if not calls else "; ".join(f"{a} -> {b}: {q} requests, {c} connections" for a, b, q, c in df.head(3).iter_rows())
        if len(df) > 3:
            detail += f"; and {len(df) - 3} more edges"
        return out | {"check": "no_calls", "value": float(calls), "limit": 0.0, "status": "ok" if calls == 0 else "violated", "detail": detail}
    # egress_only
    where, params = _where(r.selectors, EDGE_COLS)
    df = an.sql(EGRESS_SQL.format(src=name_sql("src", r.by, "src_real"), ipnames=IPNAMES, where=where), params).pl()
    bad = df.filter(~pl.col("destination").map_elements(lambda d: any(fnmatch.fnmatchcase(d.lower(), a.lower()) for a in r.allow), return_dtype=pl.Boolean))
    allow = ", ".join(r.allow)
    if bad.is_empty():
        return out | {"check": "egress_only", "value": 0.0, "limit": 0.0, "status": "ok",
                      "detail": f"{len(df)} destination{'s' if len(df) != 1 else ''}, all allowed ({allow})"}
    shown = "; ".join(f"{d} from {s}" for d, _, s in bad.head(5).iter_rows())
    return out | {"check": "egress_only", "value": float(len(bad)), "limit": 0.0, "status": "violated",
                  "detail": f"not allowed: {shown}" + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")}
