"""Latency percentiles from a log-bucketed histogram (DDSketch-style), with a bounded relative error.

A latency x > 0 falls in bucket i = ceil(log_gamma(x)), i.e. (gamma^(i-1), gamma^i], with
gamma = (1 + ALPHA) / (1 - ALPHA); the bucket stands for 2 gamma^i / (gamma + 1), which is within
ALPHA (1 %) of every value in it. Latencies of 0 (or below: clock steps) have a bucket of their
own that stands for 0.

Why: a histogram is a count per (group, bucket), so it is built by a hash GROUP BY in the same
pass that counts requests, and histograms of finer groups (a minute, a pod, a route) add up to
the histogram of any coarser group. Exact percentiles need every value of a group sorted, once
per report and grouping.

A percentile is read as `quantile_cont` defines it (linear interpolation between the order
statistics at ranks floor(h) and floor(h) + 1, h = (n - 1) q), with each order statistic
replaced by its bucket's value. Each replacement is within ALPHA of the true order statistic,
and so is any weighted mean of the two: every percentile is within ALPHA (1 %) of the exact
`quantile_cont` of the same rows.
"""

from __future__ import annotations

import math

ALPHA = 0.01
"""Relative error bound of every histogram percentile (1 %)."""

GAMMA = (1 + ALPHA) / (1 - ALPHA)

ZERO = -32768
"""Bucket of latencies <= 0 (stands for 0)."""

_LN_GAMMA = math.log(GAMMA)


def bucket_sql(x: str) -> str:
    """The bucket of `x` (NULL when x is NULL)."""
    return f"CASE WHEN {x} > 0 THEN ceil(ln({x}) / {_LN_GAMMA!r})::INTEGER WHEN {x} IS NOT NULL THEN {ZERO} END"


def _value(b: str) -> str:
    return f"CASE WHEN {b} = {ZERO} THEN 0.0 ELSE 2 * pow({GAMMA!r}, {b}) / {GAMMA + 1!r} END"


def ranks_sql(keys: str, lb: str = "lb", n: str = "n") -> str:
    """Window columns `__cum`, `__tot` over rows (keys..., lb, n): the running count of rows with a
    latency in bucket order, and the group's count of latencies. Add to the select list of the
    histogram rows (several rows may share a bucket: they are summed in any order)."""
    part = f"PARTITION BY {keys}"
    has = f"CASE WHEN {lb} IS NOT NULL THEN {n} ELSE 0 END"
    return (f"sum({has}) OVER ({part} ORDER BY {lb} NULLS LAST ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS __cum, "
            f"sum({has}) OVER ({part}) AS __tot")


def percentile_sql(q: float, scale: float = 1e6, lb: str = "lb") -> str:
    """Aggregate giving percentile `q` (0..1) divided by `scale`, over rows carrying ranks_sql's columns."""
    h = f"(__tot - 1) * {q!r}"
    lo = f"min({lb}) FILTER (WHERE __cum > floor({h}))"
    hi = f"coalesce(min({lb}) FILTER (WHERE __cum > floor({h}) + 1), {lo})"
    frac = f"(any_value({h}) - floor(any_value({h})))"
    return f"({_value(lo)} + {frac} * ({_value(hi)} - {_value(lo)})) / {scale!r}"
