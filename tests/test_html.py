"""`flowtape report html`: one self-contained page whose numbers match the tape, seen by Chromium.

Numbers are recomputed here from the raw Parquet rows (not through the reports): requests per
edge from server-side HTTP rows named by a time-aware pod lookup of our own, SERVFAIL counts
from DNS exchanges, TLS names for external destinations, row counts from Parquet footers.
"""

from __future__ import annotations

import html.parser
import json
import re
import subprocess
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from conftest import FIXTURES, require_tool, run_cli

INCIDENT = FIXTURES / "synth-incident.tape"
pytestmark = pytest.mark.usefixtures("need_dot")


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("html") / "report.html"
    r = run_cli("report", "html", INCIDENT, "-o", out)
    assert r.code == 0, r.err
    assert r.out == "" and r.err.startswith(f"flowtape: wrote {out}")
    return out


class Doc(html.parser.HTMLParser):
    """Every start tag with its attributes, every <tr data-row> with its cells' text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.rows: list[tuple[dict[str, str], list[str]]] = []
        self.text: list[str] = []
        self._row: tuple[dict[str, str], list[str]] | None = None
        self._cell: list[str] | None = None
        self._stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "tr" and "data-row" in a:
            self._row = (a, [])
            self.rows.append(self._row)
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row[1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(text: str) -> Doc:
    d = Doc()
    d.feed(text)
    return d


def rows_of(doc: Doc, kind: str) -> list[tuple[dict[str, str], list[str]]]:
    return [r for r in doc.rows if r[0]["data-row"] == kind]


# --- independent numbers from raw rows -------------------------------------------------------


def _read(table: str) -> pl.DataFrame:
    return pl.from_arrow(pq.read_table(INCIDENT / table, partitioning="hive"))


def requests_per_workload_edge() -> dict[tuple[str, str], int]:
    """Server-side HTTP rows (every in-cluster exchange has one), both ends named by the pod
    that owned the IP at that moment: latest pod version with valid_from <= ts < valid_to."""
    pods = _read("k8s_pods").filter(~pl.col("host_network")).explode("ips").select(
        pl.col("ips").alias("ip"), "valid_from", "valid_to", (pl.col("namespace") + "/" + pl.col("workload_name")).alias("workload")).sort("valid_from")
    http = _read("http").filter(pl.col("side") == "server").select("ts_request", "client_ip", "server_ip").sort("ts_request")

    def name(col: str) -> pl.Series:
        j = http.join_asof(pods, left_on="ts_request", right_on="valid_from", by_left=col, by_right="ip", strategy="backward", check_sortedness=False)
        ok = j["valid_to"].is_null() | (j["ts_request"] < j["valid_to"])
        return pl.when(ok).then(j["workload"]).otherwise(None)

    named = pl.DataFrame({"client": http.select(name("client_ip")).to_series(), "server": http.select(name("server_ip")).to_series()})
    counts = named.drop_nulls().group_by("client", "server").len()
    return {(r["client"], r["server"]): r["len"] for r in counts.iter_rows(named=True)}


def servfails_per_name() -> dict[str, int]:
    """SERVFAIL exchanges per name, each exchange once (seen on the client's and the resolver's node)."""
    dns = _read("dns").filter(pl.col("rcode_name") == "SERVFAIL").unique(["client_ip", "client_port", "txid", "qname"])
    return {r["qname"]: r["len"] for r in dns.group_by("qname").len().iter_rows(named=True)}


# --- the page ---------------------------------------------------------------------------------


def test_self_contained(page):
    text = page.read_text()
    doc = parse(text)
    for tag, attrs in doc.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed"), f"<{tag}> in a self-contained page"
        for k, v in attrs.items():
            assert not re.search(r"https?://|//[a-z]", v, re.I), f"<{tag} {k}={v!r}> points outside the page"
            if k in ("src", "href", "xlink:href"):
                assert v.startswith(("#", "data:")), f"<{tag} {k}={v!r}>"
    styles = re.findall(r"<style>(.*?)</style>", text, re.S)
    assert styles and not any(re.search(r"@import|url\(|@font-face", s) for s in styles)
    assert not re.search(r"style=\"[^\"]*url\(", text)
    # the only http(s):// left in the file would be in text content, and there is none
    assert "http://" not in text and "https://" not in text


def test_figures_and_sections(page):
    doc = parse(page.read_text())
    figs = {a["id"] for t, a in doc.tags if t == "figure"}
    assert figs == {"fig-topology", "fig-latency", "fig-zones"}
    svgs = [i for i, (t, _) in enumerate(doc.tags) if t == "svg"]
    assert len(svgs) >= 3
    sections = [a["id"] for t, a in doc.tags if t == "section"]
    assert sections == ["topology", "latency", "zones", "dns", "egress", "metadata"]
    text = " ".join(doc.text)
    # the service map is grouped by namespace and names every workload
    for ns in ("namespace shop", "namespace data", "namespace internet"):
        assert ns in text
    for w in ("loadgen", "frontend", "api", "catalog", "checkout", "payments", "users", "search", "cart", "postgres", "redis"):
        assert re.search(rf">{w}<", page.read_text()), f"{w} is not a node of the service map"
    # latency over time: the six busiest edges titled in the chart
    for title in ("shop/frontend → shop/api", "shop/api → shop/catalog"):
        assert title in text


def test_edge_numbers_match_raw_rows(page):
    doc = parse(page.read_text())
    expected = requests_per_workload_edge()
    shown = {(a["data-client"], a["data-server"]): cells for a, cells in rows_of(doc, "edge")}
    in_cluster = [e for e in shown if not e[1].startswith(("external:", "node:")) and int(shown[e][2].replace(",", "")) > 0]
    assert len(in_cluster) == 8
    for e in in_cluster:
        assert shown[e][2] == f"{expected[e]:,}", e
    assert shown[("shop/frontend", "shop/api")][2] == "3,658"
    # api -> catalog: the 5xx burst of catalog shows (30 % of its responses for 30 s)
    http = _read("http").filter((pl.col("side") == "server") & (pl.col("status") >= 500))
    catalog_ips = set(_read("k8s_pods").filter(pl.col("workload_name") == "catalog").explode("ips")["ips"].to_list())
    assert shown[("shop/api", "shop/catalog")][3] == str(http.filter(pl.col("server_ip").is_in(catalog_ips)).height)


def test_dns_external_and_metadata_match_raw_rows(page):
    doc = parse(page.read_text())
    servfail = servfails_per_name()
    shown = {a["data-qname"]: cells for a, cells in rows_of(doc, "dns") if a["data-rcode"] == "SERVFAIL"}
    assert shown and set(shown) <= set(servfail)
    for qname, cells in shown.items():
        assert cells[2] == f"{servfail[qname]:,}", qname
        assert "02:02:10" <= cells[4] <= cells[5] < "02:02:40"  # truth.json: SERVFAIL storm 130 s .. 160 s
    top = max(servfail, key=servfail.get)
    assert top in shown
    # external destinations: every TLS server name of the tape, named by DNS
    sni = set(_read("tls")["sni"].drop_nulls().to_list())
    dests = {a["data-destination"]: cells for a, cells in rows_of(doc, "egress")}
    assert sni <= set(dests) and "telemetry.collect-metrics.io" in sni
    first, last = dests["telemetry.collect-metrics.io"][4:6]
    assert "02:03:00" <= first <= last < "02:03:30"  # truth.json: egress 180 s .. 210 s
    # metadata: nodes and zones, row counts from the Parquet footers, the window
    truth = json.loads((INCIDENT / "truth.json").read_text())
    nodes = {a["data-node"]: cells for a, cells in rows_of(doc, "node")}
    assert {n: c[1] for n, c in nodes.items()} == {n["name"]: n["zone"] for n in truth["cluster"]["nodes"]}
    assert all(c[3] == "0" for c in nodes.values())
    tables = {a["data-table"]: cells[1] for a, cells in rows_of(doc, "table")}
    for t in ("flows", "http", "dns", "connections", "k8s_pods"):
        n = sum(pq.read_metadata(f).num_rows for f in (INCIDENT / t).rglob("*.parquet"))
        assert tables[t] == f"{n:,}", t
    text = " ".join(doc.text)
    assert "2024-03-03 02:00:00 UTC → 2024-03-03 02:05:00 UTC (5 min)" in text
    # zone pairs: every zone of the cluster in the matrix, cross-zone rows priced
    pairs = rows_of(doc, "pair")
    zones = {n["zone"] for n in truth["cluster"]["nodes"]}
    assert {a["data-src"] for a, _ in pairs} == zones | {"internet"}
    cross = [(a, c) for a, c in pairs if c[2] == "cross_zone"]
    assert len(cross) == 6 and all(c[5].startswith("$") and c[5] != "$0" for _, c in cross)


def test_bad_input_is_one_line(tmp_path):
    r = run_cli("report", "html", tmp_path / "nope.tape", "-o", tmp_path / "x.html")
    assert r.code == 3 and r.err.count("\n") == 1 and not (tmp_path / "x.html").exists()
    r = run_cli("report", "html", FIXTURES / "tiny.tape", "-o", tmp_path / "x.html", "--group-by", "planet")
    assert r.code == 2


def test_tiny_tape_page(tmp_path):
    out = tmp_path / "tiny.html"
    r = run_cli("report", "html", FIXTURES / "tiny.tape", "-o", out, "--group-by", "zone")
    assert r.code == 0, r.err
    doc = parse(out.read_text())
    text = " ".join(doc.text)
    assert "zone eu-west-1a" in text and "zone eu-west-1b" in text
    edges = {(a["data-client"], a["data-server"]): c for a, c in rows_of(doc, "edge")}
    assert edges[("shop/frontend", "shop/api")][2:4] == ["4", "1"]  # 4 requests, one 5xx (tiny.tape)
    assert ("shop/frontend", "unknown:10.0.2.99") in edges


# --- Chromium ---------------------------------------------------------------------------------


def _chromium() -> str:
    return require_tool(("chromium", "chromium-browser"), "apt-get install chromium")


def _chromium_args(exe: str, profile: Path) -> list[str]:
    return [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", "--window-size=1400,2200"]


def test_chromium_renders_the_page(page, tmp_path):
    exe = _chromium()
    shot = tmp_path / "shot.png"
    p = subprocess.run(_chromium_args(exe, tmp_path / "profile") + [f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=180)
    assert p.returncode == 0 and shot.exists(), p.stderr[-2000:]
    from PIL import Image

    im = Image.open(shot).convert("RGB")
    assert im.size == (1400, 2200)
    small = im.resize((350, 550))
    colours = small.getcolors(maxcolors=1 << 20)
    white = sum(n for n, c in colours if min(c) >= 250)
    assert len(colours) > 500, "the screenshot is (nearly) one colour"
    assert white < 0.85 * 350 * 550, "the screenshot is mostly white"
    # the dark header band is drawn at the top
    assert sum(im.getpixel((700, 20))) < 200
    # the DOM as Chromium built it: the figures, their SVGs and the workloads
    d = subprocess.run(_chromium_args(exe, tmp_path / "profile2") + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    assert d.returncode == 0, d.stderr[-2000:]
    dom = d.stdout
    for fig in ("fig-topology", "fig-latency", "fig-zones"):
        m = re.search(rf'<figure id="{fig}">(.*?)</figure>', dom, re.S)
        assert m and "<svg" in m.group(1), fig
    expected = requests_per_workload_edge()
    for (c, s), n in expected.items():
        if c.startswith("shop/") and s.startswith("shop/"):
            assert re.search(rf'data-client="{c}" data-server="{s}"[^>]*><td>{c}</td><td>{s}</td><td class="n">{n:,}</td>', dom), (c, s, n)
    assert "telemetry.collect-metrics.io" in dom
