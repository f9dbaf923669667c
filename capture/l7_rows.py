"""The http rows of one hand-over to the writer, kept column-friendly.

A plain HTTP exchange between two processes of this node is two rows (client side, server
side) that differ only in conn_id, pid, comm and side. Building a dict per row and turning
each into Arrow cost ~4 µs per row, a third of the recorder's time per request: here each
exchange's columns are kept once (the dict HttpConnection made), the side columns per row in
lists, and `to_arrow` builds the exchange columns once (Polars' Rust-side dict reader), repeats
them with a take and adds the side columns.

Iterating yields ordinary row dicts (tests, debugging); the writer calls `to_arrow`.
"""

from __future__ import annotations

from typing import Any, Iterator

import pyarrow as pa

from ..schema import table

SIDE_COLUMNS = ("conn_id", "pid", "comm", "side")
_SCHEMA = table("http").arrow_schema


def _polars_base_schema() -> dict[str, Any]:
    """The Polars schema of the exchange columns: the http table's, less SIDE_COLUMNS."""
    from ..conform import polars_schema

    return {k: v for k, v in polars_schema(table("http")).items() if k not in SIDE_COLUMNS}


class HttpRows:
    """Rows of the http table: exchanges (dicts of every column but SIDE_COLUMNS) and, per row,
    the exchange it repeats and its side columns."""

    def __init__(self) -> None:
        self.exchanges: list[dict[str, Any]] = []
        self.of: list[int] = []  # per row: index into exchanges
        self.conn_id: list[str | None] = []
        self.pid: list[int | None] = []
        self.comm: list[str | None] = []
        self.side: list[str] = []

    def exchange(self, row: dict[str, Any]) -> int:
        self.exchanges.append(row)
        return len(self.exchanges) - 1

    def add(self, exchange: int, conn_id: str | None, pid: int | None, comm: str | None, side: str) -> None:
        self.of.append(exchange)
        self.conn_id.append(conn_id)
        self.pid.append(pid)
        self.comm.append(comm)
        self.side.append(side)

    def __len__(self) -> int:
        return len(self.of)

    def __bool__(self) -> bool:
        return bool(self.of)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i, x in enumerate(self.of):
            row = dict(self.exchanges[x])
            row.update(conn_id=self.conn_id[i], pid=self.pid[i], comm=self.comm[i], side=self.side[i])
            yield row

    def to_arrow(self) -> pa.Table:
        import polars as pl

        from ..conform import conform

        try:
            base = pl.from_dicts(self.exchanges, schema=_polars_base_schema(), strict=True).to_arrow()
            if self.of != list(range(len(self.exchanges))):
                base = base.take(pa.array(self.of, pa.int64()))
            columns = {name: base.column(name) for name in base.column_names}
            for name in SIDE_COLUMNS:
                columns[name] = pa.array(getattr(self, name), _SCHEMA.field(name).type)
            return pa.Table.from_arrays([columns[f.name] for f in _SCHEMA], schema=_SCHEMA)
        except Exception:  # a value that does not fit: the row path names the column
            return conform(table("http"), list(self))
