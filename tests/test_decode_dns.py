"""DNS decoding and pairing, on real dnsmasq/dig traffic (tests/data/dns.pcap) and crafted cases."""

from __future__ import annotations

import struct

import dnslib
import pyarrow as pa
import pytest

from flowtape.capture.decode.dns import DnsTcpSplitter, decode_dns, parse_dns
from flowtape.capture.decode.stats import DecodeStats
from flowtape.capture.decode.dns_pairing import DnsPairer
from flowtape.conform import conform
from flowtape.schema import table
from pcap_seeds import segments

A = lambda name, data, ttl=300: {"name": name, "type": "A", "ttl": ttl, "data": data}  # noqa: E731
CNAME = lambda name, data: {"name": name, "type": "CNAME", "ttl": 300, "data": data}  # noqa: E731


def pcap_rows() -> tuple[list[dict], DecodeStats]:
    stats = DecodeStats()
    pairer = DnsPairer(stats)
    rows = []
    for s in segments("dns"):
        feed = pairer.feed_udp if s.proto == "udp" else pairer.feed_tcp
        rows += feed(s.ts_ns, s.payload, s.src_ip, s.src_port, s.dst_ip, s.dst_port)
    return rows + pairer.flush(), stats


def test_real_capture_rows():
    rows, stats = pcap_rows()
    got = [(r["transport"], r["txid"], r["qname"], r["qtype"], r["qtype_name"], r["rcode"], r["rcode_name"], r["answers"]) for r in rows]
    chain = [CNAME("www.test", "mid.test"), CNAME("mid.test", "target.test"), A("target.test", "198.18.0.11")]
    assert got == [
        ("udp", 9226, "api.test", 1, "A", 0, "NOERROR", [A("api.test", "198.18.0.10")]),
        ("udp", 26023, "v6.test", 28, "AAAA", 0, "NOERROR", [{"name": "v6.test", "type": "AAAA", "ttl": 300, "data": "2001:db8::1"}]),
        ("udp", 55107, "www.test", 1, "A", 0, "NOERROR", chain),  # asked as WWW.Test: stored lower-case
        ("udp", 20022, "nope.test", 1, "A", 3, "NXDOMAIN", []),
        ("udp", 33378, "test", 15, "MX", 0, "NOERROR", [{"name": "test", "type": "MX", "ttl": 300, "data": "10 mail.test."}]),
        ("udp", 48541, "txt.test", 16, "TXT", 0, "NOERROR", [{"name": "txt.test", "type": "TXT", "ttl": 300, "data": '"hello world"'}]),
        ("tcp", 27379, "www.test", 1, "A", 0, "NOERROR", chain),
        ("tcp", 63378, "api.test", 1, "A", 0, "NOERROR", [A("api.test", "198.18.0.10")]),
    ]
    first = rows[0]
    assert (first["ts_query"], first["ts_answer"], first["latency_ns"]) == (1795692788390584064, 1795692788390717952, 133888)
    assert (first["client_ip"], first["client_port"], first["server_ip"], first["server_port"]) == ("127.0.0.1", 47121, "127.0.0.1", 5353)
    assert stats.lost_counters() == {k: 0 for k in stats.lost_counters()}


def test_rows_fit_the_dns_table():
    rows, _ = pcap_rows()
    out = conform(table("dns"), rows)
    assert out.num_rows == 8
    assert out.schema.field("answers").type == pa.list_(table("dns").column("answers").type.value_type)


def test_query_message_fields():
    q = segments("dns")[4].payload  # dig WWW.Test A
    msg = parse_dns(q)
    assert (msg.txid, msg.is_response, msg.qname, msg.qtype, msg.qtype_name, msg.answers, msg.truncated) == (55107, False, "www.test", 1, "A", (), False)


def _query(txid=7, name="svc.example", qtype="A") -> bytes:
    return dnslib.DNSRecord(
        dnslib.DNSHeader(id=txid, rd=1), q=dnslib.DNSQuestion(name, getattr(dnslib.QTYPE, qtype))
    ).pack()


def _answer(txid=7, name="svc.example", ip="198.18.0.5", rcode=0) -> bytes:
    rec = dnslib.DNSRecord(dnslib.DNSHeader(id=txid, qr=1, ra=1, rcode=rcode), q=dnslib.DNSQuestion(name))
    if rcode == 0:
        rec.add_answer(dnslib.RR(name, rdata=dnslib.A(ip), ttl=60))
    return rec.pack()


def test_unanswered_query_becomes_a_row_at_timeout_and_late_answer_is_counted():
    stats = DecodeStats()
    p = DnsPairer(stats, timeout_ns=1000)
    assert p.feed_udp(10, _query(1), "198.18.0.2", 4000, "198.18.0.53", 53) == []
    assert p.expire(1009) == []
    (row,) = p.expire(1010)
    assert (row["ts_query"], row["ts_answer"], row["latency_ns"], row["rcode"], row["rcode_name"], row["answers"]) == (10, None, None, None, None, None)
    assert p.feed_udp(2000, _answer(1), "198.18.0.53", 53, "198.18.0.2", 4000) == []
    assert stats["dns_unmatched_answers"] == 1


def test_pairing_key_includes_ports_and_txid_and_flush_emits_pending():
    p = DnsPairer()
    p.feed_udp(1, _query(5), "198.18.0.2", 4000, "198.18.0.53", 53)
    p.feed_udp(2, _query(5), "198.18.0.2", 4001, "198.18.0.53", 53)
    (row,) = p.feed_udp(3, _answer(5), "198.18.0.53", 53, "198.18.0.2", 4001)
    assert (row["client_port"], row["latency_ns"], row["answers"]) == (4001, 1, [A("svc.example", "198.18.0.5", 60)])
    (left,) = p.flush()
    assert (left["client_port"], left["ts_answer"]) == (4000, None)
    assert p.pending == 0


def test_duplicate_query_keeps_first_timestamp():
    stats = DecodeStats()
    p = DnsPairer(stats)
    p.feed_udp(100, _query(9), "198.18.0.2", 4000, "198.18.0.53", 53)
    p.feed_udp(200, _query(9), "198.18.0.2", 4000, "198.18.0.53", 53)
    (row,) = p.feed_udp(350, _answer(9), "198.18.0.53", 53, "198.18.0.2", 4000)
    assert row["latency_ns"] == 250
    assert stats["dns_duplicate_queries"] == 1


def test_answer_cut_at_prefix_keeps_question_and_earlier_answers():
    seg = segments("dns")[5].payload  # CNAME chain answer, 100 bytes
    stats = DecodeStats()
    msg = decode_dns(seg[:80], stats)  # the second answer ends at byte 73, the third at 89
    assert (msg.qname, msg.rcode_name, msg.truncated) == ("www.test", "NOERROR", True)
    assert [a.data for a in msg.answers] == ["mid.test", "target.test"]
    assert stats["dns_truncated"] == 1 and stats["dns_malformed"] == 0


def test_garbage_is_counted_not_raised():
    stats = DecodeStats()
    assert decode_dns(b"\x00\x01", stats) is None
    assert decode_dns(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c", stats) is None  # question is a pointer loop
    assert stats["dns_malformed"] == 2


def _framed(msg: bytes) -> bytes:
    return struct.pack("!H", len(msg)) + msg


def test_tcp_two_messages_in_one_segment_and_one_split_across_two():
    q1, q2, q3 = _query(1, "a.example"), _query(2, "b.example"), _query(3, "c.example")
    a3 = _answer(3, "c.example")
    p = DnsPairer()
    c, s = ("198.18.0.2", 5000), ("198.18.0.53", 53)
    assert p.feed_tcp(10, _framed(q1) + _framed(q2), *c, *s) == []
    assert p.pending == 2
    stream = _framed(q3)
    assert p.feed_tcp(20, stream[:9], *c, *s) == []  # length prefix and a part of the header
    assert p.feed_tcp(30, stream[9:], *c, *s) == []
    assert p.pending == 3
    answer = _framed(a3)
    assert p.feed_tcp(40, answer[:1], *s, *c) == []  # split inside the length prefix
    (row,) = p.feed_tcp(50, answer[1:], *s, *c)
    assert (row["transport"], row["qname"], row["ts_query"], row["ts_answer"], row["answers"]) == ("tcp", "c.example", 20, 40, [A("c.example", "198.18.0.5", 60)])


def test_tcp_splitter_skips_unseen_bytes_by_length():
    a, b = _answer(4, "d.example"), _answer(5, "e.example")
    sp = DnsTcpSplitter()
    # The first segment carries the whole first message, but we saw only its first 20 bytes.
    assert sp.feed(1, _framed(a)[:20], len(a) + 2) == [(1, a[:18], False)]
    assert sp.feed(2, _framed(b)) == [(2, b, True)]


def test_tcp_splitter_desync_on_unseen_length_prefix():
    stats = DecodeStats()
    sp = DnsTcpSplitter(stats)
    q = _framed(_query(1))
    # The segment held this message and the next one's length prefix; we saw 5 bytes.
    assert sp.feed(1, q[:5], len(q) + 2) == [(1, q[2:5], False)]
    assert sp.feed(2, q) == []
    assert (sp.desynced, stats["dns_tcp_desync"]) == (True, 1)


@pytest.mark.parametrize("code,name", [(2, "SERVFAIL"), (5, "REFUSED"), (12, "RCODE12")])
def test_rcode_names(code, name):
    msg = parse_dns(_answer(1, rcode=code))
    assert (msg.rcode, msg.rcode_name, msg.answers) == (code, name, ())


def test_a_repeated_message_is_reused_with_its_own_txid():
    """parse_dns reuses the parse of a message seen before but for its txid (the first two bytes)."""
    from flowtape.capture.decode.dns import parse_dns

    q = bytes.fromhex("1234 0100 0001 0000 0000 0000".replace(" ", "")) + b"\x03api\x04test\x00\x00\x01\x00\x01"
    first, again = parse_dns(q), parse_dns(b"\xab\xcd" + q[2:])
    assert (first.txid, again.txid) == (0x1234, 0xABCD)
    assert again.qname == first.qname == "api.test" and again.qtype == 1 and not again.is_response
    assert parse_dns(q).txid == 0x1234 and parse_dns(q[:11]) is None
