"""TLS ClientHello decoding on real openssl/curl handshakes (tests/data/tls.pcap)."""

from __future__ import annotations

from flowtape.capture.decode.stats import DecodeStats
from flowtape.capture.decode.tls import ClientHello, ClientHelloReader, decode_client_hello, tls_row
from flowtape.conform import conform
from flowtape.schema import table
from pcap_seeds import segments


def hellos() -> list[bytes]:
    """The first client->server payload of each connection: its ClientHello."""
    seen, out = set(), []
    for s in segments("tls"):
        if s.dst_port == 8443 and s.src_port not in seen:
            seen.add(s.src_port)
            out.append(s.payload)
    return out


def test_real_client_hellos():
    stats = DecodeStats()
    assert [decode_client_hello(h, stats) for h in hellos()] == [
        ClientHello("TLS 1.3", "x.test", ("h2", "http/1.1"), False),  # openssl s_client -servername x.test -alpn h2,http/1.1
        ClientHello("TLS 1.2", "legacy.test", None, False),  # openssl s_client -tls1_2
        ClientHello("TLS 1.3", None, None, False),  # openssl s_client -noservername
        ClientHello("TLS 1.3", "curl.test", ("h2", "http/1.1"), False),  # curl --resolve
    ]
    assert [len(h) for h in hellos()] == [330, 208, 297, 517]
    assert sum(stats.lost_counters().values()) == 0


def test_cut_hello_returns_what_precedes_the_cut():
    curl = hellos()[3]
    stats = DecodeStats()
    # 128 bytes end inside the cipher suites: only the legacy version is known.
    assert decode_client_hello(curl[:128], stats) == ClientHello("TLS 1.2", None, None, True)
    sni_end = curl.index(b"curl.test") + len(b"curl.test")
    cut = decode_client_hello(curl[:sni_end], stats)
    assert (cut.sni, cut.truncated) == ("curl.test", True)
    assert stats["tls_truncated"] == 2 and stats["tls_malformed"] == 0


def test_reader_reassembles_a_hello_split_across_segments():
    hello = hellos()[3]
    r = ClientHelloReader()
    assert r.feed(1, hello[:100]) is None
    assert r.feed(2, hello[100:300]) is None
    got = r.feed(3, hello[300:])
    assert (got, r.ts_ns, r.done) == (ClientHello("TLS 1.3", "curl.test", ("h2", "http/1.1"), False), 1, True)


def test_reader_stops_at_an_unseen_gap_and_on_non_tls():
    hello = hellos()[0]
    r = ClientHelloReader()
    # openssl sends SNI early: it is within the 200 bytes seen; ALPN and supported_versions are not.
    assert r.feed(1, hello[:200], len(hello)) == ClientHello("TLS 1.2", "x.test", None, True)
    assert r.feed(2, hello) is None  # done
    plain = ClientHelloReader()
    assert (plain.feed(1, b"GET / HTTP/1.1\r\n\r\n"), plain.done) == (None, True)


def test_malformed_lengths_are_counted():
    stats = DecodeStats()
    bad = bytearray(hellos()[0])
    bad[9:11] = b"\xff\xff"  # client_version stays; the body's inner lengths now overrun the handshake
    bad[6:9] = b"\x00\x00\x30"  # handshake length 48: the session id/cipher lengths overrun it
    assert decode_client_hello(bytes(bad), stats) is None
    assert stats["tls_malformed"] == 1
    assert decode_client_hello(b"\x17\x03\x03\x00\x10" + b"x" * 16, stats) is None  # application data: not a hello
    assert stats["tls_malformed"] == 1


def test_row_fits_the_tls_table():
    hello = decode_client_hello(hellos()[0])
    row = tls_row(5, hello, "127.0.0.1", 40000, "127.0.0.1", 8443)
    assert row["alpn"] == ["h2", "http/1.1"]
    assert conform(table("tls"), [row]).num_rows == 1
