"""Renderers: a DataFrame (or a dict) to text for people and machines. No computing here."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import math
import re
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, TextIO

if TYPE_CHECKING:  # polars is imported where a frame is rendered: `flowtape record` (which imports
    import polars as pl  # Format through the CLI) never loads it (~18 MiB of the recorder's memory)


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


def _timestamps_as_text(df: pl.DataFrame, ms: bool = False) -> pl.DataFrame:
    """Datetimes as ISO 8601 text with their full precision (Python datetimes stop at µs), or
    to the millisecond (`ms`, for people)."""
    import polars as pl

    exprs = []
    for name, dtype in df.schema.items():
        if isinstance(dtype, pl.Datetime):
            digits = 3 if ms else {"ns": 9, "us": 6, "ms": 3}[dtype.time_unit or "us"]
            exprs.append(pl.col(name).dt.convert_time_zone("UTC").dt.to_string(f"%Y-%m-%dT%H:%M:%S%.{digits}fZ") if dtype.time_zone else pl.col(name).dt.to_string(f"%Y-%m-%dT%H:%M:%S%.{digits}f"))
    return df.with_columns(exprs) if exprs else df


def render_frame(df: pl.DataFrame, fmt: Format | str, out: TextIO, *, title: str | None = None, max_rows: int | None = None,
                 human: bool = True, width: int | None = None) -> None:
    """Write `df` to `out` as a terminal table, CSV, JSON (array of objects) or Markdown.

    CSV, JSON and Markdown are exact. The terminal table is for people (with `human`): units
    in the values (see human_cell) and, when it is wider than the terminal (`width`, default:
    the terminal's), columns left out by DROP_ORDER with a note naming them.
    """
    fmt = Format(fmt)
    df = _timestamps_as_text(df, ms=human and fmt is Format.table)
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
        _table(shown, out, title, human, width or _width(out))
    if len(shown) < len(df):
        out.write(f"… {len(df) - len(shown)} more rows (use --format csv or json for all)\n")


# --- the terminal table ----------------------------------------------------------------------

UNITS = (
    # (pattern over a column name, unit of its values); the first match wins
    (re.compile(r"(^|_)usd(_|$)"), "usd"),
    (re.compile(r"(^|_)rate$"), "rate"),
    (re.compile(r"(^bytes$|^bytes_|_bytes$|_bytes_)"), "bytes"),
    (re.compile(r"_ms$"), "ms"),
    (re.compile(r"_us$"), "us"),
    (re.compile(r"_ns$"), "ns"),
    (re.compile(r"(_s|^seconds)$"), "s"),
)
"""Units read from column names (the reports' naming convention: bytes, *_ms, *_rate, cost_usd)."""

Droppable = Callable[[str, list[str], bool], bool]
"""(column name, every column's name, whether it is numeric) -> whether this step leaves it out."""


def _named(pattern: str) -> Droppable:
    rx = re.compile(pattern)
    return lambda name, _columns, _numeric: bool(rx.search(name))


def _split_of_total(name: str, columns: list[str], _numeric: bool) -> bool:
    """bytes_in/bytes_out beside their bytes_total, or a connection's bytes each way."""
    return bool(re.search(r"_(c2s|s2c)$|^(request|response)_bytes$", name)) or (
        bool(re.fullmatch(r"(bytes|packets)_(in|out)", name)) and f"{name.split('_')[0]}_total" in columns)


DROP_ORDER: tuple[tuple[str, Droppable], ...] = (
    ("p95", _named(r"(^|_)p9[05](_|$)")),                    # p50 and p99 bracket it
    ("packet counts", _named(r"packets")),                   # bytes say the volume
    ("byte splits", _split_of_total),                        # their total stays
    ("first and last seen", _named(r"^(first|last)_seen$")),
    ("flags", _named(r"^(named|search_path)$")),
    ("failure details", _named(r"failed|unanswered|retransmit|errors_5xx")),  # the rate stays
    ("connect time and srtt", _named(r"^(connect|srtt)_p99|^srtt_")),
    ("max", _named(r"(^|_)max(_|$)")),
    ("other numbers", lambda name, _columns, numeric: numeric and not MAIN.search(name) and not re.search(r"(^|_)p(50|99)(_|$)", name)),
    ("p50", _named(r"(^|_)p50(_|$)")),
    ("p99", _named(r"(^|_)p99(_|$)")),
)
"""Which columns a table too wide for the terminal leaves out first, in this order (within a
step, from the right); then the main numbers (MAIN) and the names and other text, from the
right. The first column is always shown and no value is ever cut."""

MAIN = re.compile(r"^(requests|error_rate|bytes|bytes_total|bytes_out|failures|lookups|slow_lookups|cost_usd.*)$")
"""What a report is about: requests and their error rate, bytes, failures, lookups, cost."""


def unit_of(name: str) -> str | None:
    for pattern, unit in UNITS:
        if pattern.search(name):
            return unit
    return None


def human_header(name: str) -> str:
    """A column's name in the terminal table: the unit is in the values (`p50_ms` -> `p50`,
    `cost_usd_month` -> `cost_month`)."""
    h = re.sub(r"_usd(?=_|$)", "", name)
    h = re.sub(r"_(ms|us|ns)$", "", h)
    return h or name


def human_cell(v: Any, unit: str | None) -> str:
    """One value for people: bytes in decimal units (kB, MB, GB, as the HTML page), durations
    with three significant digits and a unit, rates as percentages, money in dollars."""
    if v is None:
        return ""
    if isinstance(v, float) and math.isnan(v):
        return ""
    if isinstance(v, (list, tuple)):
        return ", ".join(_cell(x) for x in v)
    if isinstance(v, (int, float, decimal.Decimal)) and not isinstance(v, bool):
        if unit == "bytes":
            return human_bytes(v)
        if unit == "usd":
            return human_usd(float(v))
        if unit == "rate":
            return human_percent(float(v))
        if unit in ("ms", "us", "ns", "s"):
            return human_duration(float(v) * {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[unit])
    return _cell(v)


def human_bytes(v: float | int) -> str:
    """Decimal units: 2149551 -> `2.1 MB` (1 kB = 1000 bytes, as traffic prices count)."""
    v = int(v)
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(v) >= size:
            return f"{v / size:.1f} {unit}"
    return f"{v} B"


def _sig3(x: float) -> str:
    """`x` with three significant digits, in plain decimals (0.9997 -> 1.00, 17.3744 -> 17.4)."""
    if x == 0:
        return "0"
    r = abs(float(f"{x:.3g}"))
    return f"{x:.{max(2 - math.floor(math.log10(r)), 0)}f}"


def human_duration(seconds: float) -> str:
    """Three significant digits and a unit: 0.0173744 -> `17.4 ms`, 6.8e-05 -> `68.0 µs`."""
    a = abs(seconds)
    if a == 0:
        return "0 s"
    if a < 60:
        for unit, size in (("ns", 1e-9), ("µs", 1e-6), ("ms", 1e-3), ("s", 1.0)):
            if a / size < 999.5 or unit == "s":  # 999.7 µs rounds to 1000: that is 1.00 ms
                return f"{_sig3(seconds / size)} {unit}"
    if a < 3600:
        return f"{_sig3(seconds / 60)} min"
    return f"{_sig3(seconds / 3600)} h"


def human_percent(v: float) -> str:
    """A rate as a percentage: 0.00191361 -> `0.19 %`, 0.25 -> `25 %`; a rate above zero never
    shows as zero."""
    if v == 0:
        return "0 %"
    p = v * 100
    if abs(p) < 0.01:
        return "<0.01 %"
    return f"{_sig3(p) if abs(p) < 100 else f'{p:.0f}'} %"


def human_usd(v: float) -> str:
    """Money: `$0.59`, `$1,234.50`; `<$0.01` above zero, `$0` for nothing."""
    if math.isnan(v):
        return ""
    if v == 0:
        return "$0"
    if abs(v) < 0.005:
        return "<$0.01"
    return f"${v:,.2f}"


def _table(df: pl.DataFrame, out: TextIO, title: str | None, human: bool, width: int) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    units = [unit_of(c) if human else None for c in df.columns]
    heads = [human_header(c) if human and u else c for c, u in zip(df.columns, units)]
    cells = [[human_cell(v, u) if human else _cell(v) for v, u in zip(row, units)] for row in df.iter_rows()]
    need = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(heads)]
    keep = _fit(df.columns, [d.is_numeric() for d in df.dtypes], need, width)
    dropped = [heads[i] for i in range(len(heads)) if i not in keep]
    t = Table(title=title, show_lines=False, header_style="bold")
    for i in keep:
        t.add_column(heads[i], justify="right" if df.dtypes[i].is_numeric() else "left", no_wrap=True)
    for r in cells:
        t.add_row(*(escape(r[i]) for i in keep))  # cells are data, never rich markup
    total = 1 + sum(need[i] + 3 for i in keep)
    Console(file=out, width=max(width, total), highlight=False, soft_wrap=False).print(t)
    if dropped:
        out.write(f"(not shown in {width} columns: {', '.join(dropped)}; -f csv has them)\n")


def _fit(columns: list[str], numeric: list[bool], need: list[int], width: int) -> list[int]:
    """Indexes of the columns shown in `width` characters (a rich table spends 3 per column
    and 1 more): DROP_ORDER first, then from the right; never the first column."""
    keep = list(range(len(columns)))

    def total() -> int:
        return 1 + sum(need[i] + 3 for i in keep)

    order: list[int] = []
    for _, droppable in DROP_ORDER:
        order += [i for i in reversed(range(len(columns))) if i not in order and droppable(columns[i], columns, numeric[i])]
    order += [i for i in reversed(range(len(columns))) if i not in order]
    for i in order:
        if total() <= width:
            break
        if i in keep and i != 0 and len(keep) > 1:
            keep.remove(i)
    return keep


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
    """The terminal's width ($COLUMNS first); 200 when writing to a file or a pipe."""
    import os
    import shutil

    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    try:
        if out.isatty():
            return shutil.get_terminal_size().columns
    except (AttributeError, ValueError, io.UnsupportedOperation):
        pass
    return 200
