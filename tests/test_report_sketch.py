"""HTTP percentiles from the log-bucketed histogram (analyze.sketch) against numpy on raw values."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from flowtape.analyze.sketch import ALPHA, bucket_sql, percentile_sql, ranks_sql

BOUND = ALPHA * (1 + 1e-9)  # the stated bound; the slack is the last bits of float rounding


def sketch_percentiles(groups: dict[str, np.ndarray], qs=(0.5, 0.95, 0.99)) -> dict[str, list[float]]:
    """Histogram per group (several rows per bucket, as http_sums gives them), then percentiles."""
    con = duckdb.connect()
    rows = [(g, int(v), i % 3) for g, vals in groups.items() for i, v in enumerate(vals)]
    con.execute("CREATE TABLE raw (g VARCHAR, x BIGINT, part INTEGER)")
    con.executemany("INSERT INTO raw VALUES (?, ?, ?)", rows)
    cols = ", ".join(f"{percentile_sql(q, scale=1.0)} AS p{i}" for i, q in enumerate(qs))
    sql = f"""
    SELECT g, {cols} FROM (
        SELECT *, {ranks_sql("g")} FROM (SELECT g, part, {bucket_sql("x")} AS lb, count(*) AS n FROM raw GROUP BY ALL)
    ) GROUP BY g"""
    return {g: list(v) for g, *v in con.execute(sql).fetchall()}


def test_within_bound_of_numpy():
    rng = np.random.default_rng(3)
    groups = {
        "lognormal": rng.lognormal(16, 1.2, 5000),  # ~10 ms with a long tail
        "bimodal": np.concatenate([rng.normal(2e6, 1e5, 3000), rng.normal(4e8, 1e7, 40)]),
        "one": np.array([123456.0]),
        "two": np.array([1000.0, 5000.0]),
        "wide": rng.uniform(1, 1e10, 999),
        "zeros": np.array([0, 0, 0, 10, 1_000_000]),
    }
    groups = {g: np.floor(v) for g, v in groups.items()}
    got = sketch_percentiles(groups)
    worst = 0.0
    for g, vals in groups.items():
        for q, p in zip((50, 95, 99), got[g]):
            exact = np.percentile(vals, q)  # linear interpolation, as quantile_cont
            assert p == pytest.approx(exact, rel=BOUND, abs=1e-9), (g, q)
            worst = max(worst, abs(p - exact) / exact if exact else 0)
    assert worst > ALPHA / 10  # it is a histogram: the check above is not vacuous


def test_group_without_latency_is_null():
    con = duckdb.connect()
    sql = f"""SELECT {percentile_sql(0.5)} FROM (SELECT *, {ranks_sql("g")} FROM (SELECT 'a' AS g, NULL::INTEGER AS lb, 3 AS n))"""
    assert con.execute(sql).fetchall() == [(None,)]
