"""Bad input for the HTTP/2 decoder: never an exception, never unbounded state, every problem
counted (DecodeStats -> the manifest). Seeded with the real capture (tests/data/h2c.pcap)."""

from __future__ import annotations

import struct

import hpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowtape.capture.decode import http2
from flowtape.capture.decode.http2 import H2Connection, HpackReader
from flowtape.capture.decode.http_pairing import H2_PREFACE
from flowtape.capture.decode.stats import DecodeStats

from test_decode_http2 import connections

SEEDS = list(connections().values())


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def bounded(c: H2Connection) -> None:
    assert len(c.streams) <= http2.MAX_STREAMS
    for d in c.dirs:
        assert d.hpack.size <= http2.MAX_TABLE + 4096 and len(d.payload) <= http2.MAX_HEADER_BLOCK
        assert d.block is None or len(d.block) <= http2.MAX_HEADER_BLOCK


def feed_all(c: H2Connection, parts) -> list:
    rows = []
    for ts, (data, fc, hidden) in enumerate(parts):
        rows += c.feed_tuples(ts, data, fc, len(data) + hidden)
        bounded(c)
    return rows + c.close_tuples(len(parts))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.binary(max_size=300), st.booleans(), st.integers(0, 50)), max_size=20), st.booleans())
def test_random_bytes_never_raise(parts, at_start):
    c = H2Connection(DecodeStats(), at_start=at_start)
    rows = feed_all(c, parts)
    assert all(len(r) == 20 for r in rows)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(SEEDS) - 1), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(1, 64))
def test_mutated_real_connections_never_raise(which, flips, split):
    segs = SEEDS[which]
    stream = [(bytearray(d), fc) for _, d, fc in segs]
    for pos, val in flips:  # flip bytes anywhere in the connection
        k = pos % len(stream)
        if stream[k][0]:
            stream[k][0][pos % len(stream[k][0])] = val
    c = H2Connection(DecodeStats())
    parts = [(bytes(d[i : i + split * 17]), fc, 0) for d, fc in stream for i in range(0, len(d), split * 17)]
    feed_all(c, parts)


def test_continuation_flood_is_cut_at_64_kib_and_counted():
    stats = DecodeStats()
    c = H2Connection(stats)
    enc = hpack.Encoder()
    block = enc.encode([(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")])
    data = H2_PREFACE + frame(http2.HEADERS, 0, 1, block)
    data += b"".join(frame(http2.CONTINUATION, 0, 1, b"\x00" * 1024) for _ in range(200))  # 200 KiB, never END_HEADERS...
    c.feed_tuples(0, data, True)
    bounded(c)
    c.feed_tuples(1, frame(http2.CONTINUATION, http2.END_HEADERS, 1, b""), True)
    assert stats["http2_header_block_too_large"] == 1
    rows = http2.as_dicts(c.close_tuples(2))
    assert len(rows) == 1 and rows[0]["headers_partial"] is True and rows[0]["method"] is None  # its fields were dropped, not guessed


def test_table_size_bomb_and_invalid_huffman_are_malformed():
    r = HpackReader()
    for bad in (b"\x3f\xe1\xff\xff\xff\x0f",  # size update to ~2^32 (limit 4096)
                b"\x40\x81\xff\x01a",  # a literal name whose Huffman code is all ones (EOS): invalid
                b"\x80",  # index 0
                b"\x41\x7f",  # a string longer than the block
                b"\xff" + b"\xff" * 20):  # an integer that never ends
        try:
            r.decode(bad)
        except http2.HpackError:
            continue
        raise AssertionError(f"{bad!r} decoded")
    stats = DecodeStats()
    c = H2Connection(stats)
    c.feed_tuples(0, H2_PREFACE + frame(http2.HEADERS, http2.END_HEADERS | http2.END_STREAM, 1, b"\x3f\xe1\xff\xff\xff\x0f"), True)
    assert stats["http2_malformed"] == 1 and not c.dirs[1].hpack.complete  # the table is unknown after a bad block


def test_indexed_reference_bomb_keeps_at_most_64_kib_of_fields():
    enc = hpack.Encoder()
    first = enc.encode([("x-big", "v" * 4000)])
    r = HpackReader()
    r.decode(first)
    fields, _ = r.decode(b"\xbe" * 60_000)  # 60k references to the 4 KB entry: 240 MB if all were kept
    assert sum(len(n) + len(v) for n, v in fields) <= http2.MAX_HEADER_LIST


def test_rst_stream_storm_and_too_many_open_streams_stay_bounded():
    stats = DecodeStats()
    c = H2Connection(stats)
    enc = hpack.Encoder()
    out = [H2_PREFACE]
    for i in range(3000):  # rapid reset: open a stream and reset it at once
        sid = 2 * i + 1
        out.append(frame(http2.HEADERS, http2.END_HEADERS, sid, enc.encode([(":method", "GET"), (":path", "/r"), (":scheme", "http"), (":authority", "x")])))
        out.append(frame(http2.RST_STREAM, 0, sid, struct.pack(">I", 8)))
    rows = c.feed_tuples(0, b"".join(out), True)
    # reset streams wait for the server's last frames, but never more than MAX_STREAMS of them
    assert len(c.lingering) == len(c.streams) == http2.MAX_STREAMS and len(rows) == 3000 - http2.MAX_STREAMS
    rows += c.feed_tuples(2 * 10**9, b"", True, 0) + c.feed_tuples(2 * 10**9, frame(http2.PING, 0, 0, bytes(8)), False)
    rows += c.close_tuples(3 * 10**9)
    assert len(rows) == 3000 and {r[http2.exchange_fields().index("stream_error")] for r in rows} == {"CANCEL"}
    assert stats["http2_streams_evicted"] == 3000 - http2.MAX_STREAMS and not c.streams and not c.lingering
