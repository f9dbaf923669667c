"""HTTP spans as columns, encoded by wire.py: the fast path (the reference is spans.http_spans_sql
writing JSON in SQL, decoded by encode.py).

Per time slice, DuckDB computes two results from ftx_slice (spans.HttpSides):
- the exchange classes (side, method, route, status, peer...: the attributes many spans share),
  a few thousand per slice, each with its name, kind, shared attributes and status as the
  reference writes them (spans.HTTP_CLASS_ATTRS' JSON); they are encoded here once per class;
- the spans, one row each, in the reference's order (time, then row id): resource key, class,
  ids, times and the values of the attributes particular to each span (spans.HTTP_ROW_ATTRS).
Every span's bytes are then made at once per record batch (wire.py), and batches of
`batch_spans` consecutive spans are grouped by resource, cut and sized exactly as the reference
cuts them (so checkpoints name the same requests).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from . import spans as sp
from . import wire
from .encode import key_values

ROW_ATTRS = sp.HTTP_ROW_ATTRS


def _row_value_sql(a, mode: str) -> str:
    """SQL of one row attribute's value column: JSON text of it (json) or its value (pb)."""
    if a.kind == "i":
        return f"({a.sql})::BIGINT"
    if mode == "json":
        return f"to_json({a.sql})" if a.kind == "s" else f"'\"' || ({a.sql}) || '\"'"
    return f"({a.sql})::VARCHAR"


def rows_sql() -> str:
    """ftx_slice's rows as spans.http_rows_cte makes them (local and peer ends, nid, cid), in the
    reference's order (time, then row id): fetched once per slice, read by both queries below."""
    return f"""WITH {sp.http_rows_cte()} SELECT * FROM s2 ORDER BY t, m"""


def classes_sql(rows: str = "ftx_rows") -> str:
    """(cid, frag, status) of every exchange class of `rows` (rows_sql's), as the reference writes them."""
    e = sp.http_span_exprs()
    return f"""SELECT cid, {e['frag']} AS frag, {e['status']} AS status FROM (SELECT DISTINCT ON (cid) * FROM {rows})"""


def spans_sql(mode: str, rows: str = "ftx_rows") -> str:
    """One row per span of `rows` (rows_sql's), in their order (the reference's: a projection of
    a scan keeps it, DuckDB's preserve_insertion_order): rid and the resource columns, cid, ids
    (hex text for json, bytes for pb), t, t1 and the row attributes' values a0, a1..."""
    e = sp.http_span_exprs()
    if mode == "json":
        trace, span, parent = e["trace"], e["span"], e["parent"]
    else:
        trace, span, parent = (f"unhex({e[k]})" for k in ("trace", "span", "parent"))
    vals = ", ".join(f"{_row_value_sql(a, mode)} AS a{i}" for i, a in enumerate(ROW_ATTRS))
    return f"""SELECT hash(nid, pid, comm, node, local_ip) AS rid, nid, pid, comm, node, local_ip, cid,
       {trace} AS trace, {span} AS span, {parent} AS parent, t, coalesce(t1, t) AS t1, {vals}
FROM {rows}"""


@dataclass
class Classes:
    """Per class of one slice: its encoded pieces, indexed by position; `cids` sorted, `index`
    maps each sorted cid back to its position."""

    cids: pa.Array
    head: pa.Array
    """pb: name and kind (fields 5, 6); json: `,"name":..,"kind":N`."""
    attrs: pa.Array
    """pb: the class attributes (fields 9); json: their items, comma-separated."""
    status: pa.Array
    """pb: the status (field 15) or empty; json: `,"status":{..}` or empty."""


def encode_classes(tbl: pa.Table, mode: str) -> Classes:
    cids = tbl.column("cid").combine_chunks()
    heads, attrs, status = [], [], []
    for frag, st in zip(tbl.column("frag").to_pylist(), tbl.column("status").to_pylist()):
        head, _, items = frag.partition("\x1f")
        if not items:  # row attributes are appended after a comma: the class always has some (network.transport)
            raise AssertionError("an exchange class without attributes")
        if mode == "json":
            heads.append(head.encode())
            attrs.append(items.encode())
            status.append(st.encode())
            continue
        h = json.loads("{" + head[1:] + "}")
        heads.append(Span(name=h["name"], kind=h["kind"]).SerializeToString())
        attrs.append(Span(attributes=key_values(json.loads("[" + items + "]"))).SerializeToString())
        if st:
            s = json.loads("{" + st[1:] + "}")["status"]
            status.append(Span(status=Status(code=s.get("code", 0), message=s.get("message", ""))).SerializeToString())
        else:
            status.append(b"")
    return Classes(cids, pa.array(heads, wire.BIN), pa.array(attrs, wire.BIN), pa.array(status, wire.BIN))


def encode_spans(rb: pa.RecordBatch, cls: Classes, mode: str) -> pa.Array:
    """Every span of the record batch as bytes: pb, each wrapped as a ScopeSpans.spans field
    (tag 2, length); json, each followed by a comma."""
    ci = pc.index_in(rb.column("cid"), value_set=cls.cids)
    if ci.null_count:
        raise AssertionError("a span whose exchange class is missing")
    head, attrs, status = (pc.take(x, ci) for x in (cls.head, cls.attrs, cls.status))
    t = rb.column("t").to_numpy(zero_copy_only=False)
    t1 = rb.column("t1").to_numpy(zero_copy_only=False)
    row = []
    for i, a in enumerate(ROW_ATTRS):
        col = rb.column(f"a{i}")
        if mode == "json":
            row.append(wire.json_int_attr(a.key, col) if a.kind == "i" else wire.json_string_attr(a.key, col))
        else:
            row.append(wire.pb_int_attr(a.key, col) if a.kind == "i" else wire.pb_string_attr(a.key, col))
    if mode == "json":
        parent = wire.join(b',"parentSpanId":"', wire.as_binary(rb.column("parent")), b'"', null_handling="emit_null")
        return wire.join(b'{"traceId":"', wire.as_binary(rb.column("trace")), b'","spanId":"', wire.as_binary(rb.column("span")), b'"', parent,
                         head, b',"startTimeUnixNano":"', wire.decimal(rb.column("t")), b'","endTimeUnixNano":"', wire.decimal(rb.column("t1")),
                         b'","attributes":[', attrs, *row, b"]", status, b"},")
    parent = wire.join(b"\x22\x08", rb.column("parent"), null_handling="emit_null")
    body = wire.join(b"\x0a\x10", rb.column("trace"), b"\x12\x08", rb.column("span"), parent, head,
                     b"\x39", wire.fixed64(t), b"\x41", wire.fixed64(t1), attrs, *row, status)
    return wire.pb_len_prefixed(b"\x12", body)


RESOURCE_COLUMNS = ("nid", "pid", "comm", "node", "local_ip")


def slice_items(con, mode: str, read_rows: int) -> Iterator[tuple[np.ndarray, pa.RecordBatch, pa.Array]]:
    """(rid, the resource columns of each rid's first row, span bytes) per record batch of the
    slice in ftx_slice (a view or table on `con`, a cursor of its own: the rows are registered
    on it). The slice's rows are computed once, as Arrow, for both queries: a table of them
    (DuckDB's storage, written then read twice, each reading computing the class hash again)
    cost more."""
    con.register("ftx_rows", con.sql(rows_sql()).to_arrow_table())
    try:
        cls = encode_classes(con.sql(classes_sql()).to_arrow_table(), mode)
        reader = con.sql(spans_sql(mode)).to_arrow_reader(read_rows)
        yield from _items(reader, cls, mode)
    finally:
        con.unregister("ftx_rows")


def _items(reader, cls: Classes, mode: str) -> Iterator[tuple[np.ndarray, pa.RecordBatch, pa.Array]]:
    for rb in reader:
        if rb.num_rows == 0:
            continue
        rid = rb.column("rid").to_numpy(zero_copy_only=False)
        _, first = np.unique(rid, return_index=True)
        res_rows = rb.select(["rid", *RESOURCE_COLUMNS]).take(pa.array(first))
        yield rid, res_rows, encode_spans(rb, cls, mode)
