"""Hypothesis fuzzing of every decoder: random bytes, and mutations and cuts of real captures.

No exception may escape a decoder; bad input is counted in DecodeStats instead.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from flowtape.capture.decode.dns import DnsTcpSplitter, decode_dns
from flowtape.capture.decode.stats import LOST, NOTES, DecodeStats
from flowtape.capture.decode.tls import ClientHelloReader, decode_client_hello
from flowtape.capture.decode.dns_pairing import DnsPairer
from flowtape.capture.decode.http_pairing import HttpConnection
from pcap_seeds import segments

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DNS_SEEDS = [s.payload for s in segments("dns") if s.proto == "udp"]
HTTP_SEEDS = [(s.dst_port == 8080, s.payload) for s in segments("http")]
TLS_SEEDS = [s.payload for s in segments("tls")]


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A real payload with a few bytes flipped, inserted or deleted, then maybe cut."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            del data[i : i + draw(st.integers(1, 8))]
    return bytes(data[: draw(st.integers(0, len(data)))])


def counted(stats: DecodeStats) -> int:
    return sum(stats.counts[k] for k in LOST + NOTES)


@FUZZ
@given(st.one_of(st.binary(max_size=600), mutated(DNS_SEEDS)))
def test_dns_decoder_never_raises(data):
    stats = DecodeStats()
    msg = decode_dns(data, stats)
    if msg is None:
        assert stats["dns_malformed"] == 1
    pairer = DnsPairer(stats)
    pairer.feed_udp(1, data, "198.18.0.1", 1000, "198.18.0.2", 53)
    pairer.feed_tcp(2, data, "198.18.0.1", 1001, "198.18.0.2", 53, length=len(data) + 7)
    pairer.flush()


@FUZZ
@given(st.lists(st.tuples(st.binary(max_size=200), st.integers(0, 300)), max_size=6))
def test_dns_tcp_splitter_never_raises(chunks):
    sp = DnsTcpSplitter(DecodeStats())
    for i, (data, extra) in enumerate(chunks):
        for ts, raw, complete in sp.feed(i, data, len(data) + extra):
            assert complete or len(raw) <= 65535


@FUZZ
@given(st.lists(st.tuples(st.booleans(), st.one_of(st.binary(max_size=300), mutated([p for _, p in HTTP_SEEDS])), st.integers(0, 5000)), max_size=8))
def test_http_connection_never_raises(steps):
    stats = DecodeStats()
    conn = HttpConnection(stats)
    rows = []
    for i, (from_client, data, extra) in enumerate(steps):
        rows += conn.feed(i, data, from_client, len(data) + extra)
    rows += conn.close(len(steps))
    for r in rows:
        assert r["method"] and isinstance(r["path"], str)
        assert r["request_bytes"] is None or r["request_bytes"] > 0


@FUZZ
@given(st.integers(1, 600), st.data())
def test_http_real_streams_cut_at_any_prefix(prefix, data):
    # The real capture, each segment cut to the same prefix: rows keep their order and methods.
    conns: dict[int, HttpConnection] = {}
    rows = []
    for s in segments("http"):
        from_client = s.dst_port == 8080
        port = s.src_port if from_client else s.dst_port
        conn = conns.setdefault(port, HttpConnection())
        rows += conn.feed(s.ts_ns, s.payload[:prefix], from_client, len(s.payload))
    for conn in conns.values():
        rows += conn.close(0)
    assert len(rows) <= 10
    if prefix >= 127:  # the largest segment holding request lines is the 127-byte pipelined one
        assert [r["method"] for r in rows] == ["GET", "GET", "HEAD", "GET", "GET", "GET", "GET", "GET", "GET", "POST"]


@FUZZ
@given(st.one_of(st.binary(max_size=600), mutated(TLS_SEEDS), st.binary(max_size=300).map(lambda b: b"\x16\x03\x01" + b)))
def test_tls_decoder_never_raises(data):
    stats = DecodeStats()
    hello = decode_client_hello(data, stats)
    assert hello is None or hello.version
    reader = ClientHelloReader(stats)
    half = len(data) // 2
    reader.feed(1, data[:half])
    reader.feed(2, data[half:], len(data) - half + 1)
    reader.finish()
    assert counted(stats) >= 0
