"""L7Decoder on synthetic ring-buffer records (no kernel)."""

from __future__ import annotations

from flowtape.capture.live.l7 import SSL_READ, SSL_WRITE, Endpoint, L7Decoder, c_header_class

EVENT = c_header_class()
S = 10**9


def _ssl_record(kind: int, ts: int, skaddr: int, ssl: int, pid: int, data: bytes) -> bytes:
    ev = EVENT()
    ev.ts_ns, ev.skaddr, ev.ssl, ev.pid, ev.kind = ts, skaddr, ssl, pid, kind
    ev.length = ev.cap_len = len(data)
    ev.comm = b"nginx"
    ev.data[: len(data)] = list(data)
    return bytes(ev)


def test_ssl_stream_is_not_ended_by_an_earlier_socket_at_the_same_address():
    """Socket addresses are reused, and the connections probe reports an endpoint only at its
    CLOSE: a stream on a new socket must not be ended (its request then written unanswered,
    its response counted as an orphan) because an earlier socket at that address closed."""
    dec = L7Decoder("n", 0)
    sk, ssl, pid = 0xFFFF888100C1CA00, 0x5000, 42
    dec.add_endpoint(Endpoint(sk, "server", 1 * S, "10.0.0.1", 443, "10.0.0.2", 40000, pid, "nginx", 7, ts_end=2 * S))
    dec.feed(_ssl_record(SSL_READ, 5 * S, sk, ssl, pid, b"GET /f100 HTTP/1.1\r\nHost: lab\r\n\r\n"))
    dec.take_rows(5 * S + S // 2)  # housekeeping: the old endpoint closed 3 s ago
    dec.feed(_ssl_record(SSL_WRITE, 5 * S + S // 2 + 1000, sk, ssl, pid, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    dec.add_endpoint(Endpoint(sk, "server", 4 * S, "10.0.0.1", 443, "10.0.0.2", 40002, pid, "nginx", 8, ts_end=6 * S))
    rows = dec.take_rows(7 * S, final=True)["http"]
    assert [(r["method"], r["path"], r["status"], r["client_port"]) for r in rows] == [("GET", "/f100", 200, 40002)]
    assert dec.stats["http_orphan_responses"] == 0


def test_ssl_stream_ends_once_its_own_endpoint_closed():
    dec = L7Decoder("n", 0)
    sk, ssl, pid = 0xFFFF888100C1CA00, 0x5000, 42
    dec.feed(_ssl_record(SSL_READ, 5 * S, sk, ssl, pid, b"GET /a HTTP/1.1\r\nHost: lab\r\n\r\n"))
    dec.add_endpoint(Endpoint(sk, "server", 4 * S, "10.0.0.1", 443, "10.0.0.2", 40002, pid, "nginx", 8, ts_end=6 * S))
    dec.take_rows(7 * S + 1)
    assert dec.ssl == {}


def test_prefix_bytes_in_the_manifest_match_the_c():
    """The prefix sizes the recorder writes into the manifest are the ones bpf/l7.c uses."""
    import re
    from pathlib import Path

    from flowtape.capture.live.l7 import PREFIX_BYTES

    root = Path(__file__).resolve().parent.parent / "bpf"
    defines = dict(re.findall(r"#define (FT_L7_\w+) (\d+)", (root / "l7.c").read_text() + (root / "events.h").read_text()))
    assert PREFIX_BYTES == {"dns": int(defines["FT_L7_DNS_CAP"]), "http": int(defines["FT_L7_HTTP_CAP"]),
                            "tls_client_hello": int(defines["FT_L7_DATA_MAX"]), "https_plaintext": int(defines["FT_L7_SSL_CAP"])}


def _tcp_record(ts: int, from_client: bool, seq: int, data: bytes, length: int | None = None) -> bytes:
    from flowtape.capture.live.l7 import HTTP

    ev = EVENT()
    cli, srv = bytes([10, 0, 0, 2]) + bytes(12), bytes([10, 0, 0, 1]) + bytes(12)
    src, dst, sport, dport = (cli, srv, 40000, 80) if from_client else (srv, cli, 80, 40000)
    ev.ts_ns, ev.kind, ev.family, ev.seq, ev.from_client = ts, HTTP, 4, seq, int(from_client)
    ev.saddr[:], ev.daddr[:], ev.sport, ev.dport = list(src), list(dst), sport, dport
    ev.length, ev.cap_len = len(data) if length is None else length, len(data)
    ev.data[: len(data)] = list(data)
    return bytes(ev)


def test_a_long_body_is_skipped_in_the_kernel_and_counted_exactly():
    """After a head announcing 10 MB, the decoder asks the kernel (skip_body) to stop sending up
    to the body's end; the next segment it receives starts at the body's last segment, and the
    bytes between are passed as body at once (not held as a loss for HOLD_NS)."""
    calls = []
    dec = L7Decoder("n", 0)
    dec.skip_body = lambda family, raw_key, from_client, end: calls.append((family, raw_key[1], raw_key[3], from_client, end)) or True
    dec.add_endpoint(Endpoint(1, "server", 1 * S, "10.0.0.1", 80, "10.0.0.2", 40000, 7, "nginx", 9))
    req = b"GET /big HTTP/1.1\r\nHost: lab\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n"
    dec.feed(_tcp_record(2 * S, True, 1000, req))
    dec.feed(_tcp_record(2 * S + 10, False, 5000, head + b"z" * 100, len(head) + 1400))  # head and the body's first 1400 bytes
    body_end = 5000 + len(head) + 10_000_000
    assert calls == [(4, 40000, 80, False, body_end)]
    dec.feed(_tcp_record(3 * S, False, body_end - 1448, b"z" * 100, 1448))  # the last body segment: sent by the kernel
    dec.feed(_tcp_record(3 * S + 5, True, 1000 + len(req), b"GET /next HTTP/1.1\r\nHost: lab\r\n\r\n"))
    dec.feed(_tcp_record(3 * S + 9, False, body_end, b"HTTP/1.1 204 No Content\r\n\r\n"))
    (flow,) = dec.flows_raw.values()
    assert flow.dirs[0].skip_to is None  # past the body's end: a later gap is a loss again, not a skip
    rows = dec.take_rows(3 * S + 10, final=True)["http"]
    assert [(r["path"], r["status"], r["response_bytes"]) for r in rows] == [("/big", 200, len(head) + 10_000_000), ("/next", 204, 27)]
    assert dec.stats["http_bodies_skipped_in_kernel"] == 1 and dec.stats["http_desync"] == 0


def test_http_rows_build_the_same_table_as_row_dicts():
    """HttpRows keeps an exchange once and its sides as columns; its Arrow table equals the one
    built from the row dicts it iterates as, and a value that does not fit is named."""
    import pytest

    from flowtape.capture.decode.http_rows import HttpRows
    from flowtape.conform import conform
    from flowtape.errors import SchemaError
    from flowtape.schema import table

    from flowtape.capture.decode.http_pairing import EXCHANGE_FIELDS
    from flowtape.capture.decode.http_rows import BASE_FIELDS

    def exchange(path, **extra):
        row = {"ts_request": 5 * S, "ts_response": 5 * S + 7, "latency_ns": 7, "client_ip": "10.0.0.2", "client_port": 40000,
               "server_ip": "10.0.0.1", "server_port": 80, "tls": False, "http_version": "HTTP/1.1", "method": "GET",
               "path": path, "status": 200, "request_bytes": 40, "response_bytes": 140, "traceparent": None,
               "user_agent": "curl/8", "content_type": None, "host": "lab", "tracestate": "v=1", "request_seq": 4_000_000_000,
               "response_seq": 12, **extra}
        return tuple(row[f] for f in EXCHANGE_FIELDS), tuple(row[f] for f in BASE_FIELDS)

    rows = HttpRows()
    both = rows.exchange(*exchange("/a"))
    rows.add(both, "n-c1", 11, "curl", "client")
    rows.add(both, "n-c2", 22, "nginx", "server", tid=23)
    ssl = rows.exchange(*exchange("/b", tls=True))
    rows.add(ssl, "n-c3", 33, "wrk", "client")
    dicts = list(rows)
    assert [(r["path"], r["side"], r["pid"], r["conn_id"], r["tls"]) for r in dicts] == [
        ("/a", "client", 11, "n-c1", False), ("/a", "server", 22, "n-c2", False), ("/b", "client", 33, "n-c3", True)]
    assert [(r["tid"], r["request_seq"], r["tracestate"]) for r in dicts] == [(None, 4_000_000_000, "v=1"), (23, 4_000_000_000, "v=1"),
                                                                                (None, 4_000_000_000, "v=1")]
    fast = rows.to_arrow()
    assert fast.equals(conform(table("http"), dicts)) and fast.num_rows == 3
    assert HttpRows().to_arrow().num_rows == 0
    bad = HttpRows()
    bad.add(bad.exchange(*exchange("/c", status=70000)), "n-c4", 1, "x", "server")
    with pytest.raises(SchemaError, match="'status'"):
        bad.to_arrow()


def test_ssl_stream_side_comes_from_its_first_bytes_not_a_stale_endpoint():
    """A socket address is reused: the endpoint list can still hold an earlier *client* socket at
    this address, closed but with its CLOSE not read yet. A server stream starting there (nginx's
    SSL_read of a request) is still the server side, and its rows join the real endpoint."""
    dec = L7Decoder("n", 0)
    sk, ssl, pid = 0xFFFF888100C1CA00, 0x5000, 42
    dec.add_endpoint(Endpoint(sk, "client", 1 * S, "10.0.0.1", 40100, "10.0.0.9", 443, 99, "curl", 5))  # stale: no ts_end yet
    dec.feed(_ssl_record(SSL_READ, 5 * S, sk, ssl, pid, b"GET /a HTTP/1.1\r\nHost: lab\r\n\r\n"))
    dec.feed(_ssl_record(SSL_WRITE, 5 * S + 1000, sk, ssl, pid, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    dec.add_endpoint(Endpoint(sk, "client", 1 * S, "10.0.0.1", 40100, "10.0.0.9", 443, 99, "curl", 5, ts_end=4 * S))  # its CLOSE
    dec.add_endpoint(Endpoint(sk, "server", 4 * S + 10, "10.0.0.1", 443, "10.0.0.2", 40002, pid, "nginx", 8, ts_end=6 * S))
    rows = list(dec.take_rows(7 * S, final=True)["http"])
    assert [(r["side"], r["method"], r["status"], r["client_port"]) for r in rows] == [("server", "GET", 200, 40002)]
    assert dec.stats["http_malformed"] == 0


def test_http2_over_tls_is_noted_without_knowing_the_endpoint():
    """An HTTP/2 stream's side comes from its first bytes too (the client preface, or the
    SETTINGS frame a server sends first), so it is noted even before its endpoint is known:
    short h2 connections are often over before the recorder reads the kernel's socket map."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    settings = bytes.fromhex("000000040000000000")
    dec = L7Decoder("n", 0)
    # curl: writes the preface; nginx: writes SETTINGS first, then reads the preface
    dec.feed(_ssl_record(SSL_WRITE, 5 * S, 0xA0, 0x5000, 7, preface + settings))
    dec.feed(_ssl_record(SSL_WRITE, 5 * S + 10, 0xB0, 0x6000, 8, settings))
    dec.feed(_ssl_record(SSL_READ, 5 * S + 20, 0xB0, 0x6000, 8, preface))
    assert dec.stats["http2_connections"] == 2
    assert sum(dec.stats.lost_counters().values()) == 0
    assert list(dec.take_rows(7 * S, final=True)["http"]) == []


def _turn_record(ts: int, skaddr: int, pid: int, tid: int, received: bool, g: int) -> bytes:
    from flowtape.capture.live.l7 import IO_TURN, TURN_RX, TURN_TX

    ev = EVENT()
    ev.ts_ns, ev.kind, ev.skaddr, ev.pid, ev.tid, ev.ssl = ts, IO_TURN, skaddr, pid, tid, g
    ev.tcp_flags = TURN_RX if received else TURN_TX
    return bytes(ev)


def test_go_turns_give_each_row_its_goroutine_and_spawns_become_rows():
    """IO_TURN records of a Go program carry the goroutine in `ssl` (bpf/l7.c io_turn): a row takes the
    tid and goroutine of the last turn before its response; GO_SPAWN records become go_spawns rows."""
    import struct

    from flowtape.capture.live.l7 import GO_SPAWN

    dec = L7Decoder("n", 1000)
    sk, ssl, pid = 0xFFFF888100C1CA00, 0x5000, 42
    dec.add_endpoint(Endpoint(sk, "server", 1 * S, "10.0.0.1", 443, "10.0.0.2", 40002, pid, "gosrv", 8))
    # a background read goroutine (0xc1) takes the first byte, the serving goroutine (0xc0) the rest
    dec.feed(_turn_record(2 * S, sk, pid, 7, True, 0xC1))
    dec.feed(_turn_record(2 * S + 10, sk, pid, 9, True, 0xC0))
    dec.feed(_ssl_record(SSL_READ, 2 * S + 20, sk, ssl, pid, b"GET /a HTTP/1.1\r\nHost: lab\r\n\r\n"))
    spawn = EVENT()
    spawn.ts_ns, spawn.kind, spawn.pid, spawn.cap_len = 2 * S + 30, GO_SPAWN, pid, 16
    spawn.data[:16] = list(struct.pack("<QQ", 0xC0, 0xC2))
    dec.feed(bytes(spawn))
    dec.feed(_ssl_record(SSL_WRITE, 2 * S + 40, sk, ssl, pid, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    out = dec.take_rows(5 * S, final=True)
    assert [(r["path"], r["tid"], r["goroutine"]) for r in out["http"]] == [("/a", 9, 0xC0)]
    assert out["go_spawns"] == [{"ts": 2 * S + 30 + 1000, "pid": pid, "parent_g": 0xC0, "child_g": 0xC2}]


def test_turns_without_a_goroutine_leave_it_null():
    dec = L7Decoder("n", 0)
    sk, ssl, pid = 0xFFFF888100C1CA00, 0x5000, 42
    dec.add_endpoint(Endpoint(sk, "server", 1 * S, "10.0.0.1", 443, "10.0.0.2", 40002, pid, "nginx", 8))
    dec.feed(_turn_record(2 * S, sk, pid, 7, True, 0))
    dec.feed(_ssl_record(SSL_READ, 2 * S + 20, sk, ssl, pid, b"GET /a HTTP/1.1\r\nHost: lab\r\n\r\n"))
    dec.feed(_ssl_record(SSL_WRITE, 2 * S + 40, sk, ssl, pid, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    rows = dec.take_rows(5 * S, final=True)["http"]
    assert [(r["tid"], r["goroutine"]) for r in rows] == [(7, None)]
