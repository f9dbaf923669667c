"""One self-contained HTML page for a tape: service map, latency over time, the slowest request
journeys (when the tape links calls into trees), zone pairs and their cost, DNS failures,
external destinations and the tape's metadata.

Everything is computed by the reports (analyze.reports.*) and only rendered here. The page needs
no network to be viewed: CSS is inline, the graph is Graphviz SVG inline, charts are matplotlib
SVG inline (text kept as text, generic font families only), and there is no script.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import polars as pl

from ... import __version__
from ...reader import Tape
from . import graph
from .formats import human_bytes, human_duration, human_usd
from ..reports.prices import Prices
from ..reports.dns import dns_failures
from ..reports.filters import Filters
from ..reports.limits import HTTP, KUBERNETES, ZONES, limits
from ..reports.placement import endpoint_groups
from ..reports.timeseries import default_bucket_s, latency_over_time
from ..reports.topology import topology
from ..reports.traffic import egress, zone_pairs
from ..reports.traces import critical_path, slowest_step, traces
from .traces import waterfall_svg

CSS = """
:root { --fg:#1d2330; --muted:#5f6b7d; --line:#dde2ea; --bg:#ffffff; --panel:#f6f8fb; --accent:#2f5fb3; --bad:#c0392b; --warn:#d68910; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; color: var(--fg); background: var(--bg); }
header { padding: 20px 32px 16px; background: #1f2a3d; color: #fff; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header p { margin: 0; color: #c9d3e3; }
main { padding: 8px 32px 40px; max-width: 1500px; }
section { margin-top: 28px; }
h2 { font-size: 18px; margin: 0 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
p.note { color: var(--muted); margin: 4px 0 10px; max-width: 1100px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 18px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 150px; }
.card .v { font-size: 22px; font-weight: 600; }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card.bad .v { color: var(--bad); }
figure { margin: 0; background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 12px; overflow-x: auto; }
figure svg { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 12px; margin-top: 6px; }
table { border-collapse: collapse; margin: 6px 0; font-size: 13px; }
th, td { white-space: nowrap; padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--panel); font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.bad td { color: var(--bad); }
tr.warn td { color: var(--warn); }
.legend span { display: inline-block; margin-right: 16px; }
.legend i { display: inline-block; width: 28px; height: 4px; vertical-align: middle; margin-right: 6px; border-radius: 2px; }
.grid2 { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 16px; align-items: start; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; }
.empty { color: var(--muted); font-style: italic; }
"""

LEGEND_COLOURS = {"gray40": "#666666", "goldenrod": "#daa520", "orange": "#ffa500", "red": "#ff0000"}


@dataclass
class Page:
    """What the page shows, computed from the tape by the reports."""

    tape: Tape
    by: str
    group_by: str
    filters: Filters
    edges: pl.DataFrame
    groups: dict[str, str]
    series: pl.DataFrame
    bucket_s: int
    zones: pl.DataFrame
    regions: pl.DataFrame
    dns: pl.DataFrame
    egress: pl.DataFrame
    nodes: pl.DataFrame
    limits: dict[str, str]
    journeys: pl.DataFrame = field(default_factory=pl.DataFrame)


def compute(tape: Tape, by: str = "workload", group_by: str = "namespace", top_edges: int = 6, prices: Prices | None = None,
            filters: Filters | None = None) -> Page:
    """Run every report the page shows."""
    f = filters or Filters()
    a = tape.analysis
    bucket = default_bucket_s(a)
    lim = limits(a)
    if group_by == "zone" and ZONES in lim:
        group_by = "none"  # one cluster of unknown zones says nothing: the map is drawn ungrouped
    groups = dict(endpoint_groups(a, by, group_by, f).iter_rows()) if group_by != "none" else {}
    nodes = tape.lazy("k8s_nodes").group_by("name").agg(pl.col("zone").drop_nulls().last(), pl.col("region").drop_nulls().last()).sort("name").collect()
    return Page(
        tape=tape, by=by, group_by=group_by, filters=f,
        edges=topology(a, by, f), groups=groups,
        series=latency_over_time(a, by, bucket, top_edges, None, f), bucket_s=bucket,
        zones=zone_pairs(a, "zone", prices, f), regions=zone_pairs(a, "region", prices, f),
        dns=dns_failures(a, by, f), egress=egress(a, by, prices, f), nodes=nodes, limits=lim,
        journeys=traces(a, by, f, slowest=JOURNEYS, min_spans=3),
    )


JOURNEYS = 5
"""The slowest call trees (traces of at least three spans) drawn as waterfalls."""


def build_html(tape: Tape, by: str = "workload", group_by: str = "namespace", top_edges: int = 6, prices: Prices | None = None,
               filters: Filters | None = None) -> str:
    """The whole page as text."""
    return render_page(compute(tape, by, group_by, top_edges, prices, filters))


# --- rendering ---------------------------------------------------------------------------------


def render_page(p: Page) -> str:
    t = p.tape
    start, end = t.window
    name = t.path.name
    window = f"{_ts(start)} → {_ts(end)} ({_duration(start, end)})" if start and end else "unknown window"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>flowtape report: {_e(name)}</title>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{CSS}</style></head><body>",
        f"<header><h1>flowtape report: {_e(name)}</h1><p>{_e(window)} · {len(t.nodes)} nodes · endpoints by {_e(p.by)}"
        f"{_e(_filter_text(p.filters))} · flowtape {_e(__version__)}</p></header>",
        "<main>",
        _cards(p),
        _topology_section(p),
        _latency_section(p),
        _journeys_section(p),
        _zones_section(p),
        _dns_section(p),
        _egress_section(p),
        _meta_section(p),
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _cards(p: Page) -> str:
    e = p.edges
    requests = int(e["requests"].sum()) if len(e) else 0
    errors = int(e["errors_5xx"].sum()) if len(e) else 0
    real_dns = p.dns.filter(~pl.col("search_path"))
    cross = p.zones.filter(pl.col("kind") == "cross_zone")
    cross_month = float(cross["cost_usd_month"].sum()) if len(cross) else 0.0
    lost = _lost_total(p.tape)
    cards = [
        ("requests", f"{requests:,}", False),
        ("5xx responses", f"{errors:,}", errors > 0),
        ("edges", f"{len(e):,}", False),
        ("DNS failures", f"{int(real_dns['failures'].sum()) if len(real_dns) else 0:,}", len(real_dns) > 0),
        ("external destinations", f"{len(p.egress):,}", False),
        ("cross-zone $/month", _usd(cross_month), cross_month > 0),
        ("lost events", f"{lost:,}", lost > 0),
    ]
    if ZONES in p.limits:  # a tape without zones cannot say what crossing them costs
        cards = [c for c in cards if c[0] != "cross-zone $/month"]
    items = "".join(f'<div class="card{" bad" if bad else ""}" data-card="{_e(k)}"><div class="v">{v}</div><div class="k">{_e(k)}</div></div>' for k, v, bad in cards)
    return f'<div class="cards">{items}</div>'


def _topology_section(p: Page) -> str:
    dot_text = graph.dot(p.edges, p.groups or None, p.group_by if p.groups else "")
    svg = graph.svg_inline(graph.render(dot_text, "svg")) if len(p.edges) else '<p class="empty">No edges in this tape.</p>'
    legend = "".join(f'<span><i style="background:{LEGEND_COLOURS[c]}"></i>{label}</span>' for c, label in (
        ("gray40", "errors below 0.5 %"), ("goldenrod", "from 0.5 %"), ("orange", "from 1 %"), ("red", "from 5 %")))
    rows = []
    for r in p.edges.head(25).iter_rows(named=True):
        cls = {"red": "bad", "orange": "warn"}.get(graph.edge_colour(r), "")
        rows.append((cls, {"client": r["client"], "server": r["server"]}, [
            _e(r["client"]), _e(r["server"]), _n(r["requests"]), _n(r["errors_5xx"]), _pct(r["error_rate"]), _ms(r["p50_ms"]), _ms(r["p99_ms"]),
            _n(r["connections"]), _bytes((r["bytes_c2s"] or 0) + (r["bytes_s2c"] or 0))]))
    table = _table(["client", "server", "requests", "5xx", "5xx rate", "p50", "p99", "connections", "bytes"], rows, numeric={2, 3, 4, 5, 6, 7, 8}, row_attr="edge")
    more = f'<p class="note">{len(p.edges) - 25} more edges: <code>flowtape report topology</code> lists them all.</p>' if len(p.edges) > 25 else ""
    return (f'<section id="topology"><h2>Service map</h2>'
            f'<p class="note">Who called whom{", grouped by " + _e("host" if KUBERNETES in p.limits and p.group_by == "namespace" else p.group_by) if p.groups else ""}. Edge width grows with the bytes carried; colour is the 5xx rate '
            f'(a refused or failed connection counts as an error). Labels: requests, error rate, p99 time to first response byte, connections.</p>'
            f'{_limit_note(p, KUBERNETES)}'
            f'<figure id="fig-topology">{svg}<figcaption class="legend">{legend}</figcaption></figure>'
            f"<h3>Edges</h3>{table}{more}</section>")


def _latency_section(p: Page) -> str:
    s = p.series
    if s.is_empty():
        body = f'<p class="empty">{_e(_sentence(p.limits[HTTP])) if HTTP in p.limits else "No HTTP exchanges with a response in this tape."}</p>'
    else:
        body = f'<figure id="fig-latency">{_latency_svg(s, p.bucket_s)}<figcaption>p50, p95 and p99 time to first response byte per {_bucket_text(p.bucket_s)} bucket; '\
               f"red marks are buckets with 5xx responses (count on the right axis).</figcaption></figure>"
    return (f'<section id="latency"><h2>Latency over time</h2><p class="note">The {s.select("client", "server").unique().height if len(s) else 0} edges with the most requests. '
            f"A step in one edge and not in its callers points at that edge's server.</p>{body}</section>")


def _journeys_section(p: Page) -> str:
    """The slowest request journeys as waterfalls; nothing for a tape whose calls link into no
    tree (no traceparent, sequence numbers, threads or goroutines tie a request to its calls)."""
    j = p.journeys
    if j.is_empty():
        return ""
    figs = []
    for (tid,), tr in j.group_by("trace_id", maintain_order=True):
        path = critical_path(tr)
        root = tr.filter(pl.col("parent_span_id").is_null()).row(0, named=True)
        step = slowest_step(tr, path)
        by = {r["span_id"]: r for r in tr.iter_rows(named=True)}
        explain = ""
        if step is not None:
            s = by[step[0]]
            explain = (f"; most of it in {_e(s['server'])} ({_ms(step[1])} of its own)" if s["kind"] == "server"
                       else f"; most of it between {_e(s['client'])} and {_e(s['server'])} ({_ms(step[1])})")
        figs.append(f'<figure class="journey" data-trace="{_e(tid)}">{waterfall_svg(tr, path)}<figcaption>trace <code>{_e(tid)}</code>: '
                    f'{_e(root["client"])} → {_e(root["server"])} {_e(root["method"] or "")} {_e(root["path"] or "")}, {_ms(root["duration_ms"])}, '
                    f'{tr.height} spans{explain}. Red: the critical path.</figcaption></figure>')
    return (f'<section id="journeys"><h2>Slowest request journeys</h2><p class="note">The {len(figs)} slowest requests that made further calls, '
            f'each call placed in time under the request that made it (<code>flowtape report traces --trace-id ID</code> prints one). '
            f'The critical path is what the request waited for last at each step.</p>{"".join(figs)}</section>')


def _zones_section(p: Page) -> str:
    z = p.zones
    if ZONES in p.limits:
        return (f'<section id="zones"><h2>Zone pairs and cost</h2><p class="empty" data-limit="zones">Zones are not known: {_e(p.limits[ZONES])}. '
                f'Internet egress and its cost are under External destinations.</p></section>')
    if z.is_empty():
        return '<section id="zones"><h2>Zone pairs and cost</h2><p class="empty">No flows in this tape.</p></section>'
    fig = f'<figure id="fig-zones">{_zone_matrix_svg(z)}<figcaption>Flow bytes from zone (rows) to zone (columns); cells show bytes and, for paid pairs, the cost per 30 days at this rate.</figcaption></figure>'
    rows = []
    for r in z.iter_rows(named=True):
        cls = "warn" if r["kind"] in ("cross_zone", "cross_region", "internet_egress") else ""
        rows.append((cls, {"src": r["src_zone"], "dst": r["dst_zone"], "bytes": r["bytes"]}, [_e(r["src_zone"]), _e(r["dst_zone"]), _e(r["kind"]), _bytes(r["bytes"]),
                                                                                          _n(r["packets"]), _usd(r["cost_usd_month"])]))
    table = _table(["from", "to", "kind", "bytes", "packets", "cost / 30 days"], rows, numeric={3, 4, 5}, row_attr="pair")
    paid = z.filter(pl.col("kind").is_in(["cross_zone", "cross_region", "internet_egress"]))
    total = float(paid["cost_usd_month"].sum()) if len(paid) else 0.0
    regions = ""
    if p.regions.filter(pl.col("kind") == "cross_region").height:
        regions = '<p class="note">Traffic crosses regions: see <code>flowtape report traffic</code> for region pairs.</p>'
    return (f'<section id="zones"><h2>Zone pairs and cost</h2><p class="note">Paid traffic (cross-zone, cross-region, internet egress) at this rate costs '
            f'<b data-total-month="{total:.6f}">{_usd(total)}</b> per 30 days. Prices are USD per GB (10<sup>9</sup> bytes); see <code>--prices</code>.</p>'
            f'<div class="grid2">{fig}<div>{table}</div></div>{regions}</section>')


def _dns_section(p: Page) -> str:
    d = p.dns
    real = d.filter(~pl.col("search_path"))
    noise = d.filter(pl.col("search_path"))
    rows = []
    for r in real.head(30).iter_rows(named=True):
        cls = "bad" if r["rcode_name"] in ("SERVFAIL", "NO ANSWER") else ""
        rows.append((cls, {"qname": r["qname"], "rcode": r["rcode_name"]}, [_e(r["qname"]), _e(r["rcode_name"]), _n(r["failures"]), _e(", ".join(r["top_clients"] or [])),
                                                                            _ts_dt(r["first_seen"]), _ts_dt(r["last_seen"])]))
    table = _table(["name", "rcode", "failures", "clients", "first", "last"], rows, numeric={2}, row_attr="dns") if rows else '<p class="empty">No failed lookups.</p>'
    more = f'<p class="note">{real.height - 30} more failing names: <code>flowtape report dns</code>.</p>' if real.height > 30 else ""
    n_noise = int(noise["failures"].sum()) if len(noise) else 0
    return (f'<section id="dns"><h2>DNS failures</h2><p class="note">Failed lookups (any rcode other than NOERROR, or no answer), busiest first. '
            f'Not shown: <span data-search-path="{n_noise}">{n_noise:,}</span> NXDOMAIN answers to search-path expansions that went on to resolve (expected noise of ndots).</p>'
            f"{table}{more}</section>")


def _egress_section(p: Page) -> str:
    rows = []
    for r in p.egress.iter_rows(named=True):
        rows.append(("" if r["named"] else "warn", {"destination": r["destination"]}, [
            _e(r["destination"]), _bytes(r["bytes_out"]), _n(r["sources"]), _e(", ".join(r["top_sources"] or [])), _ts_dt(r["first_seen"]), _ts_dt(r["last_seen"]), _usd(r["cost_usd"])]))
    nothing = "No traffic to the internet." if KUBERNETES in p.limits else "No traffic left the cluster."
    table = _table(["destination", "bytes out", "source pods", "sources", "first", "last", "cost"], rows, numeric={1, 2, 6}, row_attr="egress") if rows else f'<p class="empty">{nothing}</p>'
    return (f'<section id="egress"><h2>External destinations</h2><p class="note">Where traffic left the cluster, named by the DNS name the cluster asked for '
            f"(an address nobody looked up is shown as is). A destination seen only in part of the window is worth a look.</p>{table}</section>")


def _meta_section(p: Page) -> str:
    t = p.tape
    m = t.manifest
    start, end = t.window
    zone_of = {r["name"]: r for r in p.nodes.iter_rows(named=True)}
    zoned = ZONES not in p.limits  # no zone or region columns of question marks
    node_rows = []
    for n in t.nodes:
        lost = m.get("lost", {}).get(n, {}) or {}
        lost_n = sum(int(v) for v in lost.values() if isinstance(v, (int, float)))
        z = zone_of.get(n, {})
        place = [_e(z.get("zone") or "?"), _e(z.get("region") or "?")] if zoned else []
        node_rows.append(("bad" if lost_n else "", {"node": n}, [_e(n), *place, _n(lost_n),
                                                                 _e(", ".join(f"{k} {v}" for k, v in lost.items() if v)) or "none"]))
    head = ["node", "zone", "region", "lost events", "lost by kind"] if zoned else ["node", "lost events", "lost by kind"]
    nodes = _table(head, node_rows, numeric={3} if zoned else {1}, row_attr="node")
    table_rows = [("", {"table": name}, [_e(name), _n(t.rows(name))]) for name in t.tables if t.rows(name)]
    tables = _table(["table", "rows"], table_rows, numeric={1}, row_attr="table")
    gaps = m.get("gaps") or []
    problems = "".join(f"<li>{_e(pr.severity)}: {_e(str(pr))}</li>" for pr in t.problems)
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in [
        ("tape", _e(str(t.path))), ("origin", _e(t.origin)), ("format", _e(m.get("format", "?"))), ("recorded by", _e(f"{m.get('tool', {}).get('name', '?')} {m.get('tool', {}).get('version', '')}")),
        ("window start", _ts(start)), ("window end", _ts(end)), ("duration", _duration(start, end)), ("complete", "yes" if m.get("complete") else "no (recorder stopped early)"),
        ("probes", _e(", ".join(sorted(m.get("probes", {}))) or "none")),
    ] + ([("Kubernetes watch gaps", _n(len(gaps)))] if KUBERNETES not in p.limits or gaps else []))
    return (f'<section id="metadata"><h2>Tape</h2><div class="grid2"><div><dl class="meta">{dl}</dl>'
            f'{"<h3>Problems</h3><ul>" + problems + "</ul>" if problems else ""}{tables}</div><div>{nodes}</div></div></section>')


# --- charts (matplotlib, SVG with text kept as text) -------------------------------------------------


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "flowtape", "font.family": "sans-serif",
                                "font.sans-serif": ["DejaVu Sans", "Helvetica", "Arial"], "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _svg_of(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return graph.svg_inline(buf.getvalue())


def _latency_svg(s: pl.DataFrame, bucket_s: int) -> str:
    plt = _mpl()
    pairs = s.select("client", "server").unique(maintain_order=True).rows()
    cols = 2 if len(pairs) > 1 else 1
    rows = math.ceil(len(pairs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 2.3 * rows), squeeze=False, sharex=True)
    most_5xx = max(int(s["errors_5xx"].max() or 0), 1)  # one 5xx scale for every panel: a burst stands out, a stray error does not
    for k, (c, sv) in enumerate(pairs):
        ax = axes[k // cols][k % cols]
        d = s.filter((pl.col("client") == c) & (pl.col("server") == sv)).sort("ts")
        x, ys = _bucket_segments([v.replace(tzinfo=None) for v in d["ts"].to_list()], bucket_s,
                                 [d["p50_ms"].to_list(), d["p95_ms"].to_list(), d["p99_ms"].to_list()])
        ax.fill_between(x, ys[0], ys[2], color="#2f5fb3", alpha=0.12, linewidth=0)
        ax.plot(x, ys[2], color="#2f5fb3", linewidth=1.0, label="p99")
        ax.plot(x, ys[1], color="#2f5fb3", linewidth=0.8, linestyle="--", label="p95")
        ax.plot(x, ys[0], color="#1d2330", linewidth=1.4, label="p50")
        ax.set_title(f"{c} → {sv}", loc="left", fontsize=10)
        ax.set_ylabel("ms")
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", color="#dde2ea", linewidth=0.6)
        errs = d.filter(pl.col("errors_5xx") > 0)
        if len(errs):
            ax2 = ax.twinx()
            ax2.bar([v.replace(tzinfo=None) for v in errs["ts"].to_list()], errs["errors_5xx"].to_list(), width=bucket_s / 86400 * 0.8, align="edge", color="#c0392b", alpha=0.55)
            ax2.set_ylabel("5xx", color="#c0392b")
            ax2.set_ylim(0, most_5xx * 2.5)
            ax2.spines["right"].set_visible(True)
        if k == 0:
            ax.legend(loc="upper right", fontsize=8, frameon=False, ncol=3)
    for k in range(len(pairs), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    import matplotlib.dates as mdates

    for ax in axes[-1]:
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S" if bucket_s < 60 else "%H:%M"))
        ax.set_xlabel("UTC")
    fig.tight_layout()
    return _svg_of(fig)


def _bucket_segments(x: list[dt.datetime], bucket_s: int, ys: list[list[float]]) -> tuple[list, list[list[float]]]:
    """Each bucket as a level line over its whole width, broken (NaN) where buckets have no
    requests: a step plot draws nothing for a last or lone bucket and bridges the gaps."""
    width = dt.timedelta(seconds=bucket_s)
    xs: list = []
    out: list[list[float]] = [[] for _ in ys]
    for i, t in enumerate(x):
        if i and t > x[i - 1] + width:
            xs.append(x[i - 1] + width)
            for o in out:
                o.append(math.nan)
        xs += [t, t + width]
        for o, y in zip(out, ys):
            v = math.nan if y[i] is None else y[i]
            o += [v, v]
    return xs, out


def _zone_matrix_svg(z: pl.DataFrame) -> str:
    plt = _mpl()
    srcs = sorted(set(z["src_zone"].to_list()) - {"internet"}) + (["internet"] if "internet" in z["src_zone"].to_list() else [])
    dsts = sorted(set(z["dst_zone"].to_list()) - {"internet"}) + (["internet"] if "internet" in z["dst_zone"].to_list() else [])
    cell = {(r["src_zone"], r["dst_zone"]): r for r in z.iter_rows(named=True)}
    import numpy as np

    m = np.full((len(srcs), len(dsts)), np.nan)
    for (a, b), r in cell.items():
        m[srcs.index(a), dsts.index(b)] = r["bytes"]
    fig, ax = plt.subplots(figsize=(1.45 * len(dsts) + 1.8, 0.8 * len(srcs) + 1.2))
    shown = np.log10(np.where(np.isnan(m), np.nan, np.maximum(m, 1)))
    ax.imshow(shown, cmap="Blues", aspect="auto", vmin=np.nanmin(shown) - 1 if np.isfinite(np.nanmin(shown)) else 0)
    for (a, b), r in cell.items():
        i, j = srcs.index(a), dsts.index(b)
        text = _bytes(r["bytes"])
        if r["kind"] in ("cross_zone", "cross_region", "internet_egress"):
            text += f"\n{_usd(r['cost_usd_month'])}/mo"
        dark = shown[i, j] > np.nanmax(shown) - 0.6
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "#1d2330")
    ax.set_xticks(range(len(dsts)), dsts, rotation=20, ha="right")
    ax.set_yticks(range(len(srcs)), srcs)
    ax.set_xlabel("to")
    ax.set_ylabel("from")
    for sp in ax.spines.values():
        sp.set_visible(False)
    fig.tight_layout()
    return _svg_of(fig)


# --- small formatters ----------------------------------------------------------------------------


def _table(head: list[str], rows: Iterable[tuple[str, dict[str, Any], list[str]]], numeric: set[int], row_attr: str) -> str:
    th = "".join(f'<th{" class=n" if i in numeric else ""}>{_e(h)}</th>' for i, h in enumerate(head))
    body = []
    for cls, attrs, cells in rows:
        data = "".join(f' data-{k}="{_e(str(v))}"' for k, v in attrs.items())
        tds = "".join(f'<td{" class=n" if i in numeric else ""}>{c}</td>' for i, c in enumerate(cells))
        body.append(f'<tr data-row="{row_attr}"{data}{f" class={cls}" if cls else ""}>{tds}</tr>')
    return f'<table data-table="{row_attr}"><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _e(s: Any) -> str:
    return html.escape("" if s is None else str(s), quote=True)


def _n(v: Any) -> str:
    return "" if v is None else f"{int(v):,}"


def _ms(v: float | None) -> str:
    return "" if v is None else human_duration(v / 1e3)


def _pct(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:.1%}" if v < 0.1 else f"{v:.0%}"


def _usd(v: float | None) -> str:
    return "" if v is None else human_usd(float(v))


def _bytes(v: int | None) -> str:
    return "" if v is None else human_bytes(v)


def _ts(ns: int | None) -> str:
    if ns is None:
        return "?"
    return dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ts_dt(v: dt.datetime | None) -> str:
    return "" if v is None else v.astimezone(dt.timezone.utc).strftime("%H:%M:%S")


def _duration(start: int | None, end: int | None) -> str:
    if start is None or end is None:
        return "?"
    s = round((end - start) / 1e9)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return " ".join(x for x in (f"{h} h" if h else "", f"{m} min" if m else "", f"{sec} s" if sec or not (h or m) else "") if x)


def _bucket_text(s: int) -> str:
    return f"{s} s" if s < 60 else f"{s // 60} min"


def _filter_text(f: Filters) -> str:
    parts = []
    if f.since:
        parts.append(f"since {f.since.isoformat()}")
    if f.until:
        parts.append(f"until {f.until.isoformat()}")
    if f.namespace:
        parts.append(f"namespace {f.namespace}")
    return (" · " + ", ".join(parts)) if parts else ""


def _limit_note(p: Page, key: str) -> str:
    """One line saying what the tape cannot tell, or nothing."""
    return f'<p class="note" data-limit="{key}">{_e(_sentence(p.limits[key]))}</p>' if key in p.limits else ""


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _lost_total(t: Tape) -> int:
    total = 0
    for counters in (t.manifest.get("lost") or {}).values():
        for v in (counters or {}).values():
            if isinstance(v, (int, float)):
                total += int(v)
    return total
