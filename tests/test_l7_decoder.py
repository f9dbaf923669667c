"""L7Decoder on synthetic ring-buffer records (no kernel)."""

from __future__ import annotations

from flowtape.capture.l7 import SSL_READ, SSL_WRITE, Endpoint, L7Decoder, c_header_class

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

    from flowtape.capture.l7 import PREFIX_BYTES

    root = Path(__file__).resolve().parent.parent / "bpf"
    defines = dict(re.findall(r"#define (FT_L7_\w+) (\d+)", (root / "l7.c").read_text() + (root / "events.h").read_text()))
    assert PREFIX_BYTES == {"dns": int(defines["FT_L7_DNS_CAP"]), "http": int(defines["FT_L7_HTTP_CAP"]),
                            "tls_client_hello": int(defines["FT_L7_DATA_MAX"]), "https_plaintext": int(defines["FT_L7_SSL_CAP"])}
