"""Turn what producers hand the writer into Arrow tables of exactly a table's schema.

Producers may pass an Arrow table or record batch, a Polars DataFrame, a dict of columns or
a list of row dicts. Anything that does not fit is rejected with a SchemaError naming the
table and the column, before a byte reaches the tape.
"""

from __future__ import annotations

import sys
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .errors import SchemaError
from .schema import PARTITION_KEY, Table

Data = Any  # pa.Table | pa.RecordBatch | polars.DataFrame | dict[str, list] | list[dict]


def _fail(table: Table, column: str, why: str) -> SchemaError:
    return SchemaError(f"table {table.name!r}, column {column!r}: {why}")


def _columns_from_rows(table: Table, rows: list[dict]) -> dict[str, list]:
    known = set(table.column_names)
    names = [n for n in table.column_names if n != PARTITION_KEY or any(PARTITION_KEY in r for r in rows)]
    cols: dict[str, list] = {name: [] for name in names}
    for i, row in enumerate(rows):
        extra = row.keys() - known
        if extra:
            raise _fail(table, sorted(extra)[0], f"not a column of this table (row {i})")
        for name in names:
            cols[name].append(row.get(name))
    return cols


def _rows_fast(table: Table, rows: list[dict]) -> pa.Table | None:
    """Rows -> Arrow without a Python list per column: Polars' Rust-side dict reader (~2x faster
    than column lists for wide rows) in a process that has Polars loaded anyway, pyarrow's
    `from_pylist` otherwise. The recorder never imports Polars (it would hold ~18 MiB of its
    memory for a few hundred rows a second of tls, flows and connections). None when a row has a
    key that is not a column (or the partition key, checked below) or a value that does not fit,
    so the slow path can name it."""
    if not rows or (set().union(*rows) - set(table.arrow_schema.names)):
        return None
    return rows_by_polars(table, rows) if "polars" in sys.modules else rows_by_pyarrow(table, rows)


def rows_by_pyarrow(table: Table, rows: list[dict]) -> pa.Table | None:
    """pyarrow converts each value as the slow path's `pa.array` does: the same table."""
    try:
        return pa.Table.from_pylist(rows, schema=table.arrow_schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError, OverflowError, KeyError):
        return None


def rows_by_polars(table: Table, rows: list[dict]) -> pa.Table | None:
    import polars as pl

    try:
        return pl.from_dicts(rows, schema=polars_schema(table), strict=True).to_arrow().cast(table.arrow_schema)
    except Exception:  # a value that does not fit, a null in a required column: the slow path says which, in our words
        return None


_POLARS_SCHEMAS: dict[str, Any] = {}


def polars_schema(table: Table) -> Any:
    """`table`'s Arrow schema as a Polars schema (dict), made once per table."""
    schema = _POLARS_SCHEMAS.get(table.name)
    if schema is None:
        import polars as pl

        target = table.arrow_schema
        schema = dict(pl.from_arrow(target.empty_table()).schema)
        _POLARS_SCHEMAS[table.name] = schema
    return schema


def _as_arrow(table: Table, data: Data) -> pa.Table | dict[str, Any]:
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, list):
        fast = _rows_fast(table, data)
        return fast if fast is not None else _columns_from_rows(table, data)
    if isinstance(data, dict):
        return data
    to_arrow = getattr(data, "to_arrow", None)  # polars.DataFrame, duckdb relation
    if callable(to_arrow):
        out = to_arrow()
        return out if isinstance(out, pa.Table) else pa.Table.from_batches(out)
    raise SchemaError(f"table {table.name!r}: cannot write a {type(data).__name__}; pass Arrow, Polars, a dict of columns or a list of rows")


def conform(table: Table, data: Data, node: str | None = None) -> pa.Table:
    """Return `data` as an Arrow table with exactly `table.arrow_schema` (no `node` column).

    A `node` column, if present, must equal `node` everywhere (it becomes the partition).
    """
    target = table.arrow_schema
    src = _as_arrow(table, data)
    names = list(src.column_names) if isinstance(src, pa.Table) else list(src.keys())

    if PARTITION_KEY in names:
        values = src[PARTITION_KEY]
        arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, pa.string())
        distinct = pc.unique(arr).to_pylist() if len(arr) else []
        if node is not None and any(v != node for v in distinct):
            raise _fail(table, PARTITION_KEY, f"rows for node {distinct!r} written as node {node!r}")
        names.remove(PARTITION_KEY)

    known = set(target.names)
    for name in names:
        if name not in known:
            raise _fail(table, name, "not a column of this table")

    fast = (
        isinstance(src, pa.Table)
        and known <= set(names)
        and all(src.schema.field(f.name).type.equals(f.type) for f in target)
    )
    if fast:  # the common case for kernel batches: no per-value work
        out = pa.Table.from_arrays(src.select(target.names).columns, schema=target)
    else:
        length = len(src) if isinstance(src, pa.Table) else _length(table, src)
        arrays = []
        for f in target:
            if f.name not in names:
                arrays.append(pa.nulls(length, f.type))
                continue
            values = src[f.name]
            try:
                if isinstance(values, (pa.Array, pa.ChunkedArray)):
                    arr = values if values.type.equals(f.type) else values.cast(f.type, safe=True)
                else:
                    arr = pa.array(_plain(values), type=f.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError, OverflowError) as e:
                raise _fail(table, f.name, f"does not fit {f.type}: {_short(e)}") from None
            if len(arr) != length:
                raise _fail(table, f.name, f"has {len(arr)} values, expected {length}")
            arrays.append(arr)
        out = pa.Table.from_arrays(arrays, schema=target) if arrays else pa.table({})

    for f in target:
        if not f.nullable and out.column(f.name).null_count:
            raise _fail(table, f.name, f"is required but {out.column(f.name).null_count} row(s) are null")
    return out


def _length(table: Table, cols: dict[str, Any]) -> int:
    lengths = {name: len(v) for name, v in cols.items() if name != PARTITION_KEY}
    if not lengths:
        return 0
    if len(set(lengths.values())) > 1:
        name = min(lengths, key=lambda n: lengths[n])
        raise _fail(table, name, f"has {lengths[name]} values, others have {max(lengths.values())}")
    return next(iter(lengths.values()))


def _plain(values: Any) -> Any:
    to_list = getattr(values, "to_list", None)  # polars Series, numpy via tolist below
    if callable(to_list):
        return to_list()
    tolist = getattr(values, "tolist", None)
    if callable(tolist):
        return tolist()
    return values


def _short(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
