"""Renderers: a DataFrame (or a dict) to text for people and machines. No computing here."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import math
from enum import Enum
from typing import Any, TextIO

import polars as pl


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    markdown = "markdown"


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        return f"{v:.6g}" if abs(v) < 1e15 else f"{v:.0f}"
    if isinstance(v, dt.datetime):
        return v.isoformat().replace("+00:00", "Z")
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=str, separators=(",", ":"))
    return str(v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, dt.datetime):
        return v.isoformat().replace("+00:00", "Z")
    if isinstance(v, (dt.date, dt.time, dt.timedelta)):
        return str(v)
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    return v


def records(df: pl.DataFrame) -> list[dict[str, Any]]:
    return [_jsonable(r) for r in df.iter_rows(named=True)]


def _timestamps_as_text(df: pl.DataFrame) -> pl.DataFrame:
    """Datetimes as ISO 8601 text with their full precision (Python datetimes stop at µs)."""
    exprs = []
    for name, dtype in df.schema.items():
        if isinstance(dtype, pl.Datetime):
            digits = {"ns": 9, "us": 6, "ms": 3}[dtype.time_unit or "us"]
            exprs.append(pl.col(name).dt.convert_time_zone("UTC").dt.to_string(f"%Y-%m-%dT%H:%M:%S%.{digits}fZ") if dtype.time_zone else pl.col(name).dt.to_string(f"%Y-%m-%dT%H:%M:%S%.{digits}f"))
    return df.with_columns(exprs) if exprs else df


def render_frame(df: pl.DataFrame, fmt: Format | str, out: TextIO, *, title: str | None = None, max_rows: int | None = None) -> None:
    """Write `df` to `out` as a terminal table, CSV, JSON (array of objects) or Markdown."""
    fmt = Format(fmt)
    df = _timestamps_as_text(df)
    if fmt is Format.json:
        json.dump(records(df), out, indent=1)
        out.write("\n")
        return
    if fmt is Format.csv:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(df.columns)
        for row in df.iter_rows():
            w.writerow([_cell(v) for v in row])
        return
    shown = df if max_rows is None else df.head(max_rows)
    if fmt is Format.markdown:
        if title:
            out.write(f"### {title}\n\n")
        out.write("| " + " | ".join(df.columns) + " |\n")
        out.write("|" + "|".join("---" for _ in df.columns) + "|\n")
        for row in shown.iter_rows():
            out.write("| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |\n")
        out.write("\n")
    else:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        t = Table(title=title, show_lines=False, header_style="bold")
        for name, dtype in zip(df.columns, df.dtypes):
            t.add_column(name, justify="right" if dtype.is_numeric() else "left", overflow="fold")
        for row in shown.iter_rows():
            t.add_row(*(escape(_cell(v)) for v in row))  # cells are data, never rich markup
        Console(file=out, width=_width(out), highlight=False, soft_wrap=False).print(t)
    if len(shown) < len(df):
        out.write(f"… {len(df) - len(shown)} more rows (use --format csv or json for all)\n")


def render_kv(data: dict[str, Any], fmt: Format | str, out: TextIO) -> None:
    """Write a nested dict: JSON as is, other formats as indented `key: value` lines."""
    fmt = Format(fmt)
    if fmt is Format.json:
        json.dump(_jsonable(data), out, indent=1)
        out.write("\n")
        return

    def walk(d: dict[str, Any], indent: int) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                out.write(f"{'  ' * indent}{k}:\n")
                walk(v, indent + 1)
            else:
                out.write(f"{'  ' * indent}{k}: {_cell(v)}\n")

    walk(data, 0)


def _width(out: TextIO) -> int:
    import shutil

    try:
        if out.isatty():
            return shutil.get_terminal_size().columns
    except (AttributeError, ValueError, io.UnsupportedOperation):
        pass
    return 200
