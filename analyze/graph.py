"""Graph renderers for edge tables (topology): Mermaid and Graphviz DOT. No computing here."""

from __future__ import annotations

import re

import polars as pl


def _id(name: str, ids: dict[str, str]) -> str:
    if name not in ids:
        ids[name] = f"n{len(ids)}"
    return ids[name]


def _label(row: dict) -> str:
    parts = []
    if row.get("requests"):
        parts.append(f"{row['requests']} req")
        if row.get("error_rate"):
            parts.append(f"{row['error_rate']:.0%} err")
        if row.get("p99_ms") is not None:
            parts.append(f"p99 {row['p99_ms']:.0f} ms")
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


def dot(edges: pl.DataFrame) -> str:
    """Graphviz DOT: edge width by bytes, edge colour red when errors."""
    ids: dict[str, str] = {}
    total = max([(r["bytes_c2s"] or 0) + (r["bytes_s2c"] or 0) for r in edges.iter_rows(named=True)] + [1])
    lines = ["digraph topology {", "  rankdir=LR;", '  node [shape=box, style=rounded, fontname="Helvetica"];']
    body = []
    for row in edges.iter_rows(named=True):
        a, b = _id(row["client"], ids), _id(row["server"], ids)
        width = 1 + 4 * ((row["bytes_c2s"] or 0) + (row["bytes_s2c"] or 0)) / total
        colour = "red" if (row.get("error_rate") or 0) > 0.01 or row.get("failed_connections") else "gray30"
        body.append(f'  {a} -> {b} [label="{_label(row)}", penwidth={width:.2f}, color={colour}];')
    for name, i in ids.items():
        lines.append(f'  {i} [label="{_escape(name)}"];')
    return "\n".join(lines + body + ["}"]) + "\n"


def _escape(s: str) -> str:
    return re.sub(r'["\\]', "'", s)
