"""Numbers for people in the terminal table; CSV, JSON and Markdown stay exact."""

from __future__ import annotations

import io
import json

import polars as pl
import pytest

from flowtape.analyze.render.formats import human_bytes, human_duration, human_header, human_percent, human_usd, render_frame, unit_of


@pytest.mark.parametrize("seconds, text", [
    (0.0173744, "17.4 ms"), (6.83283e-05, "68.3 µs"), (0.0009997, "1.00 ms"), (0.142964e-3, "143 µs"), (2.5e-7, "250 ns"),
    (1.0, "1.00 s"), (59.99, "60.0 s"), (75, "1.25 min"), (4000, "1.11 h"), (0, "0 s"),
])
def test_durations_three_significant_digits(seconds, text):
    assert human_duration(seconds) == text


@pytest.mark.parametrize("rate, text", [(0.00191361, "0.191 %"), (0.25, "25.0 %"), (1.0, "100 %"), (0, "0 %"), (1e-6, "<0.01 %")])
def test_rates_as_percentages(rate, text):
    assert human_percent(rate) == text


@pytest.mark.parametrize("usd, text", [(0.59, "$0.59"), (1234.5, "$1,234.50"), (6.83283e-05, "<$0.01"), (0, "$0"), (0.006, "$0.01")])
def test_money(usd, text):
    assert human_usd(usd) == text


@pytest.mark.parametrize("n, text", [(2149551, "2.1 MB"), (999, "999 B"), (1000, "1.0 kB"), (47280, "47.3 kB"), (5 * 10**9, "5.0 GB")])
def test_bytes_decimal(n, text):
    assert human_bytes(n) == text


def test_units_and_headers_from_column_names():
    assert [unit_of(c) for c in ("bytes_c2s", "bytes", "request_bytes", "p50_ms", "srtt_us", "latency_ns", "error_rate", "cost_usd_month", "requests", "client_port")] == \
        ["bytes", "bytes", "bytes", "ms", "us", "ns", "rate", "usd", None, None]
    assert [human_header(c) for c in ("p50_ms", "cost_usd_month", "cost_usd", "latency_ns", "requests")] == ["p50", "cost_month", "cost", "latency", "requests"]


FRAME = pl.DataFrame({"client": ["shop/frontend", "a-much-longer-client-name-than-the-others"], "server": ["shop/api", "x"],
                      "bytes_c2s": [2149551, 10], "requests": [12, 0], "error_rate": [0.00191361, None], "p50_ms": [17.3744, None],
                      "p95_ms": [40.0, None], "p99_ms": [49.2, None], "cost_usd": [6.83283e-05, 0.59]})


def test_csv_json_markdown_stay_exact():
    for fmt in ("csv", "json", "markdown"):
        out = io.StringIO()
        render_frame(FRAME, fmt, out)
        assert "2149551" in out.getvalue() and "0.00191361" in out.getvalue() and "17.3744" in out.getvalue() and "6.83283e-05" in out.getvalue()
        assert "MB" not in out.getvalue() and "%" not in out.getvalue()
    out = io.StringIO()
    render_frame(FRAME, "json", out)
    assert json.loads(out.getvalue())[0]["cost_usd"] == 6.83283e-05


def test_table_for_people_and_columns_left_out_by_priority():
    out = io.StringIO()
    render_frame(FRAME, "table", out, width=200)
    text = out.getvalue()
    for shown in ("2.1 MB", "0.191 %", "17.4 ms", "<$0.01", "$0.59", "p50", "cost"):
        assert shown in text
    assert "p50_ms" not in text and "not shown" not in text
    out = io.StringIO()
    render_frame(FRAME, "table", out, width=90)
    lines = out.getvalue().splitlines()
    assert lines[-1] == "(not shown in 90 columns: bytes_c2s, p50, p95, p99; -f csv has them)"  # in table order
    assert all(len(line) <= 90 for line in lines[:-1])
    assert "a-much-longer-client-name-than-the-others" in out.getvalue()  # a value is never cut
    out = io.StringIO()
    render_frame(FRAME, "table", out, width=30)  # the first column alone is wider: shown whole, the rest left out
    assert "a-much-longer-client-name-than-the-others" in out.getvalue()
    assert out.getvalue().splitlines()[-1] == "(not shown in 30 columns: server, bytes_c2s, requests, error_rate, p50, p95, p99, cost; -f csv has them)"


def test_sql_keeps_raw_values(committed_tiny, cli):
    import pyarrow.parquet as pq

    total = sum(pq.read_table(f).column("bytes").to_pylist()[i] for f in (committed_tiny / "flows").rglob("*.parquet")
                for i in range(pq.read_metadata(f).num_rows))
    r = cli("sql", committed_tiny, "select sum(bytes) as bytes, 0.25 as error_rate from flows")
    assert r.code == 0 and f" {total} " in r.out and " 0.25 " in r.out and "kB" not in r.out and "%" not in r.out
