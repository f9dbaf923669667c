"""Graph renderers for edge tables (topology): Mermaid, Graphviz DOT, and SVG/PNG through `dot`.

No computing here: `edges` is a topology DataFrame (client, server, bytes_c2s, bytes_s2c,
requests, error_rate, p99_ms, connections, failed_connections), and `groups` maps an endpoint
name to the cluster it is drawn in (a namespace or a zone; see analyze.reports.placement).

Encoding: edge width grows with the bytes the edge carried (square-root scale, 1..8 pt, the
busiest edge 8); edge colour is its error rate: gray below 0.5 %, goldenrod from 0.5 %, orange
from 1 %, red from 5 % (5xx share of requests; a failed TCP connection counts as an error).
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess

import polars as pl

from ...errors import Unsupported
from .formats import human_duration

ERROR_COLOURS = ((0.05, "red"), (0.01, "orange"), (0.005, "goldenrod"))
"""(lower bound of the error rate, colour), highest first; an edge below the last is gray40."""

NO_ERROR_COLOUR = "gray40"


def _id(name: str, ids: dict[str, str]) -> str:
    if name not in ids:
        ids[name] = f"n{len(ids)}"
    return ids[name]


def _label(row: dict) -> str:
    parts = []
    if row.get("requests"):
        parts.append(f"{row['requests']} req")
        if row.get("error_rate"):
            rate = row["error_rate"]
            parts.append(f"{rate:.0%} err" if rate >= 0.01 else f"{rate:.1%} err")
        if row.get("p99_ms") is not None:
            parts.append(f"p99 {human_duration(row['p99_ms'] / 1e3)}")
    if row.get("connections"):
        parts.append(f"{row['connections']} conn")
    return ", ".join(parts)


def mermaid(edges: pl.DataFrame) -> str:
    """A Mermaid flowchart (left to right) of client -> server edges."""
    ids: dict[str, str] = {}
    lines = ["flowchart LR"]
    for row in edges.iter_rows(named=True):
        a, b = _id(row["client"], ids), _id(row["server"], ids)
        lines.append(f'    {a} -->|"{_label(row)}"| {b}')
    for name, i in ids.items():
        lines.insert(1, f'    {i}["{_escape(name)}"]')
    return "\n".join(lines) + "\n"


def edge_colour(row: dict) -> str:
    """The colour of an edge by its error rate (5xx share; failed connections count)."""
    rate = row.get("error_rate") or 0.0
    if row.get("failed_connections") and row.get("connections"):
        rate = max(rate, row["failed_connections"] / row["connections"])
    for bound, colour in ERROR_COLOURS:
        if rate >= bound:
            return colour
    return NO_ERROR_COLOUR


def edge_width(nbytes: int, most: int) -> float:
    """Pen width 1..8 by bytes, on a square-root scale relative to the busiest edge (area ~ bytes)."""
    if nbytes <= 0 or most <= 0:
        return 1.0
    return 1.0 + 7.0 * math.sqrt(min(nbytes, most) / most)


def _short(name: str, group: str | None) -> str:
    """Inside its cluster, `shop/api` is drawn as `api`, `external:x.io` as `x.io`, `node:n1` as `n1`."""
    if group and name.startswith(group + "/"):
        return name[len(group) + 1 :]
    for prefix, g in (("external:", "internet"), ("node:", "nodes")):
        if group == g and name.startswith(prefix):
            return name[len(prefix) :]
    return name


def dot(edges: pl.DataFrame, groups: dict[str, str] | None = None, group_title: str = "") -> str:
    """Graphviz DOT: edge width by bytes, edge colour by error rate, nodes in clusters by `groups`.

    Without `groups` every node is top-level and labelled with its full name.
    """
    ids: dict[str, str] = {}
    rows = list(edges.iter_rows(named=True))
    most = max([(r["bytes_c2s"] or 0) + (r["bytes_s2c"] or 0) for r in rows] + [1])
    lines = ["digraph topology {", "  rankdir=LR;", '  graph [fontname="Helvetica", fontsize=14, nodesep=0.25, ranksep=0.7];',
             '  node [shape=box, style="rounded,filled", fillcolor="#f4f6fb", color="#5b6b8c", fontname="Helvetica", fontsize=14];',
             '  edge [fontname="Helvetica", fontsize=11, fontcolor="#333333", arrowsize=0.7];']
    body = []
    for row in rows:
        a, b = _id(row["client"], ids), _id(row["server"], ids)
        nbytes = (row["bytes_c2s"] or 0) + (row["bytes_s2c"] or 0)
        tip = f"{row['client']} -> {row['server']}: {nbytes} bytes"
        body.append(f'  {a} -> {b} [label="{_escape(_label(row))}", penwidth={edge_width(nbytes, most):.2f}, color={edge_colour(row)}, tooltip="{_escape(tip)}"];')
    groups = groups or {}
    clusters: dict[str, list[str]] = {}
    for name in ids:
        g = groups.get(name)
        if g is not None:
            clusters.setdefault(g, []).append(name)
    for k, (g, names) in enumerate(sorted(clusters.items())):
        lines.append(f"  subgraph cluster_{k} {{")
        # a host outside Kubernetes stands where a namespace would: say which it is
        title = "host " + g[len("host:"):] if g.startswith("host:") else f"{group_title} {g}".strip()
        lines.append(f'    label="{_escape(title)}"; style="rounded,filled"; fillcolor="#fbfbf4"; color="#b9b38a"; fontcolor="#6b6440";')
        for name in names:
            lines.append(f'    {ids[name]} [label="{_escape(_short(name, g))}", tooltip="{_escape(name)}"];')
        lines.append("  }")
    for name, i in ids.items():
        if groups.get(name) is None:
            lines.append(f'  {i} [label="{_escape(name)}", tooltip="{_escape(name)}"];')
    return "\n".join(lines + body + ["}"]) + "\n"


def render(dot_text: str, fmt: str = "svg") -> bytes:
    """Lay out DOT text with Graphviz's `dot` and return SVG or PNG bytes.

    Unsupported (exit 7) when the `dot` binary is missing; a layout failure is a bug.
    """
    if fmt not in ("svg", "png"):
        raise ValueError(f"format must be svg or png, not {fmt!r}")
    exe = shutil.which("dot")
    if exe is None:
        raise Unsupported("graphviz's `dot` binary not found on PATH (Debian: apt-get install graphviz)")
    proc = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, timeout=120)
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"dot -T{fmt} failed: {msg[0] if msg else proc.returncode}")
    return proc.stdout


def svg_inline(svg: bytes | str) -> str:
    """An SVG document as an element to put inside HTML: no XML prolog, DOCTYPE, comments or
    namespace declarations (the HTML parser knows <svg>)."""
    text = svg.decode() if isinstance(svg, bytes) else svg
    text = re.sub(r"<\?xml[^>]*\?>", "", text)
    text = re.sub(r"<!DOCTYPE[^>]*>", "", text, flags=re.S)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)
    return text.strip()


def _escape(s: str) -> str:
    return re.sub(r'["\\]', "'", s)
