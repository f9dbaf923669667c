"""The service-map graph: DOT encoding (clusters, width by bytes, colour by error rate), SVG/PNG
through Graphviz, the one-line error without `dot`, and latency over time against raw rows."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import polars as pl
import pytest

import flowtape
from conftest import FIXTURES
from flowtape.analyze.render import graph

needs_dot = pytest.mark.usefixtures("need_dot")


def _edges() -> pl.DataFrame:
    return pl.DataFrame({
        "client": ["shop/frontend", "shop/api", "shop/api", "shop/cart"],
        "server": ["shop/api", "shop/catalog", "data/redis", "external:golang.org"],
        "connections": [2, 3, 1, 1], "failed_connections": [0, 0, 1, 0],
        "bytes_c2s": [400, 100, 10, 0], "bytes_s2c": [600, 0, 0, 0],
        "requests": [100, 50, 0, 0], "errors_5xx": [2, 10, 0, 0],
        "error_rate": [0.02, 0.2, None, None], "p99_ms": [40.0, 90.0, None, None],
    })


def _edge_attrs(text: str, a: str, b: str, ids: dict[str, str]) -> dict[str, str]:
    m = re.search(rf"^  {ids[a]} -> {ids[b]} \[(.*)\];$", text, re.M)
    assert m, f"no edge {a} -> {b}"
    return dict(re.findall(r'(\w+)=("[^"]*"|[^,\s]+)', m.group(1)))


def _ids(text: str) -> dict[str, str]:
    return {tip: nid for nid, tip in re.findall(r'(n\d+) \[label="[^"]*", tooltip="([^"]*)"\]', text)}


def test_dot_encodes_bytes_errors_and_groups():
    df = _edges()
    groups = {"shop/frontend": "shop", "shop/api": "shop", "shop/catalog": "shop", "shop/cart": "shop", "data/redis": "data", "external:golang.org": "internet"}
    text = graph.dot(df, groups, "namespace")
    ids = _ids(text)
    assert set(ids) == set(groups)
    # one cluster per namespace, members drawn with short names
    clusters = re.findall(r'subgraph (cluster_\d+) \{\n    label="namespace (\w+)";', text)
    assert sorted(g for _, g in clusters) == ["data", "internet", "shop"]
    assert f'{ids["shop/api"]} [label="api", tooltip="shop/api"]' in text
    assert f'{ids["external:golang.org"]} [label="golang.org", tooltip="external:golang.org"]' in text
    # width: the busiest edge (1000 bytes) is 8, sqrt scale below it, 1 without bytes
    assert _edge_attrs(text, "shop/frontend", "shop/api", ids)["penwidth"] == "8.00"
    assert _edge_attrs(text, "shop/api", "shop/catalog", ids)["penwidth"] == f"{1 + 7 * (100 / 1000) ** 0.5:.2f}"
    assert _edge_attrs(text, "shop/cart", "external:golang.org", ids)["penwidth"] == "1.00"
    # colour: 2 % orange, 20 % red, a failed connection of one is red, nothing gray
    assert _edge_attrs(text, "shop/frontend", "shop/api", ids)["color"] == "orange"
    assert _edge_attrs(text, "shop/api", "shop/catalog", ids)["color"] == "red"
    assert _edge_attrs(text, "shop/api", "data/redis", ids)["color"] == "red"
    assert _edge_attrs(text, "shop/cart", "external:golang.org", ids)["color"] == "gray40"
    assert "2% err" in text and "20% err" in text


def test_edge_colour_thresholds():
    assert [graph.edge_colour({"error_rate": r}) for r in (0, 0.004, 0.005, 0.0099, 0.01, 0.049, 0.05, 1)] == [
        "gray40", "gray40", "goldenrod", "goldenrod", "orange", "orange", "red", "red"]


@needs_dot
def test_cli_svg_png_and_zone_clusters(cli, tiny_tape, tmp_path):
    r = cli("report", "topology", tiny_tape, "-f", "svg", "--group-by", "zone")
    assert r.code == 0, r.err
    root = ET.fromstring(r.out.split("-->", 2)[-1] if r.out.startswith("<?xml") else r.out)
    titles = [e.text for e in root.iter("{http://www.w3.org/2000/svg}title")]
    assert "cluster_0" in titles and "shop/frontend" not in titles  # nodes are titled by their DOT ids
    text = ET.tostring(root, encoding="unicode")
    assert "zone eu-west-1a" in text and "zone eu-west-1b" in text and "golang.org" in text
    r = cli("report", "topology", tiny_tape, "-f", "png", "-o", tmp_path / "t.png")
    assert r.code == 0, r.err
    data = (tmp_path / "t.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    r = cli("report", "topology", tiny_tape, "-f", "dot", "--group-by", "namespace")
    assert 'label="namespace shop"' in r.out and "subgraph cluster_" in r.out
    r = cli("report", "topology", tiny_tape, "-f", "dot")  # ungrouped by default, as before
    assert "subgraph" not in r.out and 'label="shop/frontend"' in r.out


def test_missing_dot_is_one_line(cli, tiny_tape, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no `dot`
    for fmt in ("svg", "png"):
        r = cli("report", "topology", tiny_tape, "-f", fmt, "-o", tmp_path / f"x.{fmt}")
        assert r.code == 7
        assert r.err.strip().count("\n") == 0 and "`dot`" in r.err and "apt-get install graphviz" in r.err
    r = cli("report", "html", tiny_tape, "-o", tmp_path / "x.html")
    assert r.code == 7 and "apt-get install graphviz" in r.err and not (tmp_path / "x.html").exists()


def test_unwritable_output_is_one_line(cli, tiny_tape, tmp_path):
    r = cli("report", "topology", tiny_tape, "-f", "mermaid", "-o", tmp_path / "no" / "such" / "dir.mmd")
    assert r.code == 6 and r.err.startswith("flowtape: error: cannot write") and r.err.count("\n") == 1


def test_latency_over_time_against_raw_rows():
    """Buckets of api -> catalog, recomputed with Polars from the enriched rows (bucketing and
    percentiles done independently of the report's SQL); the injected x5 window shows."""
    tape = flowtape.open(FIXTURES / "synth-incident.tape")
    rep = tape.report.latency_over_time(edges=[("shop/api", "shop/catalog")])
    rows = (tape.enriched("http").pl(lazy=True)
            .filter((pl.col("client_workload") == "api") & (pl.col("server_workload") == "catalog") & pl.col("latency_ns").is_not_null())
            .select("ts", "latency_ns").collect())
    start = tape.window[0]
    ts_ns = rows["ts"].dt.epoch("ns").to_numpy()
    lat = rows["latency_ns"].to_numpy()
    bucket = (ts_ns - start) // 10**10
    assert rep.height == len(np.unique(bucket)) == 30
    assert rep["requests"].sum() == len(lat) == tape.report.topology().filter((pl.col("client") == "shop/api") & (pl.col("server") == "shop/catalog"))["requests"][0]
    for k, r in enumerate(rep.sort("ts").iter_rows(named=True)):
        assert r["ts"].timestamp() * 1e9 == start + k * 10**10
        sel = lat[bucket == k]
        assert r["requests"] == len(sel)
        assert r["p50_ms"] == pytest.approx(np.percentile(sel, 50) / 1e6)
        assert r["p99_ms"] == pytest.approx(np.percentile(sel, 99) / 1e6)
    p50 = rep.sort("ts")["p50_ms"].to_list()
    inside, outside = p50[3:6], p50[:3] + p50[6:]
    assert min(inside) > 3 * max(outside)  # truth.json: x5 from 30 s to 60 s


def test_latency_over_time_top_edges_and_bucket():
    tape = flowtape.open(FIXTURES / "synth-incident.tape")
    rep = tape.report.latency_over_time(top=2, bucket_s=60)
    topo = tape.report.topology()
    first_two = [tuple(x) for x in topo.select("client", "server").head(2).rows()]
    assert rep.select("client", "server").unique(maintain_order=True).rows() == first_two
    assert rep.height == 10  # 5 one-minute buckets per edge
    with pytest.raises(flowtape.FlowtapeError):
        tape.report.latency_over_time(bucket_s=0)
