"""dns rows (DnsPairer's dicts) as one Arrow table, a column at a time.

The writer's generic path for a list of row dicts (conform's Polars dict reader) cost the live
recorder more than decoding the messages did: at 20k DNS queries/s, a fifth of the recorder's CPU
went to Polars inferring and building the nested `answers` structs (bench_l7 --dns, py-spy).
pyarrow builds the same columns from plain value lists several times faster. Anything that does
not fit the schema (a value out of range, a null in a required column, a key that is not a
column) takes conform's row path instead, which names the column: the result is the same table.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

import pyarrow as pa

from ...schema import table

_SCHEMA = table("dns").arrow_schema
_NAMES = tuple(_SCHEMA.names)
_REQUIRED = tuple(i for i, f in enumerate(_SCHEMA) if not f.nullable)
_GET = itemgetter(*_NAMES)


def dns_table(rows: list[dict[str, Any]] | pa.Table) -> pa.Table:
    """`rows` (every column of `dns` but `node`, as DnsPairer makes them) as a table of the dns schema."""
    from ...conform import conform

    if isinstance(rows, pa.Table):  # already a table (L7Decoder.take_rows: capture/decode/dns_columns.py)
        return rows
    if not rows:
        return _SCHEMA.empty_table()
    try:
        columns = zip(*map(_GET, rows))  # KeyError: a row without some column
        arrays = [pa.array(values, f.type) for values, f in zip(columns, _SCHEMA)]
        if any(arrays[i].null_count for i in _REQUIRED) or any(len(r) != len(_NAMES) for r in rows):
            raise ValueError("not a plain dns row")
        return pa.Table.from_arrays(arrays, schema=_SCHEMA)
    except (KeyError, ValueError, TypeError, OverflowError, pa.ArrowInvalid, pa.ArrowTypeError):
        return conform(table("dns"), rows)
