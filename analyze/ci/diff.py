"""`flowtape diff`: what changed between a base tape and a new tape, and which changes are regressions.

Compared, per edge (client -> server named at granularity `by`), with every count and byte
normalised by each tape's window length (tapes of different durations compare fairly):

- edges added (always a regression: a call path never seen before) and removed (a regression
  only when the base rate makes "zero calls in NEW" improbable: Poisson P(0) below the
  significance level; otherwise inconclusive);
- request rate (HTTP requests/s), up or down: conditional binomial test of the two counts
  given their sum and the two window lengths;
- error rate (share of server errors: responses with status >= 500 and failed gRPC calls, see
  analyze/enrich.py SERVER_ERROR_SQL), increase only: one-sided two-proportion
  z-test with pooled variance;
- p50 and p99 latency (time to first response byte), increase only: the rise must exceed a
  relative and an absolute threshold, and the distribution-free confidence intervals of the
  quantile (order-statistic ranks from the binomial normal approximation) must not overlap;
- bytes per minute (TCP payload both ways) and cross-zone bytes per minute (connections whose
  client and server are in different zones; the zone pairs are named), increase only.

Per tape: cross-zone flow bytes per minute per zone pair (the traffic report's pairs), new
external destinations (DNS names, or IPs never named), new DNS failures ((name, rcode) failing
for real in NEW that never failed so in BASE; search-path noise excluded).

A comparison with too few samples, or a change beyond threshold that fails its significance
test, is `inconclusive` (listed, said why, never a regression). External endpoints are named by
the DNS answers of both tapes: an IP contacted while its lookup failed is still its DNS name.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from ...errors import FlowtapeError, UsageError
from ..enrich import GRANULARITIES, keyed_sql, name_sql, server_name_sql
from ..reports.filters import check_by

if TYPE_CHECKING:
    from ...reader import Tape


@dataclass(frozen=True)
class Thresholds:
    """When a change is a regression. Every field is a key of `[thresholds]` in a config file."""

    z: float = 3.0
    """Significance: z score of every test (3.0 = one-sided p 0.00135)."""
    min_requests: int = 30
    """Fewer requests on either side: request rate, error rate and p50 are inconclusive."""
    min_requests_p99: int = 200
    """Fewer latency samples on either side: p99 is inconclusive."""
    latency_rel: float = 0.25
    """p50/p99 must rise by at least this fraction (0.25 = +25 %) ..."""
    latency_abs_ms: float = 5.0
    """... and by at least this many milliseconds."""
    error_rate_abs: float = 0.01
    """The error rate must rise by at least this much (0.01 = one percentage point)."""
    rate_rel: float = 0.5
    """Request rate up or down by at least this fraction."""
    bytes_rel: float = 1.0
    """Bytes per minute of an edge up by at least this fraction ..."""
    bytes_abs_per_min: float = 1_000_000.0
    """... and by at least this many bytes per minute."""
    cross_zone_rel: float = 0.5
    """Cross-zone bytes per minute (per edge and per zone pair) up by at least this fraction ..."""
    cross_zone_abs_per_min: float = 100_000.0
    """... and by at least this many bytes per minute."""
    edges_added: bool = True
    """An edge in NEW only is a regression."""
    edges_removed: bool = True
    """An edge in BASE only is a regression (when its base rate makes that significant)."""

    @property
    def p_value(self) -> float:
        return 0.5 * math.erfc(self.z / math.sqrt(2))

    def with_values(self, values: dict[str, Any], where: str) -> "Thresholds":
        """A copy with `values` set; a one-line error naming `where` for unknown keys or bad values."""
        known = {f.name: f for f in fields(self)}
        out: dict[str, Any] = {}
        for k, v in values.items():
            if k not in known:
                raise FlowtapeError(f"{where}: unknown threshold {k!r} (known: {', '.join(known)})")
            kind = type(getattr(self, k))
            if isinstance(v, str):
                try:
                    v = _parse_text(v, kind)
                except ValueError:
                    raise FlowtapeError(f"{where}: threshold {k!r}: {v!r} is not a {kind.__name__}") from None
            if kind is bool and not isinstance(v, bool) or kind is not bool and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise FlowtapeError(f"{where}: threshold {k!r}: {v!r} is not a {kind.__name__}")
            if kind is not bool and (v < 0 or (isinstance(v, float) and math.isnan(v))):
                raise FlowtapeError(f"{where}: threshold {k!r}: must be >= 0, not {v!r}")
            out[k] = kind(v)
        return replace(self, **out)


def _parse_text(v: str, kind: type) -> Any:
    if kind is bool:
        if v.lower() in ("true", "yes", "1"):
            return True
        if v.lower() in ("false", "no", "0"):
            return False
        raise ValueError(v)
    return kind(float(v)) if kind is int and float(v).is_integer() else kind(v)


def load_config(path: Path | None, overrides: list[str] = ()) -> tuple[Thresholds, str | None]:
    """Thresholds from a TOML file (`[thresholds]`, optional `by` under `[diff]`) and KEY=VALUE overrides."""
    t, by = Thresholds(), None
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FlowtapeError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise FlowtapeError(f"{path}: cannot read: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise FlowtapeError(f"{path}: not valid TOML: {e}") from None
        for k in data:
            if k not in ("thresholds", "diff"):
                raise FlowtapeError(f"{path}: unknown table [{k}] (known: [diff], [thresholds])")
        diff = data.get("diff", {})
        if not isinstance(diff, dict) or set(diff) - {"by"}:
            raise FlowtapeError(f"{path}: [diff] takes only 'by'")
        if "by" in diff:
            by = diff["by"]
            if by not in GRANULARITIES:
                raise FlowtapeError(f"{path}: [diff] by: {by!r} is not one of {', '.join(GRANULARITIES)}")
        th = data.get("thresholds", {})
        if not isinstance(th, dict):
            raise FlowtapeError(f"{path}: 'thresholds' must be a table")
        t = t.with_values(th, str(path))
    for o in overrides:
        if "=" not in o:
            raise UsageError(f"--threshold {o!r}: use KEY=VALUE, such as latency_rel=0.5")
        k, v = o.split("=", 1)
        try:
            t = t.with_values({k.strip(): v.strip()}, "--threshold")
        except FlowtapeError as e:
            raise UsageError(e.message) from None
    return t, by


# --- per-tape measurements ---------------------------------------------------------------------

IPNAMES = "ft_diff_ipnames"


def canon_name(prefix: str, expr: str, alias: str) -> str:
    """An external endpoint without a DNS name at that moment takes the name its IP had elsewhere."""
    return f"CASE WHEN {prefix}_kind = 'external' AND {prefix}_dns IS NULL AND {alias}.name IS NOT NULL THEN 'external:' || {alias}.name ELSE {expr} END"


def _lo(q: float, z: float) -> str:
    return f"greatest(1, floor(nl * {q} - {z} * sqrt(nl * {q} * {1 - q})))::BIGINT"


def _hi(q: float, z: float) -> str:
    return f"least(nl, ceil(nl * {q} + {z} * sqrt(nl * {q} * {1 - q})) + 1)::BIGINT"


EDGES_SQL = """
WITH
h AS (
    SELECT {client} AS client, {server} AS server, e.status, e.server_error, e.latency_ns
    FROM enriched_http e LEFT JOIN {ipnames} mc ON mc.ip = e.client_ip LEFT JOIN {ipnames} ms ON ms.ip = e.server_ip
),
hl AS (
    SELECT client, server, latency_ns,
           row_number() OVER (PARTITION BY client, server ORDER BY latency_ns) AS rk,
           count(*) OVER (PARTITION BY client, server) AS nl
    FROM h WHERE latency_ns IS NOT NULL
),
lat AS (
    SELECT client, server, any_value(nl) AS latency_samples,
           quantile_cont(latency_ns, 0.5) / 1e6 AS p50_ms,
           min(latency_ns) FILTER (WHERE rk = {lo50}) / 1e6 AS p50_lo_ms,
           min(latency_ns) FILTER (WHERE rk = {hi50}) / 1e6 AS p50_hi_ms,
           quantile_cont(latency_ns, 0.99) / 1e6 AS p99_ms,
           min(latency_ns) FILTER (WHERE rk = {lo99}) / 1e6 AS p99_lo_ms,
           min(latency_ns) FILTER (WHERE rk = {hi99}) / 1e6 AS p99_hi_ms
    FROM hl GROUP BY client, server
),
req AS (SELECT client, server, count(*) AS requests, count(*) FILTER (WHERE server_error) AS errors FROM h GROUP BY client, server),
c AS (
    SELECT {client} AS client, {server} AS server, e.bytes_c2s + e.bytes_s2c AS b, e.client_zone, e.server_zone
    FROM enriched_connections e LEFT JOIN {ipnames} mc ON mc.ip = e.client_ip LEFT JOIN {ipnames} ms ON ms.ip = e.server_ip
),
cz AS (
    SELECT client, server, string_agg(pair, ', ' ORDER BY pb DESC, pair) AS cross_zone_pairs FROM (
        SELECT client, server, client_zone || '->' || server_zone AS pair, sum(b) AS pb FROM c
        WHERE client_zone <> server_zone GROUP BY ALL
    ) GROUP BY client, server
),
conn AS (
    SELECT client, server, count(*) AS connections, coalesce(sum(b), 0)::DOUBLE AS bytes,
           coalesce(sum(b) FILTER (WHERE client_zone <> server_zone), 0)::DOUBLE AS cross_zone_bytes
    FROM c GROUP BY client, server
),
k AS (SELECT client, server FROM req UNION SELECT client, server FROM conn)
SELECT k.client, k.server,
       coalesce(req.requests, 0) AS requests, coalesce(req.errors, 0) AS errors,
       coalesce(conn.connections, 0) AS connections, coalesce(conn.bytes, 0) AS bytes,
       coalesce(conn.cross_zone_bytes, 0) AS cross_zone_bytes, cz.cross_zone_pairs,
       coalesce(lat.latency_samples, 0) AS latency_samples,
       lat.p50_ms, lat.p50_lo_ms, lat.p50_hi_ms, lat.p99_ms, lat.p99_lo_ms, lat.p99_hi_ms
FROM k
LEFT JOIN req USING (client, server) LEFT JOIN conn USING (client, server)
LEFT JOIN lat USING (client, server) LEFT JOIN cz USING (client, server)
ORDER BY k.client, k.server
"""

EGRESS_SQL = """
SELECT {dst} AS destination, {src} AS source, sum(bytes)::DOUBLE AS bytes
FROM enriched_flows e LEFT JOIN {ipnames} md ON md.ip = e.dst_real
WHERE e.dst_kind = 'external' AND e.src_kind IN ('pod', 'node', 'host')
GROUP BY ALL
"""

DNS_SERVERS_SQL = """
SELECT qname, coalesce(rcode_name, 'NO ANSWER') AS rcode_name, string_agg(DISTINCT {server}, ', ' ORDER BY {server}) AS resolvers
FROM ({keyed}) WHERE rcode IS NULL OR rcode <> 0
GROUP BY ALL
"""


def window_s(tape: "Tape") -> float:
    start, end = tape.window
    if start is None or end is None or end <= start:
        raise FlowtapeError(f"{tape.path}: the tape has no capture window (start and end in its manifest); rates cannot be normalised")
    return (end - start) / 1e9


def ip_names(*tapes: "Tape") -> pl.DataFrame:
    """ip -> the DNS name most often answered for it in these tapes (ties: the first name)."""
    frames = []
    for t in tapes:
        frames.append(t.analysis.sql("SELECT ip, name, count(*) AS n FROM ft_dns_names GROUP BY ALL").pl())
    df = pl.concat(frames) if frames else pl.DataFrame(schema={"ip": pl.Utf8, "name": pl.Utf8, "n": pl.Int64})
    return (
        df.group_by("ip", "name").agg(pl.col("n").sum())
        .sort(["ip", "n", "name"], descending=[False, True, False])
        .group_by("ip", maintain_order=True).first().select("ip", "name")
    )


def use_ip_names(tape: "Tape", names: pl.DataFrame) -> None:
    tape.con.register(IPNAMES, names.to_arrow())


def edges(tape: "Tape", by: str, z: float) -> pl.DataFrame:
    """Per edge: requests, 5xx, connections, bytes, cross-zone bytes and pairs, p50/p99 with CIs."""
    check_by(by)
    sql = EDGES_SQL.format(
        client=canon_name("client", name_sql("client", by), "mc"), server=canon_name("server", server_name_sql(by), "ms"), ipnames=IPNAMES,
        lo50=_lo(0.5, z), hi50=_hi(0.5, z), lo99=_lo(0.99, z), hi99=_hi(0.99, z),
    )
    return tape.analysis.sql(sql).pl()


def egress(tape: "Tape", by: str) -> pl.DataFrame:
    """Per external destination (DNS name, else IP) and source: flow bytes."""
    dst = "CASE WHEN e.dst_dns IS NOT NULL THEN e.dst_dns WHEN md.name IS NOT NULL THEN md.name ELSE e.dst_real END"
    return tape.analysis.sql(EGRESS_SQL.format(dst=dst, src=name_sql("src", by, "src_real"), ipnames=IPNAMES)).pl()


def dns_failures(tape: "Tape", by: str) -> pl.DataFrame:
    """The DNS report's failures with the resolvers that answered them."""
    f = tape.report.dns_failures(by=by).select("qname", "rcode_name", "search_path", "failures", "top_clients")
    keyed = keyed_sql("ft_dns_x", "ts_query", [("client", "client_ip"), ("server", "server_ip")])
    servers = tape.analysis.sql(DNS_SERVERS_SQL.format(server=name_sql("server", by), keyed=keyed)).pl()
    return f.join(servers, on=["qname", "rcode_name"], how="left")


# --- comparison ----------------------------------------------------------------------------------

FINDING_SCHEMA = {
    "status": pl.Utf8, "check": pl.Utf8, "subject": pl.Utf8, "base": pl.Float64, "new": pl.Float64,
    "change": pl.Utf8, "detail": pl.Utf8,
}

CHECK_ORDER = ["edge_added", "edge_removed", "request_rate", "error_rate", "p50_ms", "p99_ms", "bytes_per_min",
               "cross_zone_bytes_per_min", "zone_pair_cross_zone_bytes_per_min", "new_egress", "new_dns_failure"]


@dataclass
class DiffResult:
    base: str
    new: str
    by: str
    base_window_s: float
    new_window_s: float
    thresholds: Thresholds
    findings: pl.DataFrame
    """One row per regression or inconclusive comparison."""
    edges: pl.DataFrame
    """Every edge of either tape with both sides' numbers (rates normalised)."""
    zone_pairs: pl.DataFrame
    egress: pl.DataFrame
    dns: pl.DataFrame

    @property
    def regressions(self) -> pl.DataFrame:
        return self.findings.filter(pl.col("status") == "regression")

    @property
    def inconclusive(self) -> pl.DataFrame:
        return self.findings.filter(pl.col("status") == "inconclusive")

    def summary(self) -> str:
        r = self.regressions
        if r.is_empty():
            head = "no regression"
        else:
            counts = r.group_by("check").len()
            parts = [f"{n} {c}" for c in CHECK_ORDER for cc, n in counts.iter_rows() if cc == c]
            head = f"{len(r)} regression{'s' if len(r) != 1 else ''} ({', '.join(parts)})"
        inc = len(self.inconclusive)
        return head + (f"; {inc} change{'s' if inc != 1 else ''} beyond threshold not conclusive" if inc else "")


def _pct(base: float | None, new: float | None) -> str:
    if base is None or new is None:
        return ""
    if base == 0:
        return "new" if new > 0 else "0"
    r = new / base - 1
    return f"{r * 100:+.0f} %" if abs(r) < 10 else f"x{new / base:.1f}"


def _z_two_prop(e1: int, n1: int, e2: int, n2: int) -> float:
    p = (e1 + e2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    return ((e2 / n2) - (e1 / n1)) / se if se > 0 else 0.0


def _z_rates(k1: int, t1: float, k2: int, t2: float) -> float:
    """k2 given k1 + k2 ~ Binomial(k1 + k2, t2 / (t1 + t2)) when the rates are equal."""
    n, p = k1 + k2, t2 / (t1 + t2)
    sd = math.sqrt(n * p * (1 - p))
    return (k2 - n * p) / sd if sd > 0 else 0.0


def compare(base: "Tape", new: "Tape", by: str = "workload", thresholds: Thresholds | None = None) -> DiffResult:
    """Compare two tapes; findings say which changes are regressions and which are inconclusive."""
    th = thresholds or Thresholds()
    check_by(by)
    tb, tn = window_s(base), window_s(new)
    names = ip_names(base, new)
    for t in (base, new):
        use_ip_names(t, names)
    eb, en = edges(base, by, th.z), edges(new, by, th.z)
    keys = ["client", "server"]
    e = eb.join(en, on=keys, how="full", coalesce=True, suffix="_new")
    e = e.rename({c: f"{c}_base" for c in eb.columns if c not in keys})
    e = e.with_columns(
        pl.col(f"{c}_{s}").fill_null(0) for c in ("requests", "errors", "connections", "bytes", "cross_zone_bytes", "latency_samples") for s in ("base", "new")
    ).with_columns(
        present_base=(pl.col("requests_base") + pl.col("connections_base")) > 0,
        present_new=(pl.col("requests_new") + pl.col("connections_new")) > 0,
        rps_base=pl.col("requests_base") / tb, rps_new=pl.col("requests_new") / tn,
        error_rate_base=pl.when(pl.col("requests_base") > 0).then(pl.col("errors_base") / pl.col("requests_base")),
        error_rate_new=pl.when(pl.col("requests_new") > 0).then(pl.col("errors_new") / pl.col("requests_new")),
        bytes_per_min_base=pl.col("bytes_base") / (tb / 60), bytes_per_min_new=pl.col("bytes_new") / (tn / 60),
        cross_zone_bytes_per_min_base=pl.col("cross_zone_bytes_base") / (tb / 60),
        cross_zone_bytes_per_min_new=pl.col("cross_zone_bytes_new") / (tn / 60),
    ).sort(keys)

    out: list[dict[str, Any]] = []

    def add(status: str, check: str, subject: str, b: float | None, n: float | None, detail: str, change: str | None = None) -> None:
        out.append({"status": status, "check": check, "subject": subject, "base": b, "new": n, "change": change if change is not None else _pct(b, n), "detail": detail})

    lam_min = -math.log(th.p_value)
    for r in e.iter_rows(named=True):
        subject = f"{r['client']} -> {r['server']}"
        if not r["present_base"]:
            if th.edges_added:
                add("regression", "edge_added", subject, None, r["rps_new"] + r["connections_new"] / tn,
                    f"new edge: {r['requests_new']} requests, {r['connections_new']} connections", "new")
            continue
        if not r["present_new"]:
            if th.edges_removed:
                expected = (r["requests_base"] + r["connections_base"]) * tn / tb
                status = "regression" if expected >= lam_min else "inconclusive"
                why = f"expected {expected:.1f} calls in NEW, saw none" + ("" if status == "regression" else f" (too few: P(0) >= {th.p_value:.2g})")
                add(status, "edge_removed", subject, (r["requests_base"] + r["connections_base"]) / tb, 0.0, why, "gone")
            continue
        nb, nn = r["requests_base"], r["requests_new"]
        # request rate, both directions
        if nb or nn:
            rb, rn = r["rps_base"], r["rps_new"]
            rel = (rn / rb - 1) if rb > 0 else math.inf
            if abs(rel) >= th.rate_rel:
                z = _z_rates(nb, tb, nn, tn)
                if max(nb, nn) < th.min_requests:
                    add("inconclusive", "request_rate", subject, rb, rn, f"too few requests ({nb} vs {nn}; need {th.min_requests})")
                elif abs(z) < th.z:
                    add("inconclusive", "request_rate", subject, rb, rn, f"not significant (z={z:.2f} < {th.z:g}; {nb} vs {nn} requests)")
                else:
                    add("regression", "request_rate", subject, rb, rn, f"requests/s, z={z:.1f} ({nb} vs {nn} requests)")
        # error rate, increase only
        if nb and nn:
            pb, pn = r["error_rate_base"], r["error_rate_new"]
            if pn - pb >= th.error_rate_abs:
                z = _z_two_prop(r["errors_base"], nb, r["errors_new"], nn)
                d = f"{r['errors_base']}/{nb} vs {r['errors_new']}/{nn} responses >= 500"
                if min(nb, nn) < th.min_requests:
                    add("inconclusive", "error_rate", subject, pb, pn, f"too few requests ({d}; need {th.min_requests})")
                elif z < th.z:
                    add("inconclusive", "error_rate", subject, pb, pn, f"not significant (z={z:.2f} < {th.z:g}; {d})")
                else:
                    add("regression", "error_rate", subject, pb, pn, f"{d}, z={z:.1f}", f"{(pn - pb) * 100:+.1f} pp")
        # latency quantiles, increase only
        sb, sn = r["latency_samples_base"], r["latency_samples_new"]
        for q, need in (("p50", th.min_requests), ("p99", th.min_requests_p99)):
            vb, vn = r[f"{q}_ms_base"], r[f"{q}_ms_new"]
            if vb is None or vn is None:
                continue
            if vn - vb >= th.latency_abs_ms and vn >= vb * (1 + th.latency_rel):
                lo, hi = r[f"{q}_lo_ms_new"], r[f"{q}_hi_ms_base"]
                ci = f"CI NEW {r[f'{q}_lo_ms_new']:.1f}..{r[f'{q}_hi_ms_new']:.1f} vs BASE {r[f'{q}_lo_ms_base']:.1f}..{hi:.1f} ms"
                if min(sb, sn) < need:
                    add("inconclusive", f"{q}_ms", subject, vb, vn, f"too few samples ({sb} vs {sn}; need {need})")
                elif lo <= hi:
                    add("inconclusive", f"{q}_ms", subject, vb, vn, f"not significant: {ci}")
                else:
                    add("regression", f"{q}_ms", subject, vb, vn, f"{sb} vs {sn} samples, {ci}")
        # bytes and cross-zone bytes per minute, increase only
        for check, rel, ab in (("bytes_per_min", th.bytes_rel, th.bytes_abs_per_min), ("cross_zone_bytes_per_min", th.cross_zone_rel, th.cross_zone_abs_per_min)):
            vb, vn = r[f"{check}_base"], r[f"{check}_new"]
            if vn - vb >= ab and (vb == 0 or vn >= vb * (1 + rel)):
                d = f"{r['connections_base']} vs {r['connections_new']} connections"
                if check.startswith("cross"):
                    d += f"; cross-zone in NEW: {r['cross_zone_pairs_new']}"
                add("regression", check, subject, vb, vn, d)

    zp = _zone_pairs(base, new, tb, tn)
    for r in zp.iter_rows(named=True):
        vb, vn = r["bytes_per_min_base"], r["bytes_per_min_new"]
        if vn - vb >= th.cross_zone_abs_per_min and (vb == 0 or vn >= vb * (1 + th.cross_zone_rel)):
            add("regression", "zone_pair_cross_zone_bytes_per_min", f"{r['src_zone']} -> {r['dst_zone']}", vb, vn, f"{r['kind']} flow bytes per minute")

    eg = _egress(base, new, by, tb, tn)
    for r in eg.filter(pl.col("new_destination")).iter_rows(named=True):
        add("regression", "new_egress", r["destination"], None, r["bytes_per_min_new"], f"from {r['sources_new']}; flow bytes per minute", "new")

    dns = _dns(base, new, by)
    # one finding per (rcode, resolvers): a resolver failing fails for many names at once
    grouped = dns.filter(pl.col("new_failure")).group_by("rcode_name", "resolvers").agg(
        pl.col("qname").sort(), pl.col("failures_new").sum(), pl.col("top_clients").list.explode(keep_nulls=False, empty_as_null=False).unique().sort()
    ).sort("rcode_name", "resolvers")
    for r in grouped.iter_rows(named=True):
        names = r["qname"]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        add("regression", "new_dns_failure", f"{r['rcode_name']} from {r['resolvers']}", None, float(r["failures_new"]),
            f"{len(names)} names never failing so in BASE: {shown}; clients {', '.join(r['top_clients'])}", "new")

    findings = pl.DataFrame(out, schema=FINDING_SCHEMA) if out else pl.DataFrame(schema=FINDING_SCHEMA)
    order = {c: i for i, c in enumerate(CHECK_ORDER)}
    findings = findings.with_columns(
        _s=pl.col("status").replace_strict({"regression": 0, "inconclusive": 1}, return_dtype=pl.Int32),
        _c=pl.col("check").replace_strict(order, return_dtype=pl.Int32),
    ).sort(["_s", "_c", "subject"]).drop("_s", "_c")
    edge_cols = ["client", "server", "present_base", "present_new", "rps_base", "rps_new", "error_rate_base", "error_rate_new",
                 "latency_samples_base", "latency_samples_new", "p50_ms_base", "p50_ms_new", "p99_ms_base", "p99_ms_new",
                 "bytes_per_min_base", "bytes_per_min_new", "cross_zone_bytes_per_min_base", "cross_zone_bytes_per_min_new"]
    return DiffResult(str(base.path), str(new.path), by, tb, tn, th, findings, e.select(edge_cols), zp, eg, dns)


def _zone_pairs(base: "Tape", new: "Tape", tb: float, tn: float) -> pl.DataFrame:
    def one(t: "Tape", secs: float) -> pl.DataFrame:
        z = t.report.zone_pairs("zone").filter(pl.col("kind").is_in(["cross_zone", "cross_region"]))
        return z.group_by("src_zone", "dst_zone", "kind").agg(bytes_per_min=pl.col("bytes").sum().cast(pl.Float64) / (secs / 60))

    keys = ["src_zone", "dst_zone", "kind"]
    j = one(base, tb).join(one(new, tn), on=keys, how="full", coalesce=True, suffix="_new").rename({"bytes_per_min": "bytes_per_min_base"})
    return j.with_columns(pl.col("bytes_per_min_base", "bytes_per_min_new").fill_null(0.0)).sort(keys)


def _egress(base: "Tape", new: "Tape", by: str, tb: float, tn: float) -> pl.DataFrame:
    def one(t: "Tape", secs: float) -> pl.DataFrame:
        return egress(t, by).group_by("destination").agg(
            bytes_per_min=pl.col("bytes").sum() / (secs / 60), sources=pl.col("source").unique().sort().str.join(", ")
        )

    b, n = one(base, tb), one(new, tn)
    j = b.join(n, on="destination", how="full", coalesce=True, suffix="_new").rename({"bytes_per_min": "bytes_per_min_base", "sources": "sources_base"})
    return j.with_columns(new_destination=pl.col("bytes_per_min_base").is_null()).sort("destination")


def _dns(base: "Tape", new: "Tape", by: str) -> pl.DataFrame:
    b = dns_failures(base, by)
    n = dns_failures(new, by).filter(~pl.col("search_path"))
    n = n.group_by("qname", "rcode_name").agg(
        failures_new=pl.col("failures").sum(), top_clients=pl.col("top_clients").list.explode(keep_nulls=False, empty_as_null=False).unique().sort(), resolvers=pl.col("resolvers").first()
    )
    known = b.select("qname", "rcode_name").unique().with_columns(failed_in_base=pl.lit(True))
    j = n.join(known, on=["qname", "rcode_name"], how="left")
    return j.with_columns(new_failure=pl.col("failed_in_base").is_null()).drop("failed_in_base").sort("qname", "rcode_name")
