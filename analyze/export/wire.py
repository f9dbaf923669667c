"""OTLP span encodings (protobuf wire format and OTLP JSON) computed over Arrow columns.

The reference path (spans.http_spans_sql writing each span's JSON in SQL, encode.py decoding it
into opentelemetry-proto's messages) makes one Python object per attribute per span. Here a
record batch of spans becomes the bytes of every span at once: each field is an Arrow column
(ids as binary, times as int64, each attribute's value), the pieces of the wire format around
them (tags, lengths as varints, JSON keys) are columns made with numpy, and Arrow's
`binary_join_element_wise` concatenates them row by row in C++. Python code runs per batch and
per resource group, not per span or attribute.

Protobuf fields are written in field-number order, as protobuf's own serializer writes them,
so a span encoded here is byte for byte the reference's `Span.SerializeToString()`
(tests/test_export_wire.py holds the two to each other on the fixture tapes, and parses the
requests back with opentelemetry-proto's ParseFromString).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BIN = pa.binary()


def _b(x: bytes) -> pa.Scalar:
    return pa.scalar(x, BIN)


def varint(v: int) -> bytes:
    """One unsigned varint (protobuf base-128, little-endian groups); a negative int64 is written
    as its two's complement, 10 bytes, as protobuf writes int64."""
    v &= (1 << 64) - 1
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def varint_lengths(v: np.ndarray) -> np.ndarray:
    """Bytes each value of `v` (uint64) takes as a varint."""
    n = np.ones(len(v), np.int64)
    x = v >> np.uint64(7)
    while True:
        more = x > 0
        if not more.any():
            return n
        n += more
        x = x >> np.uint64(7)


def varints(values: np.ndarray) -> pa.Array:
    """A binary array: the varint of each value (int64 or uint64; negatives as protobuf writes int64)."""
    v = np.asarray(values).astype(np.int64, copy=False).view(np.uint64)
    nb = varint_lengths(v)
    width = int(nb.max()) if len(nb) else 1
    out = np.empty((len(v), width), np.uint8)
    for i in range(width):
        out[:, i] = ((v >> np.uint64(7 * i)) & np.uint64(0x7F)).astype(np.uint8) | np.where(nb > i + 1, 0x80, 0).astype(np.uint8)
    data = out[np.arange(width) < nb[:, None]]
    offsets = np.zeros(len(v) + 1, np.int32)
    np.cumsum(nb, out=offsets[1:])
    return pa.Array.from_buffers(BIN, len(v), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def lengths(arr: pa.Array) -> np.ndarray:
    """Byte length of each value of a binary/string array (0 for nulls)."""
    return pc.fill_null(pc.binary_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)


try:
    from . import _wire  # type: ignore[attr-defined]  # analyze/export/_wire.c, built at install when a C compiler is present
except ImportError:  # pragma: no cover - without a compiler: the reference below does the same, slower
    _wire = None


def join_reference(*parts, null_handling: str = "replace") -> pa.Array:
    """Row-wise concatenation of binary arrays and bytes (the same for every row); with "replace"
    a null part is left out, with "emit_null" a null part makes the row null. Arrow's kernel:
    the reference that _wire.c's concat_rows is held to."""
    parts = [_b(p) if isinstance(p, bytes) else p for p in parts]
    if null_handling == "replace":
        return pc.binary_join_element_wise(*parts, b"", null_handling="replace", null_replacement=b"")
    return pc.binary_join_element_wise(*parts, b"", null_handling="emit_null")


def join_compiled(*parts, null_handling: str = "replace") -> pa.Array:
    """join_reference by _wire.concat_rows (a loop of memcpy; Arrow's kernel costs 1-2 us a row)."""
    n = next(len(p) for p in parts if not isinstance(p, bytes))
    cparts: list = []
    valid = None
    for p in parts:
        if isinstance(p, bytes):
            cparts.append(p)
            continue
        if isinstance(p, pa.ChunkedArray):
            p = p.combine_chunks()
        if not (pa.types.is_binary(p.type) or pa.types.is_string(p.type)):
            p = as_binary(p)
        bufs = p.buffers()
        nulls = p.null_count
        cparts.append((bufs[1], bufs[2] if bufs[2] is not None else b"", p.offset, bufs[0] if nulls else None))
        if nulls and null_handling == "emit_null":
            v = p.is_valid()
            valid = v if valid is None else pc.and_(valid, v)
    offs, data = _wire.concat_rows(n, cparts)
    bitmap = None
    if valid is not None:
        bitmap = pa.py_buffer(np.packbits(valid.to_numpy(zero_copy_only=False), bitorder="little").tobytes())
    return pa.Array.from_buffers(BIN, n, [bitmap, pa.py_buffer(offs), pa.py_buffer(data)])


WIRE_ENV = "FLOWTAPE_WIRE"
"""FLOWTAPE_WIRE=reference: the Python references of _wire.c's functions (join, json_line)."""
_compiled = _wire is not None and os.environ.get(WIRE_ENV, "compiled") != "reference"

join = join_compiled if _compiled else join_reference


def as_binary(arr: pa.Array) -> pa.Array:
    if pa.types.is_binary(arr.type):
        return arr
    if pa.types.is_large_binary(arr.type) or pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_binary()).cast(BIN)
        return arr
    return arr.cast(BIN)


def fixed64(values: np.ndarray) -> pa.Array:
    """Each int64 as 8 little-endian bytes (protobuf fixed64), as a binary array."""
    v = np.ascontiguousarray(values, dtype="<i8")
    fsb = pa.Array.from_buffers(pa.binary(8), len(v), [None, pa.py_buffer(v.tobytes())])
    return fsb.cast(BIN)


def _masked(piece: pa.Array, valid: pa.Array | None) -> pa.Array:
    if valid is None:
        return piece
    return pc.if_else(valid, piece, pa.scalar(None, BIN))


# --- protobuf --------------------------------------------------------------------------------

def pb_key_value_prefix(key: str) -> bytes:
    k = key.encode()
    return b"\x0a" + varint(len(k)) + k


def pb_string_attr(key: str, col: pa.Array) -> pa.Array:
    """KeyValue{key, AnyValue{string_value}} as a Span.attributes field (tag 9), null where col is null."""
    col = as_binary(col)
    ln = lengths(col)
    av = 1 + varint_lengths(ln.view(np.uint64)) + ln  # AnyValue: tag 1, len, bytes
    kp = pb_key_value_prefix(key)
    kv = len(kp) + 1 + varint_lengths(av.view(np.uint64)) + av
    return join(b"\x4a", varints(kv), kp + b"\x12", varints(av), b"\x0a", varints(ln), col, null_handling="emit_null")


def pb_int_attr(key: str, col: pa.Array) -> pa.Array:
    """KeyValue{key, AnyValue{int_value}} (tag 9), null where col is null."""
    valid = pc.is_valid(col) if col.null_count else None
    v = pc.fill_null(col.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    vl = varint_lengths(v.view(np.uint64))
    av = 1 + vl
    kp = pb_key_value_prefix(key)
    kv = len(kp) + 1 + varint_lengths(av.view(np.uint64)) + av
    return _masked(join(b"\x4a", varints(kv), kp + b"\x12", varints(av), b"\x18", varints(v)), valid)


def pb_len_prefixed(tag: bytes, body: pa.Array) -> pa.Array:
    """tag + varint(len(body)) + body, row by row (a length-delimited field)."""
    return join(tag, varints(lengths(body)), body, null_handling="emit_null")


# --- JSON --------------------------------------------------------------------------------------

def json_string_attr(key: str, json_col: pa.Array) -> pa.Array:
    """`,{"key":K,"value":{"stringValue":V}}` where json_col already holds V as JSON text
    (to_json in SQL, or a value that needs no escaping wrapped in quotes); null where null."""
    head = ',{"key":"' + key + '","value":{"stringValue":'
    return join(head.encode(), as_binary(json_col), b"}}", null_handling="emit_null")


def json_int_attr(key: str, col: pa.Array) -> pa.Array:
    """`,{"key":K,"value":{"intValue":"N"}}` (OTLP JSON writes 64-bit integers as strings)."""
    head = ',{"key":"' + key + '","value":{"intValue":"'
    return join(head.encode(), as_binary(col.cast(pa.int64()).cast(pa.string())), b'"}}', null_handling="emit_null")


def decimal(col: pa.Array) -> pa.Array:
    return as_binary(col.cast(pa.int64()).cast(pa.string()))


@dataclass
class Group:
    """The spans of one resource in a batch: `data` is their encodings back to back (each
    protobuf span already wrapped as a ScopeSpans.spans field; each JSON span followed by a
    comma), `ends[i]` where span i ends in it."""

    res: int
    data: bytes
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.ends)

    def cut(self, k: int) -> tuple["Group", "Group"]:
        e = int(self.ends[k - 1])
        return Group(self.res, self.data[:e], self.ends[:k]), Group(self.res, self.data[e:], self.ends[k:] - e)


def group_by_resource(res: np.ndarray, spans: pa.Array) -> list[Group]:
    """The spans (one binary value each) grouped by resource index, groups in the order their
    first span comes, spans in their order within a group (what encode.py's reference does)."""
    uniq, first = np.unique(res, return_index=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(uniq), np.int64)
    rank[order] = np.arange(len(uniq))
    key = rank[np.searchsorted(uniq, res)]
    perm = np.argsort(key, kind="stable")
    taken = pc.take(spans, pa.array(perm)) if not np.array_equal(perm, np.arange(len(perm))) else spans
    taken = taken.combine_chunks() if isinstance(taken, pa.ChunkedArray) else taken
    offsets = np.frombuffer(taken.buffers()[1], dtype=np.int32)[taken.offset:taken.offset + len(taken) + 1].astype(np.int64)
    base = int(offsets[0])
    data = taken.buffers()[2]
    blob = memoryview(data)[base:int(offsets[-1])] if data is not None else memoryview(b"")
    blob = bytes(blob)
    offsets = offsets - base
    sorted_key = key[perm]
    bounds = np.flatnonzero(np.diff(sorted_key)) + 1
    starts = np.concatenate(([0], bounds))
    stops = np.concatenate((bounds, [len(perm)]))
    out = []
    for a, b in zip(starts.tolist(), stops.tolist()):
        lo, hi = int(offsets[a]), int(offsets[b])
        out.append(Group(int(uniq[order[sorted_key[a]]]), blob[lo:hi], offsets[a + 1:b + 1] - lo))
    return out


def split_groups(groups: list[Group]) -> tuple[list[Group], list[Group]]:
    """The groups' spans cut in two halves of equal count (encode.split_groups, for Group)."""
    total = sum(len(g) for g in groups)
    half, first, second, n = total // 2, [], [], 0
    for g in groups:
        if n >= half:
            second.append(g)
        elif n + len(g) <= half:
            first.append(g)
        else:
            a, b = g.cut(half - n)
            first.append(a)
            second.append(b)
        n += len(g)
    return first, second


def traces_request_bytes(groups: list[Group], resources_pb: list[bytes], scope_pb: bytes) -> bytes:
    """ExportTraceServiceRequest bytes: one ResourceSpans per group (resource, one ScopeSpans)."""
    out = []
    for g in groups:
        res = resources_pb[g.res]
        ss = b"\x0a" + varint(len(scope_pb)) + scope_pb + g.data
        rs = b"\x0a" + varint(len(res)) + res + b"\x12" + varint(len(ss)) + ss
        out.append(b"\x0a" + varint(len(rs)) + rs)
    return b"".join(out)


def traces_json_line(groups: list[Group], resources_json: list[bytes], scope_open: bytes) -> bytes:
    """A TracesData JSON line (encode.traces_json_line's text) of the groups."""
    parts = [b'{"resource":' + resources_json[g.res] + scope_open + g.data[:-1] + b"]}]}" for g in groups]
    return b'{"resourceSpans":[' + b",".join(parts) + b"]}"


@dataclass
class Batch:
    """`len(res)` consecutive spans and the resource index of each: one request or JSON line
    (groups: the spans grouped by resource, for requests; a JSON line is made from it at once)."""

    res: np.ndarray
    spans: pa.Array

    def __len__(self) -> int:
        return len(self.res)

    def groups(self) -> list[Group]:
        return group_by_resource(self.res, self.spans)


def json_line_reference(batch: Batch, resources_json: list[bytes], scope_open: bytes) -> bytes:
    """The TracesData JSON line of a batch: its spans grouped by resource (traces_json_line);
    the reference _wire.json_line is held to."""
    return traces_json_line(batch.groups(), resources_json, scope_open)


def json_line_compiled(batch: Batch, resources_json: list[bytes], scope_open: bytes) -> bytes:
    """json_line_reference by _wire.json_line: one pass of memcpy into the line (the take, the
    copy of the batch and a slice per group cost a third of the main thread's time)."""
    spans = batch.spans.combine_chunks() if isinstance(batch.spans, pa.ChunkedArray) else batch.spans
    if spans.null_count or len(spans) != len(batch.res):
        raise ValueError("json_line: a null span, or not one resource index per span")
    bufs = spans.buffers()
    res = np.ascontiguousarray(batch.res, dtype=np.int64)
    return _wire.json_line(res, bufs[1], bufs[2] if bufs[2] is not None else b"", spans.offset, list(resources_json), scope_open)


json_line = json_line_compiled if _compiled else json_line_reference
