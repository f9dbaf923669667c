"""Request journeys for people: each trace as an indented tree with a text waterfall, its
critical path marked, and the same as an SVG picture for the HTML report. No computing here
beyond layout: the spans and the critical path come from analyze.reports.traces."""

from __future__ import annotations

import html
from typing import Callable, TextIO

import polars as pl

BAR = 32
"""Width of the text waterfall, characters."""


def _ordered(spans: pl.DataFrame) -> list[tuple[int, dict]]:
    """(depth, span) in tree order: each span followed by its children by start time."""
    rows = list(spans.iter_rows(named=True))
    ids = {r["span_id"] for r in rows}
    kids: dict[str | None, list[dict]] = {}
    for r in rows:
        kids.setdefault(r["parent_span_id"] if r["parent_span_id"] in ids else None, []).append(r)
    out: list[tuple[int, dict]] = []

    def walk(parent: str | None, depth: int) -> None:
        for r in sorted(kids.get(parent, []), key=lambda r: (r["start"], r["kind"] != "client", r["span_id"])):
            if any(r is x for _, x in out):
                continue
            out.append((depth, r))
            walk(r["span_id"], depth + 1)

    walk(None, 0)
    return out


def _span_ms(r: dict, t0) -> tuple[float, float]:
    s = (r["start"] - t0).total_seconds() * 1e3
    return s, s + (r["duration_ms"] or 0.0)


def _ms_text(v: float | None) -> str:
    if v is None:
        return "—"
    if v >= 1000:
        return f"{v / 1000:.3g} s"
    return f"{v:.3g} ms"


def tree_text(spans: pl.DataFrame, critical: Callable[[pl.DataFrame], list[str]], slowest: Callable[[pl.DataFrame, list[str]], tuple[str, float] | None],
              out: TextIO, note: str | None = None) -> None:
    """Every trace of `spans` as a tree: duration, a bar placing the span in its trace, kind, client
    -> server, method path, status, link source; spans on the critical path marked `*`, and
    under each trace the line naming which call explains its latency."""
    if spans.is_empty():
        out.write("traces: none\n")
        return
    for (tid,), tr in spans.group_by("trace_id", maintain_order=True):
        order = _ordered(tr)
        t0 = min(r["start"] for _, r in order)
        ends = [_span_ms(r, t0)[1] for _, r in order]
        total = max(ends) or 1.0
        path = critical(tr)
        on = set(path)
        root = order[0][1]
        out.write(f"trace {tid}  {_ms_text(root['duration_ms'])}  {len(order)} spans  {root['start'].isoformat().replace('+00:00', 'Z')}\n")
        for depth, r in order:
            s, e = _span_ms(r, t0)
            a, b = int(s / total * BAR), max(int(s / total * BAR) + 1, int(round(e / total * BAR)))
            bar = " " * a + "█" * (min(b, BAR) - a) + " " * (BAR - min(b, BAR))
            mark = "*" if r["span_id"] in on else " "
            status = "" if r["status"] is None else str(r["status"])
            src = f"  [{r['source']}]" if r["source"] else ""
            out.write(f"{mark} {_ms_text(r['duration_ms']):>9} |{bar}| {'  ' * depth}{r['kind']:<6} {r['client']} -> {r['server']}  "
                      f"{r['method'] or ''} {r['path'] or ''}  {status}{src}\n")
        step = slowest(tr, path)
        if len(path) > 1 and step is not None:
            by = {r["span_id"]: r for _, r in order}
            s = by[step[0]]
            where = f"in {s['server']} (its own time)" if s["kind"] == "server" else f"between {s['client']} and {s['server']} (the network or queues)"
            out.write(f"  critical path: {' > '.join(by[p]['server'] for p in path if by[p]['kind'] == 'client')}; "
                      f"most of it {where}: {_ms_text(step[1])} of {_ms_text(root['duration_ms'])}, {s['method'] or ''} {s['path'] or ''}\n")
        out.write("\n")
    if note:
        out.write(f"note: {note}\n")


def waterfall_svg(spans: pl.DataFrame, critical: list[str], width: int = 860) -> str:
    """One trace as an SVG waterfall: a row per span in tree order, a bar over its time, the
    critical path in a strong colour. Plain SVG text (no script), for the self-contained page."""
    order = _ordered(spans)
    if not order:
        return ""
    t0 = min(r["start"] for _, r in order)
    total = max(_span_ms(r, t0)[1] for _, r in order) or 1.0
    label_w, row_h, pad = 330, 18, 4
    plot_w = width - label_w - 70
    on = set(critical)
    rows = []
    for i, (depth, r) in enumerate(order):
        s, e = _span_ms(r, t0)
        y = pad + i * row_h
        x = label_w + s / total * plot_w
        w = max(1.5, (e - s) / total * plot_w)
        colour = "#c0392b" if r["span_id"] in on else ("#4a78b5" if r["kind"] == "server" else "#9bb7de")
        label = f"{'  ' * depth}{r['kind']} {r['client']} → {r['server']} {r['method'] or ''} {r['path'] or ''}"
        title = (f"{r['kind']} {r['client']} → {r['server']} {r['method'] or ''} {r['path'] or ''} status {r['status']} "
                 f"{_ms_text(r['duration_ms'])} link: {r['source'] or 'root'}")
        rows.append(f'<g><title>{html.escape(title)}</title>'
                    f'<text x="{4 + depth * 10}" y="{y + 13}" font-size="11" xml:space="preserve">{html.escape(label if len(label) <= 52 else label[:51] + "…")}</text>'
                    f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" fill="{colour}"/>'
                    f'<text x="{x + w + 4:.1f}" y="{y + 13}" font-size="10" fill="#555">{html.escape(_ms_text(r["duration_ms"]))}</text></g>')
    h = pad * 2 + len(order) * row_h + 16
    axis = (f'<line x1="{label_w}" y1="{h - 16}" x2="{label_w + plot_w}" y2="{h - 16}" stroke="#999"/>'
            f'<text x="{label_w}" y="{h - 3}" font-size="10" fill="#555">0</text>'
            f'<text x="{label_w + plot_w}" y="{h - 3}" font-size="10" fill="#555" text-anchor="end">{html.escape(_ms_text(total))}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" viewBox="0 0 {width} {h}" '
            f'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" role="img">{"".join(rows)}{axis}</svg>')
