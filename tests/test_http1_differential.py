"""capture/decode/_http1.c (the compiled HTTP/1.x decoder) against its reference, http_pairing.HttpConnection.

Both get the same streams — the real capture at every prefix, generated exchanges covering
every framing rule, mutations, random bytes — and must return identical row tuples after
every segment, identical body_remaining and identical DecodeStats counts. The same corpus
then runs through a copy built with AddressSanitizer and UndefinedBehaviorSanitizer.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from ebpf_support import in_ci
from hypothesis import HealthCheck, given, settings, strategies as st

from flowtape.capture.decode import http_pairing
from flowtape.capture.decode.stats import DecodeStats
from flowtape.capture.decode.http_pairing import HttpConnection, Redaction, header_mask
from http1_corpus import CLIENT_SEQ, SEEDS, SERVER_SEQ, random_stream, run
from pcap_seeds import segments
import sanitizer

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

if http_pairing._http1 is None:
    reason = "capture/decode/_http1.c is not built (no C compiler when flowtape was installed; scripts/bootstrap.sh installs gcc and python3-dev)"
    if in_ci():
        pytest.fail(f"CI host: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

Compiled = http_pairing._http1.Http1Connection
REDACTIONS = [Redaction(), Redaction(enabled=False), Redaction.from_settings(False, ["host"]), Redaction.from_settings(False, [])]


def both(steps, redaction: Redaction = Redaction()):
    py_stats, c_stats = DecodeStats(), DecodeStats()
    py = run(HttpConnection(py_stats, redaction), steps)
    c = run(Compiled(c_stats, redaction.enabled, header_mask(redaction)), steps)
    return (py, +py_stats.counts), (c, +c_stats.counts)


def test_new_connection_is_the_compiled_one(monkeypatch):
    assert isinstance(http_pairing.new_connection(DecodeStats(), Redaction()), Compiled)
    assert http_pairing.decoder_in_use() == "c"
    monkeypatch.setenv("FLOWTAPE_HTTP_DECODER", "python")
    assert isinstance(http_pairing.new_connection(DecodeStats(), Redaction()), HttpConnection)


@pytest.mark.parametrize("prefix", [None, 1, 7, 16, 40, 77, 100, 127, 128, 200, 256, 512])
@pytest.mark.parametrize("redaction", REDACTIONS, ids=["default", "no-redact", "host-only", "no-headers"])
def test_real_capture_same_rows(prefix, redaction):
    by_port: dict[int, list] = {}
    for s in segments("http"):
        from_client = s.dst_port == 8080
        data = s.payload if prefix is None else s.payload[:prefix]
        by_port.setdefault(s.src_port if from_client else s.dst_port, []).append((from_client, data, len(s.payload)))
    rows = 0
    for steps in by_port.values():
        py, c = both(steps, redaction)
        assert c == py
        rows += sum(len(x) for x in py[0] if isinstance(x, list))
    if prefix is None or prefix >= 127:  # the longest request line is in a 127-byte pipelined segment
        assert rows == 10


def test_known_rows():
    req = b"GET /s?q=secret&page=2 HTTP/1.1\r\nHost: h\r\nhost: k\r\nTraceparent: t\r\n\r\n"
    resp = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: x\r\nTransfer-Encoding: chunked\r\n\r\n5;e\r\nhello\r\n0\r\n\r\n"
    py, c = both([(True, req, 0), (False, resp, 0)])
    assert c == py
    assert (len(req), len(resp)) == (69, 106)
    # request_seq: the stream's first byte; response_seq: the final head's, after the 25-byte 100 Continue
    assert py[0][2] == [(1000, 1001, 1, "HTTP/1.1", "GET", "/s?q=&page=", 200, 69, 106, "h, k", "t", None, "x", None,
                         CLIENT_SEQ, SERVER_SEQ + 25)]


def test_seq_of_heads_inside_segments_and_after_gaps():
    # Pipelined requests in one segment, a head after a body in the same segment, a cut head
    # gathered over two segments, and bytes never seen (length > data): every head's sequence
    # number is its first byte's, modulo 2**32; tracestate is read like traceparent.
    r1 = b"GET /a HTTP/1.1\r\nTracestate: v=1\r\n\r\n"
    r2 = b"POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz"
    r3 = b"\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n"  # an empty line before a head is skipped
    a1 = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    a2 = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    steps = [(True, r1 + r2, 0), (True, r3[:20], 0), (True, r3[20:], 0),
             (False, a1 + b"x" * 10, len(a1) + 1000),  # the body mostly unseen
             (False, a2[:30], 0), (False, a2[30:], 0)]
    py, c = both(steps)
    assert c == py
    rows = [r for step in py[0] if isinstance(step, list) for r in step]
    seqs = [(r[5], r[13], r[14], r[15]) for r in rows]
    n1, n2 = len(r1), len(r1) + len(r2)
    m = len(a1) + 1000
    assert seqs == [("/a", "v=1", CLIENT_SEQ, SERVER_SEQ),
                    ("/b", None, (CLIENT_SEQ + n1) % 2**32, SERVER_SEQ + m),
                    ("/c", None, (CLIENT_SEQ + n2 + 2) % 2**32, SERVER_SEQ + m + len(b"HTTP/1.1 204 No Content\r\n\r\n"))]
    assert CLIENT_SEQ + n1 < 2**32 <= CLIENT_SEQ + n2 + 2  # the last one wrapped past 0


@pytest.mark.parametrize("value", ["\u00b2", "-1", "+5", "1_0", "9" * 19, "5, 6", "", " 007 "])
def test_malformed_lengths_are_counted_not_raised(value):
    # str.isdigit() takes '²' and int() then raised out of the decoder: both now count it.
    steps = [(True, b"POST / HTTP/1.1\r\nContent-Length: " + value.encode("latin-1") + b"\r\n\r\n", 0)]
    py, c = both(steps)
    assert c == py
    assert py[1]["http_malformed"] == (0 if value == " 007 " else 1)


@pytest.mark.parametrize("size", [b"-5", b"+5", b"0x5", b"1_0", b"f" * 16, b""])
def test_malformed_chunk_sizes(size):
    # int(x, 16) took signs, underscores and 0x; a negative size moved the parser backwards.
    steps = [(True, b"GET / HTTP/1.1\r\n\r\n", 0), (False, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nabcde\r\n0\r\n\r\n", 0)]
    py, c = both(steps)
    assert c == py
    assert py[1]["http_malformed"] == 1


DIFF = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@DIFF
@given(st.randoms(use_true_random=False), st.sampled_from(REDACTIONS))
def test_random_streams_same_output(rng, redaction):
    steps = random_stream(rng)
    assert both(steps, redaction)[1] == both(steps, redaction)[0]


def test_corpus_covers_the_rules():
    # The generator must reach every parser path the reference counts, or the comparison above proves little.
    totals = DecodeStats().counts
    rows = sized = 0
    rng = random.Random(7)
    for _ in range(600):
        (out, counts), _ = both(random_stream(rng))
        totals.update(counts)
        for step in out:
            if isinstance(step, list):
                rows += len(step)
                sized += sum(1 for r in step if None not in (r[6], r[7], r[8]))  # status and both sizes known
    assert rows > 600 and sized > 150
    for name in ("http_malformed", "http_desync", "http_truncated_heads", "http_orphan_responses", "http2_connections"):
        assert totals[name] > 5, name


def test_seeds_present():
    assert len(SEEDS) >= 20


ASAN_SCRIPT = """
import random, sys
sys.path.insert(0, {tests!r})
import _http1_asan
from flowtape.capture.decode.stats import DecodeStats
from flowtape.capture.decode.http_pairing import HttpConnection, Redaction, header_mask
from http1_corpus import random_stream, run
rng = random.Random(20261126)
redactions = [Redaction(), Redaction(enabled=False), Redaction.from_settings(False, [])]
for i in range({n}):
    steps = random_stream(rng)
    red = redactions[i % 3]
    ps, cs = DecodeStats(), DecodeStats()
    py = run(HttpConnection(ps, red), steps)
    c = run(_http1_asan.Http1Connection(cs, red.enabled, header_mask(red)), steps)
    if py != c or +ps.counts != +cs.counts:
        print("MISMATCH", i, steps)
        sys.exit(3)
# the compiled record loop (feed_http) too, through L7Decoder
import flowtape.capture.decode.http_pairing as hp, flowtape.capture.live.l7 as l7m
hp._http1 = l7m._http1 = _http1_asan
from test_l7_fast_path import flows_records
from flowtape.capture.live.l7 import L7Decoder
def decode(records, endpoints, fast):
    dec = L7Decoder("n", 0)
    assert dec._fast_http is _http1_asan.feed_http
    if not fast:
        dec._fast_http = None
    dec.skip_body = lambda *a: True
    for e in endpoints:
        dec.add_endpoint(e)
    rows = []
    for j in range(0, len(records), 20):
        dec.feed_batch(records[j : j + 20])
        rows += list(dec.take_rows(dec.last_ts)["http"])
    rows += list(dec.take_rows(dec.last_ts + 10**10, final=True)["http"])
    return rows, +dec.stats.counts
for i in range({n} // 10):
    records, endpoints = flows_records(rng, 4)
    if decode(records, endpoints, True) != decode(records, endpoints, False):
        print("MISMATCH in feed_http", i)
        sys.exit(3)
print("ok", {n})
"""


@pytest.mark.slow
def test_under_address_sanitizer(tmp_path):
    sanitizer.require_gcc("capture/decode/_http1.c")
    # a read past the end of every segment
    anchor = "static int is_http2(const unsigned char *d, Py_ssize_t n, int from_client) {"
    sanitizer.build(tmp_path, "capture/decode/_http1.c", "_http1_planted", (anchor, anchor + " volatile unsigned char z = d[n + 8]; (void)z;"))
    planted = sanitizer.run(tmp_path, "import _http1_planted; _http1_planted.Http1Connection(None).feed_tuples(1, b'GET / HTTP/1.1', True)")
    assert planted.returncode == 86 and "heap-buffer-overflow" in planted.stderr, planted.stderr[-2000:]

    sanitizer.build(tmp_path, "capture/decode/_http1.c", "_http1_asan")
    n = 3000
    result = sanitizer.run(tmp_path, ASAN_SCRIPT.format(tests=str(HERE), n=n))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert f"ok {n}" in result.stdout
