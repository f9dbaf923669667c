"""The http rows of one hand-over to the writer, kept as columns.

A plain HTTP exchange between two processes of this node is two rows (client side, server
side) that differ only in conn_id, pid, comm and side. Here each exchange is kept once: the
decoder's tuple (http_pairing.EXCHANGE_FIELDS) and its connection's columns (BASE_FIELDS);
per row, the exchange it repeats and its side columns. Connection columns and side columns
repeat for every exchange of a connection, so each distinct tuple of them is kept once and
referred to by index. `to_arrow` builds each exchange column once, straight from the tuples
(one pa.array per column: no dict per row), the connection and side columns from their
distinct tuples, and repeats them with takes.

Iterating yields ordinary row dicts (tests, debugging); the writer calls `to_arrow`.

HttpColumns (capture/decode/_http_rows.c) has the same interface and appends each row's values
straight to Arrow column buffers as it is added (its take_plain also does the live decoder's plain
HTTP join); HttpRows is its reference, selected with FLOWTAPE_HTTP_ROWS=python (rows_factory).
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import pyarrow as pa

from ...schema import table
from .http_pairing import EXCHANGE_FIELDS

# HTTP/2 exchanges (capture/decode/http2.py) carry these after EXCHANGE_FIELDS; HTTP/1 tuples
# end before them (null there). Listed here, not imported, so HTTP/1-only users never load hpack.
H2_FIELDS = ("stream_id", "grpc_service", "grpc_method", "grpc_status", "grpc_message", "stream_error", "headers_partial")
_NX = len(EXCHANGE_FIELDS)

BASE_FIELDS = ("client_ip", "client_port", "server_ip", "server_port", "tls")
SIDE_COLUMNS = ("conn_id", "pid", "comm", "side", "tid")  # tid: constant per connection side for most servers, so sides stay few
# per row too, but kept only once a row has one (today none does: a column of nulls costs nothing per row)
SPARSE_SIDE_COLUMNS = ("goroutine",)
_SCHEMA = table("http").arrow_schema

try:
    from . import _http_rows  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: HttpRows does the same work
    _http_rows = None


class HttpRows:
    """Rows of the http table: exchanges (tuples of EXCHANGE_FIELDS and of BASE_FIELDS) and, per
    row, the exchange it repeats and its side columns."""

    def __init__(self) -> None:
        self.exchanges: list[tuple] = []
        self.base_of: list[int] = []  # per exchange: index into bases
        self.bases: list[tuple] = []  # distinct BASE_FIELDS tuples
        self._base_ids: dict[tuple, int] = {}
        self.of: list[int] = []  # per row: index into exchanges
        self.side_of: list[int] = []  # per row: index into sides
        self.sides: list[tuple] = []  # distinct (conn_id, pid, comm, side, tid) tuples
        self._side_ids: dict[tuple, int] = {}
        self.goroutine: list[int | None] | None = None  # made at the first row that has one
        self.long = False  # some exchange is an HTTP/2 one (has H2_FIELDS)

    def exchange(self, row: tuple, base: tuple) -> int:
        if len(row) > _NX:
            self.long = True
        self.exchanges.append(row)
        b = self._base_ids.get(base)
        if b is None:
            b = self._base_ids[base] = len(self.bases)
            self.bases.append(base)
        self.base_of.append(b)
        return len(self.exchanges) - 1

    def add(self, exchange: int, conn_id: str | None, pid: int | None, comm: str | None, side: str,
            tid: int | None = None, goroutine: int | None = None) -> None:
        self.of.append(exchange)
        if goroutine is not None and self.goroutine is None:
            self.goroutine = [None] * (len(self.of) - 1)
        if self.goroutine is not None:
            self.goroutine.append(goroutine)
        key = (conn_id, pid, comm, side, tid)
        i = self._side_ids.get(key)
        if i is None:
            i = self._side_ids[key] = len(self.sides)
            self.sides.append(key)
        self.side_of.append(i)

    def __len__(self) -> int:
        return len(self.of)

    def __bool__(self) -> bool:
        return bool(self.of)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i, x in enumerate(self.of):
            row = dict.fromkeys(H2_FIELDS)
            row.update(zip(EXCHANGE_FIELDS + H2_FIELDS, self.exchanges[x]))
            row.update(zip(BASE_FIELDS, self.bases[self.base_of[x]]))
            row.update(zip(SIDE_COLUMNS, self.sides[self.side_of[i]]))
            row["goroutine"] = None if self.goroutine is None else self.goroutine[i]
            yield row

    def to_arrow(self) -> pa.Table:
        from ...conform import conform

        if not self.of:
            return _SCHEMA.empty_table()
        try:
            columns: dict[str, Any] = {}
            exchanges = self.exchanges
            if self.long:  # HTTP/1 tuples padded with nulls for the HTTP/2 columns
                pad = (None,) * len(H2_FIELDS)
                exchanges = [x if len(x) > _NX else x + pad for x in exchanges]
            for name, values in zip(EXCHANGE_FIELDS + H2_FIELDS if self.long else EXCHANGE_FIELDS, zip(*exchanges)):
                columns[name] = pa.array(values, _SCHEMA.field(name).type)
            base_of = pa.array(self.base_of, pa.int32())
            for name, values in zip(BASE_FIELDS, zip(*self.bases)):
                columns[name] = pa.array(values, _SCHEMA.field(name).type).take(base_of)
            if not self.long:
                for name in H2_FIELDS:
                    columns[name] = pa.nulls(len(exchanges), _SCHEMA.field(name).type)
            if self.of != list(range(len(self.exchanges))):
                index = pa.array(self.of, pa.int64())
                columns = {name: col.take(index) for name, col in columns.items()}
            side_of = pa.array(self.side_of, pa.int32())
            for name, values in zip(SIDE_COLUMNS, zip(*self.sides)):
                columns[name] = pa.array(values, _SCHEMA.field(name).type).take(side_of)
            for name in SPARSE_SIDE_COLUMNS:
                values = getattr(self, name)
                columns[name] = pa.nulls(len(self.of), _SCHEMA.field(name).type) if values is None else pa.array(values, _SCHEMA.field(name).type)
            # columns this decoder does not fill (added later, schema.Column.added) are null
            n = len(side_of)
            return pa.Table.from_arrays([columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in _SCHEMA], schema=_SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # a value that does not fit: the row path names the column
            return conform(table("http"), list(self))


# --- the compiled twin -----------------------------------------------------------------------

# capture/decode/_http_rows.c's column kinds and value sources (its K_* and S_* enums)
_KINDS = {pa.string(): 0, pa.int64(): 1, pa.int32(): 2, pa.uint16(): 3, pa.uint32(): 4, pa.uint64(): 5, pa.bool_(): 6}
_SOURCES = {**{n: (0, i) for i, n in enumerate(EXCHANGE_FIELDS + H2_FIELDS)}, **{n: (1, i) for i, n in enumerate(BASE_FIELDS)},
            **{n: (2, i) for i, n in enumerate(SIDE_COLUMNS + SPARSE_SIDE_COLUMNS)}}


def column_spec() -> tuple[tuple[int, int, int], ...]:
    """(kind, source, index) per column of the http schema, in its order: what HttpColumns fills.
    A column no decoder fills (schema.Column.added) has source 3 and stays null."""
    spec = []
    for f in _SCHEMA:
        t = pa.int64() if pa.types.is_timestamp(f.type) else f.type
        if t not in _KINDS:
            raise TypeError(f"http.{f.name}: capture/decode/_http_rows.c has no column of type {f.type}")
        spec.append((_KINDS[t], *_SOURCES.get(f.name, (3, 0))))
    return tuple(spec)


def columns_class(base: type) -> type:
    """HttpColumns over a build of capture/decode/_http_rows.c's type (tests: the sanitizer's)."""
    spec = column_spec()

    class HttpColumns(base):  # type: ignore[valid-type,misc]
        """HttpRows' interface over capture/decode/_http_rows.c's column buffers."""

        def __init__(self) -> None:
            super().__init__(spec)
            self._exchanges: list[tuple[tuple, tuple]] = []

        def exchange(self, row: tuple, base: tuple) -> int:
            self._exchanges.append((row, base))
            return len(self._exchanges) - 1

        def add(self, exchange: int, conn_id: str | None, pid: int | None, comm: str | None, side: str,
                tid: int | None = None, goroutine: int | None = None) -> None:
            row, base = self._exchanges[exchange]
            self.add_row(row, base, conn_id, pid, comm, side, tid, goroutine)

        def __bool__(self) -> bool:
            return len(self) > 0

        def __iter__(self) -> Iterator[dict[str, Any]]:
            t = self.to_arrow()
            t = pa.Table.from_arrays([c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c for c in t.columns], names=t.column_names)
            yield from t.to_pylist()

        def to_arrow(self) -> pa.Table:
            from ...errors import SchemaError

            n, error, buffers = self.finish()
            if error is not None:
                col, msg = error
                raise SchemaError(f"table 'http', column {_SCHEMA.field(col).name!r}: {msg}")
            arrays = []
            for f, (valid, data, offsets, nulls) in zip(_SCHEMA, buffers):
                bufs = [None if valid is None else pa.py_buffer(valid)]
                if offsets is not None:
                    bufs.append(pa.py_buffer(offsets))
                bufs.append(pa.py_buffer(data))
                arrays.append(pa.Array.from_buffers(f.type, n, bufs, null_count=nulls))
            return pa.Table.from_arrays(arrays, schema=_SCHEMA)

    return HttpColumns


HttpColumns = columns_class(_http_rows.HttpColumns) if _http_rows is not None else None


def rows_in_use() -> str:
    """'c' when rows_factory() makes HttpColumns, else 'python' (and why)."""
    if _http_rows is None:
        return "python (capture/decode/_http_rows.c was not built: install gcc and python3-dev, then reinstall flowtape)"
    if os.environ.get("FLOWTAPE_HTTP_ROWS", "").lower() == "python":
        return "python (FLOWTAPE_HTTP_ROWS=python)"
    return "c"


def rows_factory() -> type:
    """The http rows class in use: HttpColumns unless it is missing or FLOWTAPE_HTTP_ROWS=python."""
    return HttpColumns if rows_in_use() == "c" else HttpRows
