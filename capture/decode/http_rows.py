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
"""

from __future__ import annotations

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
