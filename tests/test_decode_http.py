"""HTTP/1.x parsing and pairing: real nginx/curl traffic (tests/data/http.pcap) and crafted streams."""

from __future__ import annotations

from collections import defaultdict

import pytest

from flowtape.capture.decode.http1 import HttpParser
from flowtape.capture.decode.stats import DecodeStats
from flowtape.capture.decode.http_pairing import HttpConnection, Redaction, redact_query
from flowtape.conform import conform
from flowtape.schema import table
from pcap_seeds import segments

COLS = ("method", "path", "status", "request_bytes", "response_bytes")


def pick(rows, cols=COLS):
    return [tuple(r[c] for c in cols) for r in rows]


def pcap_rows(prefix: int | None = None):
    """Rows from the real capture, each segment cut to `prefix` bytes as the recorder would."""
    stats = DecodeStats()
    conns: dict[int, HttpConnection] = {}
    wire = defaultdict(lambda: [0, 0])  # client port -> [client payload bytes, server payload bytes]
    rows = []
    for s in segments("http"):
        from_client = s.dst_port == 8080
        port = s.src_port if from_client else s.dst_port
        conn = conns.setdefault(port, HttpConnection(stats, row_base={"client_port": port}))
        wire[port][0 if from_client else 1] += len(s.payload)
        data = s.payload if prefix is None else s.payload[:prefix]
        rows += conn.feed(s.ts_ns, data, from_client, len(s.payload))
    for conn in conns.values():
        rows += conn.close(0)
    return rows, stats, wire


def test_real_capture_exchanges():
    rows, stats, wire = pcap_rows()
    assert pick(rows) == [
        ("GET", "/index.html?user=&token=", 200, 183, 1380),  # keep-alive connection: GET, GET, HEAD
        ("GET", "/missing", 404, 156, 308),
        ("HEAD", "/index.html", 200, 89, 239),  # Content-Length 1140 but no body after HEAD
        ("GET", "/empty", 204, 40, 110),  # pipelined: three requests in one segment
        ("GET", "/missing", 404, 42, 308),
        ("GET", "/index.html", 200, 45, 1380),
        ("GET", "/empty", 204, 83, 110),
        ("GET", "/index.html", 304, 138, 180),
        ("GET", "/gz", 200, 103, 315),  # gzip: chunked
        ("POST", "/upload", 200, 3178, 178),  # Expect: 100-continue; 25 bytes of 100 Continue counted
    ]
    # Ground truth: each connection's payload bytes equal the sum of its exchanges' sizes.
    per_port = defaultdict(lambda: [0, 0])
    for r in rows:
        per_port[r["client_port"]][0] += r["request_bytes"]
        per_port[r["client_port"]][1] += r["response_bytes"]
    assert dict(per_port) == {k: v for k, v in wire.items()}
    first = rows[0]
    assert (first["host"], first["user_agent"], first["content_type"], first["http_version"]) == ("127.0.0.1:8080", "seed-agent/1", "text/html", "HTTP/1.1")
    assert first["traceparent"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert (first["ts_request"], first["ts_response"], first["latency_ns"]) == (1795692791573537024, 1795692791573684992, 147968)
    assert sum(stats.lost_counters().values()) == 0


def test_real_capture_with_a_128_byte_prefix():
    # Bodies are skipped by their length; heads longer than 128 bytes are cut (fields after the cut null).
    rows, stats, _ = pcap_rows(prefix=128)
    assert pick(rows, ("method", "path", "status", "request_bytes", "response_bytes")) == [
        ("GET", "/index.html?user=&token=", 200, None, None),  # request head is 183 bytes: cut
        ("GET", "/missing", 404, None, None),
        ("HEAD", "/index.html", 200, 89, None),
        ("GET", "/empty", 204, 40, 110),  # a 110-byte response: seen whole
        ("GET", "/missing", 404, 42, None),
        ("GET", "/index.html", 200, 45, None),
        ("GET", "/empty", 204, 83, 110),
        ("GET", "/index.html", 304, None, None),
        ("GET", "/gz", 200, 103, None),
        ("POST", "/upload", 200, None, None),
    ]
    # 4 request heads and 8 response heads exceed 128 bytes; the HEAD and 304 responses have no
    # body, so the stream after them is known to start a new head: no desync for those two.
    assert (stats["http_truncated_heads"], stats["http_desync"]) == (12, 10)


def test_rows_fit_the_http_table():
    rows, _, _ = pcap_rows()
    base = {"client_ip": "127.0.0.1", "server_ip": "127.0.0.1", "server_port": 8080, "side": "client", "tls": False, "conn_id": "c1", "pid": 1, "comm": "curl"}
    out = conform(table("http"), [{**r, **base} for r in rows])
    assert out.num_rows == 10


def feed_all(conn: HttpConnection, steps):
    rows = []
    for ts, data, from_client, *length in steps:
        rows += conn.feed(ts, data, from_client, *length)
    return rows


REQ = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"  # 28 bytes
OK5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"  # 38 + 5


def test_keep_alive_pairs_in_order_with_latency():
    conn = HttpConnection()
    rows = feed_all(conn, [(100, REQ, True), (150, OK5, False), (200, REQ, True), (290, OK5, False)])
    assert pick(rows, ("ts_request", "ts_response", "latency_ns", "status", "request_bytes", "response_bytes")) == [
        (100, 150, 50, 200, 28, 43),
        (200, 290, 90, 200, 28, 43),
    ]


def test_pipelining_three_requests_in_one_feed():
    conn = HttpConnection()
    reqs = b"GET /1 HTTP/1.1\r\n\r\nHEAD /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n"
    assert conn.feed(1, reqs, True) == []
    head_resp = b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n"  # a HEAD response: no body follows
    rows = conn.feed(2, OK5 + head_resp + b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", False)
    assert pick(rows) == [("GET", "/1", 200, 19, 43), ("HEAD", "/2", 200, 20, 40), ("GET", "/3", 404, 19, 45)]


def test_100_continue_then_final_response():
    conn = HttpConnection()
    rows = feed_all(conn, [
        (10, b"POST /up HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n", True),
        (20, b"HTTP/1.1 100 Continue\r\n\r\n", False),
        (30, b"data", True),
        (40, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", False),
    ])
    assert pick(rows, ("status", "ts_response", "latency_ns", "request_bytes", "response_bytes")) == [(201, 40, 30, 62 + 4, 25 + 43)]


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body_even_with_content_length(status):
    conn = HttpConnection()
    resp = b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status
    rows = feed_all(conn, [(1, REQ, True), (2, resp, False), (3, REQ, True), (4, OK5, False)])
    assert pick(rows, ("status", "response_bytes")) == [(status, len(resp)), (200, 43)]


def test_chunked_response_with_chunks_split_across_feeds():
    conn = HttpConnection()
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nTrailer: x\r\n\r\n"
    wire = head + body
    steps = [(1, REQ, True)] + [(2 + i, wire[i : i + 7], False) for i in range(0, len(wire), 7)]
    rows = feed_all(conn, steps + [(99, REQ, True), (100, OK5, False)])
    assert pick(rows, ("status", "ts_response", "response_bytes")) == [(200, 2, len(wire)), (200, 100, 43)]


def test_head_split_across_three_feeds():
    conn = HttpConnection()
    req = b"GET /split?q=1 HTTP/1.1\r\nHost: example\r\nUser-Agent: t\r\n\r\n"
    rows = feed_all(conn, [(5, req[:10], True), (6, req[10:40], True), (7, req[40:], True), (9, OK5, False)])
    assert pick(rows, ("ts_request", "path", "host", "user_agent", "request_bytes", "latency_ns")) == [(5, "/split?q=", "example", "t", len(req), 4)]


def test_body_not_seen_only_its_length_passes():
    conn = HttpConnection()
    req_head = b"PUT /blob HTTP/1.1\r\nContent-Length: 100000\r\n\r\n"
    resp_head = b"HTTP/1.1 200 OK\r\nContent-Length: 50000\r\n\r\n"
    rows = feed_all(conn, [
        (1, req_head + b"abc", True, len(req_head) + 60000),  # saw 3 body bytes of the first 60000
        (2, b"", True, 40000),  # the rest of the body, none of it seen
        (3, resp_head[:20], False, len(resp_head) + 1000),  # response head cut after its status line
    ])
    assert pick(rows) == [("PUT", "/blob", 200, len(req_head) + 100000, None)]
    conn = HttpConnection()
    rows = feed_all(conn, [
        (1, req_head + b"abc", True, len(req_head) + 60000),
        (2, b"", True, 40000),
        (3, resp_head + b"x" * 10, False, len(resp_head) + 30000),
        (4, b"", False, 20000),
        (5, REQ, True),
        (6, OK5, False),
    ])
    assert pick(rows) == [("PUT", "/blob", 200, len(req_head) + 100000, len(resp_head) + 50000), ("GET", "/a", 200, 28, 43)]


def test_cut_head_keeps_complete_lines_and_resyncs_on_next_head():
    stats = DecodeStats()
    conn = HttpConnection(stats)
    req = b"GET /x HTTP/1.1\r\nHost: h\r\nCookie: " + b"c" * 600 + b"\r\nTraceparent: t\r\n\r\n"
    rows = feed_all(conn, [(1, req[:64], True, len(req)), (2, OK5, False), (3, REQ, True), (4, OK5, False)])
    assert pick(rows, ("path", "host", "traceparent", "request_bytes", "status", "response_bytes")) == [
        ("/x", "h", None, None, 200, 43),
        ("/a", "h", None, 28, 200, 43),
    ]
    assert (stats["http_truncated_heads"], stats["http_desync"]) == (1, 1)


def test_connection_close_delimits_the_body():
    conn = HttpConnection()
    resp = b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n"
    rows = feed_all(conn, [(1, b"GET / HTTP/1.0\r\n\r\n", True), (2, resp + b"x" * 10, False), (3, b"", False, 90)])
    assert rows == []
    assert pick(conn.close(4), ("http_version", "status", "response_bytes")) == [("HTTP/1.0", 200, len(resp) + 100)]


def test_unanswered_request_at_close_has_null_response():
    conn = HttpConnection()
    conn.feed(1, REQ, True)
    assert pick(conn.close(5), ("method", "status", "ts_response", "latency_ns", "response_bytes", "request_bytes")) == [("GET", None, None, None, None, 28)]


def test_upgrade_101_stops_parsing_both_directions():
    stats = DecodeStats()
    conn = HttpConnection(stats)
    rows = feed_all(conn, [
        (1, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", True),
        (2, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello", False),
        (3, b"\x81\x85garbage", True),
    ])
    assert pick(rows, ("status", "response_bytes")) == [(101, 56)]  # the head only: frames after it are not HTTP
    assert sum(stats.lost_counters().values()) == 0


def test_garbage_and_orphans_are_counted():
    stats = DecodeStats()
    conn = HttpConnection(stats)
    assert conn.feed(1, b"\x16\x03\x01 not http\r\n\r\n", True) == []
    assert conn.feed(2, OK5, False) == []
    assert (stats["http_malformed"], stats["http_orphan_responses"]) == (1, 1)
    # A later segment that starts with a request line resynchronises the direction.
    assert pick(feed_all(conn, [(3, REQ, True), (4, OK5, False)])) == [("GET", "/a", 200, 28, 43)]


def test_redaction_settings():
    assert redact_query("/p?a=1&b&c=x=y&=z") == "/p?a=&b&c=&="
    assert redact_query("/plain") == "/plain"
    req = b"GET /s?q=secret HTTP/1.1\r\nHost: h\r\nUser-Agent: ua\r\ntraceparent: tp\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n"
    cols = ("path", "host", "user_agent", "traceparent", "content_type")
    default = feed_all(HttpConnection(), [(1, req, True), (2, resp, False)])
    assert pick(default, cols) == [("/s?q=", "h", "ua", "tp", "text/plain")]
    narrow = Redaction.from_settings(allow_list=["Host"])
    rows = feed_all(HttpConnection(redaction=narrow), [(1, req, True), (2, resp, False)])
    assert pick(rows, cols) == [("/s?q=", "h", None, None, None)]
    off = Redaction.from_settings(no_redact=True, allow_list=[])
    rows = feed_all(HttpConnection(redaction=off), [(1, req, True), (2, resp, False)])
    assert pick(rows, cols) == [("/s?q=secret", "h", "ua", "tp", "text/plain")]
    assert narrow.manifest() == {"query_strings": "values removed", "header_allow_list": ["host"], "bodies": "never stored"}
    assert off.manifest()["query_strings"] == "kept"


def test_parser_events_for_a_request_with_chunked_body():
    p = HttpParser(True)
    events = p.feed(1, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert [(kind, m.method, m.head_bytes, m.body_bytes) for kind, m in events] == [("head", "POST", 47, 13), ("end", "POST", 47, 13)]


def test_start_lines_are_checked_field_by_field():
    """The parser reads common methods, versions and statuses from lookup tables; a token valid in
    one place must still be refused in another (a response line on the request side, a method as
    a version, a status that is not three digits)."""
    from flowtape.capture.decode.http1 import HttpParser

    req, resp = HttpParser(True), HttpParser(False)
    for bad in (b"HTTP/1.1 200 OK\r\n\r\n", b"GET / GET\r\n\r\n", b"G(T / HTTP/1.1\r\n\r\n", b"GET /\r\n\r\n"):
        assert req._parse_head(1, bad) is None, bad
    for bad in (b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 99x OK\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n", b"HTTPS 200 OK\r\n\r\n"):
        assert resp._parse_head(1, bad) is None, bad
    m = req._parse_head(1, b"PROPFIND /a HTTP/1.0\r\nHost: h\r\n\r\n")
    assert (m.method, m.target, m.version, m.headers) == ("PROPFIND", "/a", "HTTP/1.0", {"host": "h"})
    m = req._parse_head(1, b"BREW /pot HTTP/1.1\r\n\r\n")  # any token is a method
    assert (m.method, m.version) == ("BREW", "HTTP/1.1")
    m = resp._parse_head(1, b"HTTP/1.1 418 I'm a teapot\r\n\r\n")
    assert (m.version, m.status) == ("HTTP/1.1", 418)
    m = resp._parse_head(1, b"HTTP/2.0 799 X\r\n\r\n")  # outside the tables, still a valid line
    assert (m.version, m.status) == ("HTTP/2.0", 799)


SETTINGS = bytes.fromhex("000012040000000000000300000064000400a00000000200000000")  # a server's first HTTP/2 frame


@pytest.mark.parametrize("client_first", [True, False])
def test_http2_connections_are_a_note_not_a_loss(client_first):
    """curl and browsers negotiate HTTP/2 over TLS (ALPN h2): its bytes are not HTTP/1.x and are
    not decoded, but they are not malformed input either. Either side may speak first."""
    stats = DecodeStats()
    conn = HttpConnection(stats)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    segments = [(True, preface[:10]), (True, preface[10:] + SETTINGS), (False, SETTINGS), (True, bytes(9)), (False, b"HTTP/1.1 200 OK\r\n\r\n")]
    if not client_first:
        segments.insert(0, segments.pop(2))
    rows = [r for from_client, data in segments for r in conn.feed(1, data, from_client)] + conn.close(2)
    assert rows == []
    assert stats.notes()["http2_connections"] == 1
    assert sum(stats.lost_counters().values()) == 0


def test_http1_is_not_taken_for_http2():
    stats = DecodeStats()
    conn = HttpConnection(stats)
    conn.feed(1, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True)
    rows = conn.feed(2, b"HTTP/1.1 204 No Content\r\n\r\n", False)
    assert [(r["method"], r["status"]) for r in rows] == [("GET", 204)]
    assert stats.notes()["http2_connections"] == 0 and sum(stats.lost_counters().values()) == 0
