"""HTTP/2 (RFC 9113) and HPACK (RFC 7541) into `http` rows: one row per stream.

Sans-I/O, like python-hyper/h2: an `H2Connection` is fed the bytes of each direction of one
connection in stream order (`feed_tuples(ts_ns, data, from_client, length)`, where `length -
len(data)` bytes after `data` were not captured) and returns the streams that ended, as tuples
in EXCHANGE_FIELDS + H2_FIELDS order. It serves the TC path (h2c), the OpenSSL uprobe plaintext
(h2 over TLS) and pcap imports alike; it knows nothing of eBPF.

Why not h2's H2Connection: it is an endpoint's state machine. It must be fed a connection from
its first byte, enforces flow control and stream-state rules as an endpoint would (a recorder
must keep going where an endpoint would send GOAWAY), and cannot skip bytes it never saw. A
recorder joins connections mid-way and loses bytes. So framing is the small parser below; HPACK
uses the `hpack` library's integer and Huffman primitives and static table, with a dynamic table
of our own that can be *partially known*: `hpack.Decoder` raises on the first reference to an
entry it does not hold and drops the whole block, while a recorder that missed a connection's
start must still decode the static-table and literal fields of that block. tests hold this
decoder to `hpack.Decoder` (and to tshark) on complete connections.

Never inventing a header (DESIGN.md, Wave 2): a direction whose start was not seen, or whose
header block was lost (a gap, an oversized block, a decoding error), has a dynamic table with
unknown entries. A field indexing one of them decodes as unknown: its column stays null and the
row has `headers_partial` true. Entries inserted after the loss are known exactly (HPACK inserts
at the front, so their indices are known), and a direction whose known entries fill the table
(or that receives a size update to 0) is complete again.

Sizes: request_bytes / response_bytes are the frame bytes of the stream in that direction:
9-byte frame header plus payload (padding included) of its HEADERS, CONTINUATION and DATA
frames; flow control and RST_STREAM frames are not counted. Timing as HTTP/1: ts_request is the
time of the segment holding the first byte of the request's HEADERS frame, ts_response that of
the first response HEADERS frame with a final (non-1xx) status.

Bounded memory: a header block is kept up to MAX_HEADER_BLOCK bytes, a decoded header list up to
MAX_HEADER_LIST bytes, the dynamic table copy up to MAX_TABLE bytes, open streams per connection
up to MAX_STREAMS; past each bound the input is counted (DecodeStats) and dropped.
"""

from __future__ import annotations

import functools
import os
import struct
from collections import deque
from typing import Any, Callable
from urllib.parse import unquote

from hpack.hpack import HPACKDecodingError, decode_huffman, decode_integer
from hpack.table import HeaderTable

from .http_pairing import H2_PREFACE, Redaction
from .http_rows import H2_FIELDS  # the row columns after EXCHANGE_FIELDS, in this order
from .stats import DecodeStats

try:
    from . import _http2  # type: ignore[attr-defined]  # capture/decode/_http2.c, built at install when a C compiler is present
except ImportError:  # no compiler at install time: H2Connection below does the same work, slower
    _http2 = None

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20
SETTINGS_HEADER_TABLE_SIZE = 1

MAX_HEADER_BLOCK = 64 * 1024  # a HEADERS + CONTINUATION block kept for decoding (a CONTINUATION flood stops here)
MAX_HEADER_LIST = 64 * 1024  # decoded name + value bytes kept per block (an HPACK "bomb" of indexed references stops here)
MAX_TABLE = 64 * 1024  # bytes of dynamic table this decoder holds per direction (older entries become unknown)
MAX_STREAMS = 1024  # open streams per connection; beyond, the oldest is written unfinished
RESET_LINGER_NS = 1_000_000_000  # a stream reset by one side waits this long for the other side's last frames (gRPC trailers)
MAX_PLAUSIBLE_FRAME = 1 << 20  # resynchronising: a frame header announcing more is not taken as one
RESYNC_SCAN = 64  # resynchronising: offsets tried at the start of a segment
DEFAULT_TABLE = 4096

ERROR_CODES = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT", "STREAM_CLOSED",
               "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM",
               "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED")


_STATIC = tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in HeaderTable.STATIC_TABLE)  # as http1.py, text is latin-1
_NSTATIC = len(_STATIC)
_HDR = struct.Struct(">BHBBI")  # 24-bit length as a byte + 16 bits, type, flags, stream id
HUFFMAN_CACHE = 4096  # decoded Huffman strings kept (values repeat: paths, dates, user agents, content types)
_huffman: dict[bytes, str] = {}
UNKNOWN = None  # a field whose name or value indexes a dynamic-table entry never seen
# request/response fields the rows use (others are decoded only as far as the table needs)
_WANTED = frozenset((":method", ":path", ":authority", ":scheme", ":status", "host", "content-type", "user-agent",
                     "traceparent", "tracestate", "grpc-status", "grpc-message"))


class HpackError(Exception):
    """A header block that is not valid HPACK (bad integer, string past the block, bad Huffman,
    index 0, a size update above the limit)."""


class HpackReader:
    """One direction's HPACK decoding state: a dynamic table that may be only partly known.

    `entries` holds the newest entries first as (name, value, size). `complete` is False when
    older entries may exist that this reader never saw (the connection's start was missed, or
    a block was lost): an index past the known entries is then unknown, not an error."""

    __slots__ = ("entries", "size", "max_size", "limit", "complete")
    entries: deque[tuple[str | None, str, int]]

    def __init__(self, complete: bool = True) -> None:
        self.entries = deque()
        self.size = 0
        self.max_size = DEFAULT_TABLE
        self.limit: int | None = DEFAULT_TABLE if complete else None  # the peer's SETTINGS_HEADER_TABLE_SIZE, when known
        self.complete = complete

    def lose(self) -> None:
        """The table's contents are no longer known (a block was not decoded)."""
        self.entries.clear()
        self.size = 0
        self.complete = False

    def _evict(self) -> None:
        cap = min(self.max_size, MAX_TABLE)
        while self.size > cap and self.entries:
            self.size -= self.entries.pop()[2]
        if self.max_size > MAX_TABLE and self.entries and self.size + 32 > MAX_TABLE:
            self.complete = False  # entries older than our cap still exist in the peer's table
        # no unknown entry can remain when the known ones leave no room for the smallest entry (32 bytes)
        if not self.complete and self.size + 32 > self.max_size and self.max_size <= MAX_TABLE:
            self.complete = True

    def _insert(self, name: str | None, value: str) -> None:
        # latin-1 text: one character per octet, as RFC 7541 4.1 counts. An entry whose name is
        # unknown (it indexed an entry never seen) gets the least size it can have: this table
        # then evicts no earlier than the peer's does, and lookups are by position from the
        # newest entry, which eviction of older entries never changes.
        size = len(name or " ") + len(value) + 32
        self.entries.appendleft((name, value, size))
        self.size += size
        self._evict()

    def _lookup(self, index: int) -> tuple[str | None, str] | None:
        if index == 0:
            raise HpackError("index 0")
        if index <= _NSTATIC:
            return _STATIC[index - 1]
        j = index - _NSTATIC - 1
        if j < len(self.entries):
            e = self.entries[j]
            return e[0], e[1]
        if self.complete:
            raise HpackError(f"index {index} past the dynamic table")
        return None

    def decode(self, block: bytes, every_value: bool = False) -> tuple[list[tuple[str | None, str | None]], bool]:
        """The header list of one block and whether any field was unknown. Fields past
        MAX_HEADER_LIST bytes are dropped (still decoded: the table needs them). Values of
        fields not inserted into the table and not used by rows are skipped ("") unless
        every_value. Raises HpackError; the caller then calls lose()."""
        out: list[tuple[str | None, str | None]] = []
        unknown = False
        kept = 0
        pos, n = 0, len(block)
        mv = memoryview(block)
        try:
            while pos < n:
                b = block[pos]
                if b & 0x80:  # indexed field
                    index = b & 0x7F
                    if index < 0x7F:
                        pos += 1
                    else:
                        index, used = decode_integer(mv[pos:], 7)
                        pos += used
                    hit = self._lookup(index)
                    if hit is None or hit[0] is None:
                        unknown = True
                        out.append((UNKNOWN, UNKNOWN if hit is None else hit[1]))
                        continue
                    name, value = hit
                elif b & 0xE0 == 0x20:  # dynamic table size update
                    size, used = decode_integer(mv[pos:], 5)
                    pos += used
                    if self.limit is not None and size > self.limit:
                        raise HpackError(f"table size update to {size} above the limit {self.limit}")
                    self.max_size = size
                    if size == 0:
                        self.entries.clear()
                        self.size = 0
                        self.complete = True
                    self._evict()
                    continue
                else:
                    indexing = b & 0xC0 == 0x40
                    mask = 0x3F if indexing else 0x0F
                    index = b & mask
                    if index < mask:
                        pos += 1
                    else:
                        index, used = decode_integer(mv[pos:], 6 if indexing else 4)
                        pos += used
                    if index:
                        hit = self._lookup(index)
                        name = hit[0] if hit is not None else UNKNOWN
                    else:
                        name, pos = self._string(block, mv, pos, True)
                    want = every_value or indexing or name is UNKNOWN or name in _WANTED
                    value, pos = self._string(block, mv, pos, want)
                    if indexing:
                        self._insert(name, value)
                    if name is UNKNOWN:
                        unknown = True
                        out.append((UNKNOWN, value))
                        continue
                kept += len(name) + len(value)
                if kept <= MAX_HEADER_LIST:
                    out.append((name, value))
        except HPACKDecodingError as e:  # a varint too long, invalid Huffman
            raise HpackError(str(e)) from None
        except IndexError:
            raise HpackError("field cut at the end of the block") from None
        return out, unknown

    @staticmethod
    def _string(block: bytes, mv: memoryview, pos: int, want: bool) -> tuple[str, int]:
        b = block[pos]
        length = b & 0x7F
        if length < 0x7F:  # the common case, one byte: without hpack's decode_integer call
            pos += 1
        else:
            length, used = decode_integer(mv[pos:], 7)
            pos += used
        end = pos + length
        if end > len(block):
            raise HpackError("string past the end of the block")
        if not want:
            return "", end
        raw = block[pos:end]
        if not b & 0x80:
            return raw.decode("latin-1"), end
        text = _huffman.get(raw)
        if text is None:
            text = decode_huffman(raw).decode("latin-1")
            if len(_huffman) >= HUFFMAN_CACHE:
                _huffman.clear()  # bounded: start again rather than track ages
            _huffman[raw] = text
        return text, end


class _Stream:
    __slots__ = ("sid", "ts_request", "ts_response", "req", "resp", "status", "req_bytes", "resp_bytes", "req_end",
                 "resp_end", "partial", "error", "grpc_status", "grpc_message", "req_seen", "resp_seen", "reset_ts")

    def __init__(self, sid: int, ts: int) -> None:
        self.sid = sid
        self.ts_request = ts
        self.ts_response: int | None = None
        self.req: dict[str, str] = {}
        self.resp: dict[str, str] = {}
        self.status: int | None = None
        self.req_bytes: int | None = 0
        self.resp_bytes: int | None = 0
        self.req_end = self.resp_end = False
        self.partial = False
        self.error: str | None = None
        self.grpc_status: int | None = None
        self.grpc_message: str | None = None
        self.req_seen = self.resp_seen = False  # a header block of that direction was seen (decoded or not)
        self.reset_ts: int | None = None  # when one side reset the stream (RST_STREAM)


class _Direction:
    """Frame boundaries of one direction and its HPACK state."""

    __slots__ = ("from_client", "hpack", "hdr", "ftype", "flags", "sid", "remaining", "keep", "payload", "lost_payload",
                 "frame_ts", "block", "block_sid", "block_ts", "block_lost", "block_flags", "preface", "synced", "flen")

    def __init__(self, from_client: bool, at_start: bool) -> None:
        self.from_client = from_client
        self.hpack = HpackReader(complete=at_start)
        self.hdr = b""  # bytes of a frame header split across segments
        self.ftype = -1  # the frame whose payload is being read (-1: between frames)
        self.flags = self.sid = self.remaining = 0
        self.keep = False  # payload bytes of this frame are collected
        self.payload = bytearray()
        self.lost_payload = False
        self.frame_ts = 0
        self.block: bytearray | None = None  # a header block awaiting CONTINUATION frames
        self.block_sid = 0
        self.block_ts = 0
        self.block_lost = False
        self.block_flags = 0
        self.preface = from_client and at_start  # the client preface is still to be passed
        self.synced = True  # False after a gap hid a frame header
        self.flen = 0  # the length of the frame being read


class H2Connection:
    """Both directions of one HTTP/2 connection as seen by one endpoint (or on the wire).

    `at_start`: the first bytes fed are the connection's first (the client preface, the server's
    first SETTINGS). False for a connection joined mid-way: HPACK tables start unknown and the
    bytes must start at a frame boundary (the decoder looks for one otherwise)."""

    def __init__(self, stats: DecodeStats | None = None, redaction: Redaction | None = None, at_start: bool = True) -> None:
        self.stats = stats if stats is not None else DecodeStats()
        self.redaction = redaction or Redaction()
        self.dirs = (_Direction(False, at_start), _Direction(True, at_start))
        self.streams: dict[int, _Stream] = {}
        self.done: list[tuple] = []
        self.max_sid = 0  # the highest client stream id opened: frames on lower ids not open are late, not orphans
        self.lingering: dict[int, _Stream] = {}  # streams reset by one side, waiting for the other
        self.closed = False
        self._allow = tuple(self.redaction.allows(h) for h in ALLOW_HEADERS)
        self.stats.add("http2_connections")
        if not at_start:
            self.stats.add("http2_mid_connection")

    # --- the decoder interface L7Decoder uses (as http_pairing.HttpConnection's) -------------

    def feed_tuples(self, ts_ns: int, data: bytes, from_client: bool, length: int | None = None) -> list[tuple]:
        """One segment (its first bytes `data` of `length`) of one direction, in stream order."""
        d = self.dirs[from_client]
        if not d.synced:
            start = self._resync(data)
            if start is None:
                return self._take()
            d.synced = True
            data = data[start:]
            length = None if length is None else length - start
        self._bytes(d, ts_ns, data)
        if self.lingering:
            for st in [st for st in self.lingering.values() if ts_ns - st.reset_ts > RESET_LINGER_NS]:
                self._finish(st)
        gap = 0 if length is None else length - len(data)
        if gap > 0:
            self._gap(d, gap)
        return self._take()

    def close_tuples(self, ts_ns: int) -> list[tuple]:
        """The connection ended: every stream still open becomes a row with what is known."""
        if self.closed:
            return []
        self.closed = True
        for st in list(self.streams.values()):
            self._finish(st)
        return self._take()

    def body_remaining(self, from_client: bool) -> int:
        return 0  # DATA frames are passed by length already; the kernel is not asked to skip

    # --- framing ---------------------------------------------------------------------------

    def _bytes(self, d: _Direction, ts: int, data: bytes) -> None:
        pos, n = 0, len(data)
        if d.preface:
            need = len(H2_PREFACE) - len(d.hdr)
            got = data[:need]
            d.hdr += got
            pos = len(got)
            if len(d.hdr) < len(H2_PREFACE):
                if H2_PREFACE.startswith(d.hdr):
                    return
            d.preface = False
            if d.hdr != H2_PREFACE:
                self.stats.add("http2_malformed")
                self._desync(d)
                return
            d.hdr = b""
        while pos < n:
            if d.ftype >= 0:
                take = d.remaining if d.remaining < n - pos else n - pos
                if d.keep:
                    d.payload += data[pos : pos + take]
                pos += take
                d.remaining -= take
                if d.remaining == 0:
                    self._frame(d)
                continue
            if d.hdr or n - pos < 9:
                need = 9 - len(d.hdr)
                d.hdr += data[pos : pos + need]
                pos += min(need, n - pos)
                if len(d.hdr) < 9:
                    return
                hdr, d.hdr = d.hdr, b""
                hi, lo, ftype, flags, sid = _HDR.unpack(hdr)
            else:
                hi, lo, ftype, flags, sid = _HDR.unpack_from(data, pos)
                pos += 9
            length = hi << 16 | lo
            d.ftype, d.flags, d.sid, d.remaining = ftype, flags, sid & 0x7FFFFFFF, length
            d.frame_ts, d.flen = ts, length
            # DATA is passed by length; frames that carry state are collected (header blocks bounded)
            d.keep = ftype in (HEADERS, CONTINUATION, PUSH_PROMISE, RST_STREAM, SETTINGS) and length <= MAX_HEADER_BLOCK
            d.payload = bytearray()
            d.lost_payload = length > MAX_HEADER_BLOCK and ftype in (HEADERS, CONTINUATION, PUSH_PROMISE)
            if d.lost_payload:
                self.stats.add("http2_header_block_too_large")
            if length == 0:
                self._frame(d)

    def _gap(self, d: _Direction, gap: int) -> None:
        """`gap` bytes of this direction were not captured."""
        if d.preface or not d.synced:
            self._desync(d)
            return
        while gap > 0:
            if d.ftype < 0:  # a frame header is among the missing bytes: its boundaries are lost
                self._desync(d)
                return
            take = min(d.remaining, gap)
            gap -= take
            d.remaining -= take
            if d.keep:
                d.lost_payload = True
            if d.remaining == 0:
                self._frame(d)

    def _desync(self, d: _Direction) -> None:
        self.stats.add("http2_desync")
        d.synced = False
        d.preface = False
        d.hdr = b""
        d.ftype = -1
        d.block = None
        d.hpack.lose()
        for st in self.streams.values():  # sizes of the streams in flight are no longer known
            if d.from_client:
                st.req_bytes = None
            else:
                st.resp_bytes = None

    def _resync(self, data: bytes) -> int | None:
        """The first offset near the start of `data` where a chain of plausible frame headers
        runs to the end of the data (segments usually start at a frame: writers send whole frames)."""
        n = len(data)
        for start in range(min(RESYNC_SCAN, max(n - 8, 0))):
            pos, frames = start, 0
            while pos + 9 <= n:
                length = data[pos] << 16 | data[pos + 1] << 8 | data[pos + 2]
                ftype, sid = data[pos + 3], int.from_bytes(data[pos + 5 : pos + 9], "big")
                if ftype > CONTINUATION or sid & 0x80000000 or length > MAX_PLAUSIBLE_FRAME or not _plausible(ftype, sid, length):
                    break
                frames += 1
                pos += 9 + length
            else:
                if frames:
                    return start
        return None

    def _frame(self, d: _Direction) -> None:
        """A frame's payload has passed (collected when d.keep)."""
        ftype, flags, sid = d.ftype, d.flags, d.sid
        d.ftype = -1
        length = len(d.payload) if d.keep and not d.lost_payload else None
        if ftype == DATA:
            st = self.streams.get(sid)
            if st is not None:
                self._count(st, d.from_client, 9 + d.flen)
                if flags & END_STREAM:
                    self._end(st, d.from_client)
            return
        if ftype in (HEADERS, PUSH_PROMISE):
            if d.block is not None:
                self.stats.add("http2_malformed")  # a new block before the last one ended
                d.hpack.lose()
            payload = bytes(d.payload) if length is not None else None
            if payload is not None:
                pad = 0
                body = memoryview(payload)
                try:
                    if flags & PADDED:
                        pad = payload[0]
                        body = body[1:]
                    if ftype == PUSH_PROMISE:
                        body = body[4:]
                    elif flags & PRIORITY_FLAG:
                        body = body[5:]
                    if pad > len(body):
                        raise IndexError
                    payload = bytes(body[: len(body) - pad])
                except IndexError:
                    self.stats.add("http2_malformed")
                    payload = None
            d.block = bytearray(payload) if payload is not None else bytearray()
            d.block_lost = payload is None
            d.block_sid, d.block_ts, d.block_flags = sid, d.frame_ts, flags if ftype == HEADERS else -1
            self._frame_bytes(d, sid, ftype, d.frame_ts)
            if flags & END_HEADERS:
                self._block_done(d)
            return
        if ftype == CONTINUATION:
            if d.block is None or sid != d.block_sid:
                self.stats.add("http2_malformed")
                return
            self._frame_bytes(d, sid, ftype, d.frame_ts)
            if length is None:
                d.block_lost = True
            elif not d.block_lost:
                if len(d.block) + length > MAX_HEADER_BLOCK:
                    self.stats.add("http2_header_block_too_large")
                    d.block_lost = True
                    d.block = bytearray()
                else:
                    d.block += d.payload
            if flags & END_HEADERS:
                self._block_done(d)
            return
        if ftype == RST_STREAM:
            st = self.streams.get(sid)
            if st is not None and length == 4:
                code = int.from_bytes(d.payload, "big")
                if st.error is None:
                    st.error = ERROR_CODES[code] if code < len(ERROR_CODES) else f"0x{code:x}"
                # The reset ends the stream for both sides, but a peer often still sends its last
                # frames (gRPC: the trailers with the status after a client's deadline cancel).
                if st.reset_ts is None and not (st.resp_end if d.from_client else st.req_end):
                    st.reset_ts = d.frame_ts
                    self.lingering[sid] = st
                self._end(st, d.from_client)
            elif length is not None and length != 4:
                self.stats.add("http2_malformed")
            return
        if ftype == SETTINGS and length is not None and not flags & 1:
            if length % 6:
                self.stats.add("http2_malformed")
                return
            for i in range(0, length, 6):
                ident, value = struct.unpack_from(">HI", d.payload, i)
                if ident == SETTINGS_HEADER_TABLE_SIZE:
                    # what this side's decoder accepts: the limit of the other direction's encoder
                    self.dirs[not d.from_client].hpack.limit = value

    def _frame_bytes(self, d: _Direction, sid: int, ftype: int, ts: int) -> None:
        st = self.streams.get(sid)
        if st is None and d.from_client and ftype == HEADERS:
            st = self._open(sid, d.block_ts)
        if st is not None and ftype != PUSH_PROMISE:  # a promise is not part of the stream it rides on
            self._count(st, d.from_client, 9 + d.flen)  # frame lengths are known even when a payload was not captured

    def _end(self, st: _Stream, from_client: bool) -> None:
        if from_client:
            st.req_end = True
        else:
            st.resp_end = True
        if st.req_end and st.resp_end:
            self._finish(st)

    @staticmethod
    def _count(st: _Stream, from_client: bool, size: int | None) -> None:
        if from_client:
            st.req_bytes = None if st.req_bytes is None or size is None else st.req_bytes + size
        else:
            st.resp_bytes = None if st.resp_bytes is None or size is None else st.resp_bytes + size

    def _open(self, sid: int, ts: int) -> _Stream:
        st = self.streams[sid] = _Stream(sid, ts)
        if sid > self.max_sid:
            self.max_sid = sid
        if len(self.streams) > MAX_STREAMS:
            oldest = next(iter(self.streams.values()))
            self.stats.add("http2_streams_evicted")
            self._finish(oldest)
        return st

    # --- header blocks ---------------------------------------------------------------------

    def _block_done(self, d: _Direction) -> None:
        block, d.block = d.block, None
        sid, ts, hflags = d.block_sid, d.block_ts, d.block_flags
        fields: list[tuple[str | None, str | None]] = []
        partial = False
        if d.block_lost or block is None:
            d.hpack.lose()
            partial = True
        else:
            try:
                fields, partial = d.hpack.decode(bytes(block))
            except HpackError:
                self.stats.add("http2_malformed")
                d.hpack.lose()
                fields, partial = [], True
        if hflags < 0:
            return  # PUSH_PROMISE: decoded for the table's sake only
        st = self.streams.get(sid)
        if st is None:
            if not d.from_client and sid & 1 and sid > self.max_sid:
                self.stats.add("http2_orphan_streams")  # a response whose request was not seen
            return  # (a client's HEADERS opened its stream in _frame_bytes; even ids are server pushes)
        st.partial = st.partial or partial
        got = {n: v for n, v in fields if n is not None and v is not None}
        if d.from_client:
            if not st.req_seen:  # (a second block is the request's trailers: not used)
                st.req_seen, st.req = True, got
        else:
            status = got.get(":status")
            code = None if status is None else _number(status)
            if not st.resp_seen or (st.status is not None and 100 <= st.status < 200 and code is not None):
                # the first response block, or the final one after an interim 1xx
                st.resp_seen, st.resp, st.status = True, got, code
                if code is None or code >= 200:
                    st.ts_response = ts  # (a block whose status is unknown: the best time known)
            if "grpc-status" in got:  # trailers, or a Trailers-Only response
                gs = _number(got["grpc-status"])
                if gs is not None:
                    st.grpc_status = gs
                else:
                    self.stats.add("http2_malformed")
                st.grpc_message = got.get("grpc-message")
        if hflags & END_STREAM:
            self._end(st, d.from_client)

    # --- rows ------------------------------------------------------------------------------

    def _finish(self, st: _Stream) -> None:
        self.lingering.pop(st.sid, None)
        if self.streams.pop(st.sid, None) is None:
            return
        self.done.append(self._row(st))

    def _take(self) -> list[tuple]:
        rows, self.done = self.done, []
        return rows

    def _row(self, st: _Stream) -> tuple:
        q, r = st.req, st.resp
        host_ok, trace_ok, agent_ok, ctype_ok, msg_ok, state_ok = self._allow
        path = q.get(":path")
        ctype_req = q.get("content-type") or ""
        ctype = r.get("content-type")
        service = method = None
        grpc = ctype_req.startswith("application/grpc") or (ctype or "").startswith("application/grpc")
        if grpc and path and path.startswith("/") and path.count("/") == 2:
            service, method = path[1:].split("/")
        partial = st.partial
        if partial:
            self.stats.add("http2_headers_partial")
        message = st.grpc_message
        if message is not None:
            message = unquote(message, errors="replace") if msg_ok else None  # gRPC percent-encodes UTF-8; bytes that are not: U+FFFD (a Parquet string must be UTF-8)
        return (
            st.ts_request,
            st.ts_response,
            None if st.ts_response is None else st.ts_response - st.ts_request,
            "HTTP/2",
            q.get(":method"),
            None if path is None else self.redaction.path(path),
            st.status,
            st.req_bytes if st.req_end or st.error else None,
            st.resp_bytes if st.resp_end or st.error else None,
            (q.get(":authority") or q.get("host")) if host_ok else None,
            q.get("traceparent") if trace_ok else None,
            q.get("user-agent") if agent_ok else None,
            ctype if ctype_ok else None,
            q.get("tracestate") if state_ok else None,
            None,  # request_seq, response_seq: not derived for HTTP/2 (frames of many streams share segments)
            None,
            st.sid,
            service,
            method,
            st.grpc_status if grpc else None,
            message if grpc else None,
            st.error,
            partial,
        )


def _number(text: str) -> int | None:
    """A status code's value: 1 to 18 ASCII digits, else None. (str.isdigit alone also accepts
    "\u00b2", which int() refuses, and int() refuses more than 4300 digits: both raised here once.)"""
    return int(text) if 0 < len(text) <= 18 and text.isascii() and text.isdigit() else None


def _plausible(ftype: int, sid: int, length: int) -> bool:
    if ftype in (DATA, HEADERS, PRIORITY, RST_STREAM, CONTINUATION, PUSH_PROMISE):
        if sid == 0:
            return False
    elif sid != 0 and ftype in (SETTINGS, PING, GOAWAY):
        return False
    fixed = {PRIORITY: 5, RST_STREAM: 4, PING: 8, WINDOW_UPDATE: 4}.get(ftype)
    if fixed is not None and length != fixed:
        return False
    return not (ftype == SETTINGS and length % 6)


def looks_like_frames(data: bytes) -> bool:
    """Whether `data` starts with a chain of plausible HTTP/2 frame headers to its end (a stream
    joined mid-way, e.g. TLS plaintext of a connection older than the recording)."""
    n, pos, frames = len(data), 0, 0
    while pos + 9 <= n:
        length = data[pos] << 16 | data[pos + 1] << 8 | data[pos + 2]
        ftype, sid = data[pos + 3], int.from_bytes(data[pos + 5 : pos + 9], "big")
        if ftype > CONTINUATION or sid & 0x80000000 or length > MAX_PLAUSIBLE_FRAME or not _plausible(ftype, sid, length):
            return False
        frames += 1
        pos += 9 + length
    return frames > 0 and (pos >= n or n - pos < 9)


def grpc_status_name(code: int | None) -> str | None:
    """The name of a gRPC status code (grpc/doc/statuscodes.md), or None."""
    if code is None:
        return None
    return GRPC_CODES[code] if 0 <= code < len(GRPC_CODES) else str(code)


GRPC_CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
              "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
              "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")


def exchange_fields() -> tuple[str, ...]:
    from .http_pairing import EXCHANGE_FIELDS

    return EXCHANGE_FIELDS + H2_FIELDS


def as_dicts(rows: list[tuple]) -> list[dict[str, Any]]:
    """Row tuples as dicts (tests, debugging)."""
    names = exchange_fields()
    return [dict(zip(names, r)) for r in rows]


# --- which implementation runs -------------------------------------------------------------------

ALLOW_HEADERS = ("host", "traceparent", "user-agent", "content-type", "grpc-message", "tracestate")  # H2Connection._allow, in this order


def allow_mask(redaction: Redaction) -> int:
    """Bit i set: ALLOW_HEADERS[i] is written (capture/decode/_http2.c's `allow`)."""
    return sum(1 << i for i, h in enumerate(ALLOW_HEADERS) if redaction.allows(h))


def decoder_in_use() -> str:
    """'c' when connection_factory() makes compiled decoders, else 'python' (and why).
    FLOWTAPE_HTTP_DECODER=python selects the Python decoders of HTTP/1 and HTTP/2 alike."""
    if _http2 is None:
        return "python (capture/decode/_http2.c was not built: install gcc and python3-dev, then reinstall flowtape)"
    if os.environ.get("FLOWTAPE_HTTP_DECODER", "").lower() == "python":
        return "python (FLOWTAPE_HTTP_DECODER=python)"
    return "c"


def connection_factory(stats: DecodeStats, redaction: Redaction) -> Callable[..., Any]:
    """Makes HTTP/2 connection decoders, called as factory() or factory(at_start=False): the
    compiled one (capture/decode/_http2.c, the same rows and counts) unless it is missing or
    FLOWTAPE_HTTP_DECODER=python. Decided once, here, not per connection."""
    if decoder_in_use() == "c":
        return functools.partial(_http2.H2Connection, stats, redaction.enabled, allow_mask(redaction))
    return functools.partial(H2Connection, stats, redaction)
