"""capture/decode/_http2.c (the compiled HTTP/2 decoder) against its reference, http2.H2Connection.

Both get the same connections — the real capture (tests/data/h2c.pcap) whole, split down to a
byte at a time, cut at the capture prefix, joined at every segment, with each segment lost in
turn; the inputs of tests/test_decode_http2.py and tests/test_decode_http2_fuzz.py (bombs, floods,
storms, random and mutated bytes); generated connections from tests/h2_corpus.py — and must
return identical row tuples after every segment and identical DecodeStats counts. Then the
recorder's L7Decoder with the compiled record loop, with records read in Python, and all in
Python must write the same rows; and the corpus runs through a copy built with AddressSanitizer.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import hpack
import pyarrow as pa
import pytest
from ebpf_support import in_ci
from hypothesis import HealthCheck, given, settings, strategies as st

from flowtape.capture.decode import http2
from flowtape.capture.decode.http2 import H2Connection, allow_mask
from flowtape.capture.decode.http_pairing import H2_PREFACE, Redaction
from flowtape.capture.decode.stats import DecodeStats
from h2_corpus import frame, generated_connection, random_connection, run
from test_decode_http2 import GRPC_PORT, _records, connections
import sanitizer

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

if http2._http2 is None:
    reason = "capture/decode/_http2.c is not built (no C compiler when flowtape was installed; scripts/bootstrap.sh installs gcc and python3-dev)"
    if in_ci():
        pytest.fail(f"CI host: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

Compiled = http2._http2.H2Connection
REDACTIONS = [Redaction(), Redaction(enabled=False), Redaction.from_settings(False, ["host"]), Redaction.from_settings(False, [])]
SEEDS = list(connections().values())
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def both(steps, redaction: Redaction = Redaction(enabled=False), at_start: bool = True):
    py_stats, c_stats = DecodeStats(), DecodeStats()
    py = run(H2Connection(py_stats, redaction, at_start=at_start), steps)
    c_conn = Compiled(c_stats, redaction.enabled, allow_mask(redaction), at_start=at_start)
    c = run(c_conn, steps)
    bounded(c_conn)
    return (py, +py_stats.counts), (c, +c_stats.counts)


def same(steps, redaction: Redaction = Redaction(enabled=False), at_start: bool = True) -> list:
    py, c = both(steps, redaction, at_start)
    assert c == py
    return [r for rows in py[0] for r in rows]


def bounded(c) -> None:
    streams, lingering, dirs = c._state()
    assert streams <= http2.MAX_STREAMS and lingering <= streams
    for size, entries, payload, block in dirs:
        assert size <= http2.MAX_TABLE and payload <= http2.MAX_HEADER_BLOCK and block <= http2.MAX_HEADER_BLOCK


def steps_of(segs, split: int | None = None) -> list:
    out = []
    for ts, d, fc in segs:
        if split is None:
            out.append((ts, d, fc, None))
        else:
            out += [(ts, d[i : i + split], fc, None) for i in range(0, len(d), split)]
    return out


def test_factory_makes_the_compiled_one_unless_told(monkeypatch):
    monkeypatch.delenv("FLOWTAPE_HTTP_DECODER", raising=False)
    assert http2.decoder_in_use() == "c"
    assert isinstance(http2.connection_factory(DecodeStats(), Redaction())(), Compiled)
    assert isinstance(http2.connection_factory(DecodeStats(), Redaction())(at_start=False), Compiled)
    monkeypatch.setenv("FLOWTAPE_HTTP_DECODER", "python")
    assert http2.decoder_in_use() == "python (FLOWTAPE_HTTP_DECODER=python)"
    assert isinstance(http2.connection_factory(DecodeStats(), Redaction())(), H2Connection)


# --- the real capture, and every input of tests/test_decode_http2.py ------------------------------

@pytest.mark.parametrize("split", [None, 1, 7, 100, 1448])
@pytest.mark.parametrize("redaction", REDACTIONS, ids=["default", "no-redact", "host-only", "no-headers"])
def test_real_capture_same_rows(split, redaction):
    rows = [r for segs in SEEDS for r in same(steps_of(segs, split), redaction)]
    assert len(rows) == 29  # 4 curl, 20 h2load, 5 gRPC streams (test_decode_http2: each equals tshark)
    if redaction.allows("grpc-message"):
        assert {r[20] for r in rows if r[17]} >= {"no such key: k1", "backend down"}  # unquoted
    else:
        assert {r[20] for r in rows} == {None}


@pytest.mark.parametrize("prefix", [0, 9, 30, 512, 2048])
def test_segments_cut_at_the_capture_prefix(prefix):
    for segs in SEEDS:
        same([(ts, d[:prefix], fc, len(d)) for ts, d, fc in segs])


def test_joined_mid_connection_at_every_segment():
    for segs in SEEDS:
        for k in range(1, len(segs)):
            same(steps_of(segs[k:]), at_start=False)
            same(steps_of(segs[k:], 100), Redaction(), at_start=False)


def test_each_segment_lost_in_turn():
    for segs in SEEDS:
        for k in range(len(segs)):
            same([(ts, b"" if i == k else d, fc, len(d)) for i, (ts, d, fc) in enumerate(segs)])


def test_bytes_not_captured_inside_a_data_frame():
    segs = next(s for s in SEEDS if sum(len(d) for _, d, fc in s if not fc) > 40000)
    big = max(range(len(segs)), key=lambda i: len(segs[i][1]))
    for keep in (200, 1000, 5000):
        steps = []
        for i, (t, d, f) in enumerate(segs):
            steps += [(t, d[:keep], f, len(d) - 10), (t, d[len(d) - 10 :], f, None)] if i == big else [(t, d, f, None)]
        rows = same(steps)
        assert len(rows) == len(same(steps_of(segs)))


# --- every input of tests/test_decode_http2_fuzz.py -------------------------------------------

@FUZZ
@given(st.lists(st.tuples(st.binary(max_size=300), st.booleans(), st.integers(0, 50)), max_size=20), st.booleans())
def test_random_bytes(parts, at_start):
    same([(ts, d, fc, len(d) + hidden) for ts, (d, fc, hidden) in enumerate(parts)], at_start=at_start)


@FUZZ
@given(st.integers(0, len(SEEDS) - 1), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(1, 64))
def test_mutated_real_connections(which, flips, split):
    stream = [(ts, bytearray(d), fc) for ts, d, fc in SEEDS[which]]
    for pos, val in flips:
        k = pos % len(stream)
        if stream[k][1]:
            stream[k][1][pos % len(stream[k][1])] = val
    same([(ts, bytes(d[i : i + split * 17]), fc, None) for ts, d, fc in stream for i in range(0, len(d), split * 17)])


def _hdrs(enc, sid, flags=0x4, ftype=http2.HEADERS):
    return frame(ftype, flags, sid, enc.encode([(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")]))


def test_continuation_flood():
    data = H2_PREFACE + _hdrs(hpack.Encoder(), 1, 0) + b"".join(frame(http2.CONTINUATION, 0, 1, b"\x00" * 1024) for _ in range(200))
    rows = same([(0, data, True, None), (1, frame(http2.CONTINUATION, http2.END_HEADERS, 1, b""), True, None)])
    assert len(rows) == 1 and rows[0][22] is True and rows[0][4] is None


@pytest.mark.parametrize("block", [b"\x3f\xe1\xff\xff\xff\x0f", b"\x40\x81\xff\x01a", b"\x80", b"\x41\x7f", b"\xff" + b"\xff" * 20,
                                   b"\x3f\xe1\xff\xff\xff\xff\x0f", b"\x1f\xff\xff\xff\xff\xff\x01", b"\x00\x81\xff\x81\xff", b"\x82\x20\x84"])
def test_hpack_errors_and_size_bombs(block):
    enc = hpack.Encoder()
    for at_start in (True, False):
        steps = [(0, H2_PREFACE + frame(http2.HEADERS, 0x5, 1, block) + _hdrs(enc, 3), True, None),
                 (1, frame(http2.HEADERS, 0x5, 1, b"\x88") + frame(http2.HEADERS, 0x5, 3, block), False, None)]
        same(steps, at_start=at_start)


def test_indexed_reference_bomb():
    enc = hpack.Encoder()
    first = enc.encode([(":method", "GET"), (":path", "/"), ("x-big", "v" * 4000), ("user-agent", "ua")])
    bomb = b"\xbf" * 20 + b"\xbe" * 60_000 + b"\xc0"  # 60k references to the 4 KB entry, then user-agent past the 64 KiB cut
    steps = [(0, H2_PREFACE + frame(http2.HEADERS, 0x5, 1, first), True, None),
             (1, frame(http2.HEADERS, 0x5, 3, bomb[:16000]), True, None)]
    same(steps)
    cont = frame(http2.HEADERS, 0x1, 3, bomb[:16000]) + b"".join(frame(http2.CONTINUATION, 0x4 if i + 16000 >= len(bomb) else 0, 3,
                                                                          bomb[i : i + 16000]) for i in range(16000, len(bomb), 16000))
    same([steps[0], (1, cont, True, None)])


def test_rst_stream_storm_and_too_many_open_streams():
    enc = hpack.Encoder()
    out = [H2_PREFACE]
    for i in range(3000):
        out += [_hdrs(enc, 2 * i + 1), frame(http2.RST_STREAM, 0, 2 * i + 1, struct.pack(">I", 8))]
    steps = [(0, b"".join(out), True, None), (2 * 10**9, b"", True, 0), (2 * 10**9, frame(http2.PING, 0, 0, bytes(8)), False, None)]
    rows = same(steps)
    assert len(rows) == 3000 and {r[21] for r in rows} == {"CANCEL"}


def test_reset_then_late_trailers_and_unknown_error_codes():
    ce, se = hpack.Encoder(), hpack.Encoder()
    req = frame(http2.HEADERS, 0x4, 1, ce.encode([(":method", "POST"), (":path", "/p.S/M"), ("content-type", "application/grpc")]))
    resp = frame(http2.HEADERS, 0x4, 1, se.encode([(":status", "200"), ("content-type", "application/grpc")]))
    trailers = frame(http2.HEADERS, 0x5, 1, se.encode([("grpc-status", "4"), ("grpc-message", "deadline%20passed")]))
    for code in (8, 0, 13, 14, 0xdead):
        rst = frame(http2.RST_STREAM, 0, 1, struct.pack(">I", code))
        for late in (1, 2 * 10**9):
            rows = same([(0, H2_PREFACE + req, True, None), (5, resp, False, None), (10, rst, True, None), (10 + late, trailers, False, None)])
            assert len(rows) == 1 and rows[0][21] is not None


def test_a_grpc_message_that_is_not_utf8_is_written():
    """gRPC percent-encodes UTF-8; bytes that are not UTF-8 become U+FFFD in both decoders, so
    the row still goes to Parquet (whose strings are UTF-8: a lone surrogate made to_arrow fail)."""
    ce, se = hpack.Encoder(), hpack.Encoder()
    req = frame(http2.HEADERS, 0x4, 1, ce.encode([(":method", "POST"), (":path", "/p.S/M"), ("content-type", "application/grpc")]))
    resp = frame(http2.HEADERS, 0x4, 1, se.encode([(":status", "200"), ("content-type", "application/grpc")]))
    trailers = frame(http2.HEADERS, 0x5, 1, se.encode([("grpc-status", "13"), ("grpc-message", "bad%ff%FEend%E2%82%AC")]))
    rows = same([(0, H2_PREFACE + req, True, None), (5, resp + trailers, False, None)])
    assert len(rows) == 1 and rows[0][20] == "bad\ufffd\ufffdend\u20ac"
    assert pa.array([r for r in rows[0] if isinstance(r, str)], pa.string()) is not None


# --- generated connections (tests/h2_corpus.py) -----------------------------------------------

@FUZZ
@given(st.randoms(use_true_random=False), st.sampled_from(REDACTIONS))
def test_random_connections_same_output(rng, redaction):
    steps, at_start = random_connection(rng, SEEDS)
    same(steps, redaction, at_start)


def test_corpus_covers_the_rules():
    """The generator reaches every column and counter the decoder has (or the fuzz proves little)."""
    rng = random.Random(7)
    rows, counts = [], DecodeStats().counts
    for _ in range(300):
        steps, at_start = random_connection(rng, SEEDS)
        (py, stats), _ = both(steps, at_start=at_start)
        rows += [r for x in py for r in x]
        counts.update(stats)
    assert all(counts[n] for n in ("http2_malformed", "http2_desync", "http2_orphan_streams", "http2_mid_connection",
                                   "http2_headers_partial", "http2_header_block_too_large"))
    cols = list(zip(*rows))
    for i in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 17, 18, 19, 20, 21):
        assert any(v is not None for v in cols[i]), http2.exchange_fields()[i]
    assert True in cols[22] and False in cols[22]
    assert {"CANCEL", "NO_ERROR", "0x63"} <= set(cols[21])


# --- through the recorder's L7Decoder: the compiled record loop, records in Python, all Python ------

def _decode_records(records, endpoints, mode, monkeypatch) -> tuple:
    from flowtape.capture.live.l7 import L7Decoder

    if mode == "python":
        monkeypatch.setenv("FLOWTAPE_HTTP_DECODER", "python")
    else:
        monkeypatch.delenv("FLOWTAPE_HTTP_DECODER", raising=False)
    dec = L7Decoder("n", 0, redaction=Redaction())
    assert (dec._h2_type is None) == (mode == "python")
    if mode == "records-in-python":
        dec._fast_http = None
    for e in endpoints:
        dec.add_endpoint(e)
    rows = []
    for i in range(0, len(records), 50):
        dec.feed_batch(records[i : i + 50])
        rows += list(dec.take_rows(dec.last_ts)["http"])
    rows += list(dec.take_rows(dec.last_ts + 10**10, final=True)["http"])
    return rows, +dec.stats.counts, dec.lost_counters()


def test_l7_decoder_three_ways(monkeypatch):
    from flowtape.capture.live.l7 import Endpoint

    rng = random.Random(3)
    base = SEEDS[0][0][0]  # generated connections at the capture's time (flows idle for 5 minutes are ended)
    conns = list(connections().items()) + [((30000 + i, 9000), [(base + t, d, fc) for t, d, fc, _ in generated_connection(rng)])
                                           for i in range(20)]
    per_flow, endpoints = [], []
    for (cport, sport), segs in conns:
        t0 = segs[0][0] - 1000
        endpoints += [Endpoint(cport, "client", t0, "198.18.0.2", cport, "198.18.0.1", sport, 1, "cli", cport),
                      Endpoint(sport * 100000 + cport, "server", t0, "198.18.0.1", sport, "198.18.0.2", cport, 2, "srv", sport * 100000 + cport)]
        per_flow.append(_records(segs, cport, sport))
    records = []
    while any(per_flow):  # the flows interleaved, each in its order
        recs = rng.choice([r for r in per_flow if r])
        records.append(recs.pop(0))
    compiled = _decode_records(records, endpoints, "compiled", monkeypatch)
    assert len(compiled[0]) > 2 * 29 and compiled[1]["http2_connections"] == len(conns)
    assert compiled == _decode_records(records, endpoints, "records-in-python", monkeypatch)
    assert compiled == _decode_records(records, endpoints, "python", monkeypatch)


def test_l7_decoder_tls_plaintext_three_ways(monkeypatch):
    from flowtape.capture.live.l7 import SSL_READ, SSL_WRITE, Endpoint, c_header_class

    event = c_header_class()
    segs = next(s for (c, p), s in connections().items() if p == GRPC_PORT)
    sk = 0xFFFF0000AA
    records = []
    for ts, data, fc in segs:
        for i in range(0, len(data), 2048):
            chunk = data[i : i + 2048]
            ev = event()
            ev.ts_ns, ev.skaddr, ev.ssl, ev.pid, ev.kind = ts, sk, 0x5000, 7, SSL_WRITE if fc else SSL_READ
            ev.length = ev.cap_len = len(chunk)
            ev.comm = b"cli"
            ev.data[: len(chunk)] = list(chunk)
            records.append(bytes(ev))
    endpoints = [Endpoint(sk, "client", segs[0][0] - 1000, "198.18.0.2", 41000, "198.18.0.1", 443, 7, "cli", 9)]
    compiled = _decode_records(records, endpoints, "compiled", monkeypatch)
    assert len(compiled[0]) == 5 and all(r["tls"] for r in compiled[0])
    assert compiled == _decode_records(records, endpoints, "records-in-python", monkeypatch)
    assert compiled == _decode_records(records, endpoints, "python", monkeypatch)


# --- under AddressSanitizer ---------------------------------------------------------------------

ASAN_SCRIPT = """
import random, sys
sys.path.insert(0, {tests!r})
import _http2_asan
from flowtape.capture.decode.http2 import H2Connection, allow_mask
from flowtape.capture.decode.http_pairing import Redaction
from flowtape.capture.decode.stats import DecodeStats
from h2_corpus import random_connection, run
from test_decode_http2 import connections
seeds = list(connections().values())
rng = random.Random(11)
reds = [Redaction(), Redaction(enabled=False), Redaction.from_settings(False, ["host"])]
for i in range({n}):
    steps, at_start = random_connection(rng, seeds)
    red = reds[i % 3]
    ps, cs = DecodeStats(), DecodeStats()
    py = run(H2Connection(ps, red, at_start=at_start), steps)
    c = run(_http2_asan.H2Connection(cs, red.enabled, allow_mask(red), at_start=at_start), steps)
    if py != c or +ps.counts != +cs.counts:
        print("MISMATCH", i)
        sys.exit(3)
print("ok", {n})
"""


def test_under_address_sanitizer(tmp_path):
    sanitizer.require_gcc("capture/decode/_http2.c")
    # a read past the end of every segment
    anchor = "    Py_ssize_t pos = 0;\n    if (d->preface) {"
    sanitizer.build(tmp_path, "capture/decode/_http2.c", "_http2_planted", (anchor, "    { volatile unsigned char z = data[n + 8]; (void)z; }\n" + anchor))
    planted = sanitizer.run(tmp_path, "import _http2_planted; _http2_planted.H2Connection(None).feed_tuples(1, b'PRI * HTTP/2.0', True)")
    assert planted.returncode == 86 and "heap-buffer-overflow" in planted.stderr, planted.stderr[-2000:]
    sanitizer.build(tmp_path, "capture/decode/_http2.c", "_http2_asan")
    n = 400
    result = sanitizer.run(tmp_path, ASAN_SCRIPT.format(tests=str(HERE), n=n))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert f"ok {n}" in result.stdout


def test_without_the_compiled_decoder_the_python_one_runs_and_says_so(monkeypatch):
    """No C compiler at install: _http2 is missing; the recorder decodes HTTP/2 in Python and its
    manifest's http_decoder says why (flowtape record warns when it is not 'c')."""
    from flowtape.capture.live.l7 import Endpoint, L7Decoder

    monkeypatch.delenv("FLOWTAPE_HTTP_DECODER", raising=False)
    monkeypatch.setattr(http2, "_http2", None)
    assert http2.decoder_in_use().startswith("python (capture/decode/_http2.c was not built")
    dec = L7Decoder("n", 0, redaction=Redaction())
    assert dec._h2_type is None and dec.http_decoder.startswith("c, HTTP/2 python (capture/decode/_http2.c was not built")
    (cport, sport), segs = next(iter(connections().items()))
    dec.add_endpoint(Endpoint(cport, "client", segs[0][0] - 1000, "198.18.0.2", cport, "198.18.0.1", sport, 1, "cli", cport))
    dec.feed_batch(_records(segs, cport, sport))
    rows = list(dec.take_rows(final=True)["http"])
    assert rows and [r["stream_id"] for r in rows] == [r[16] for r in same(steps_of(segs))]
