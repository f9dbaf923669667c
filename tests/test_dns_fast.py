"""capture.decode.dns_fast against its reference, dnslib (dns.parse_dns_dnslib): on the real seed
capture, on messages dnslib itself builds (every handled type, compression, mixed case, IPv6 zero
runs), and on every mutation and cut of them: the fast path answers exactly as dnslib does, or
declines (None) and dnslib answers."""

from __future__ import annotations

import random

from dnslib import AAAA, CNAME, DNSHeader, DNSQuestion, DNSRecord, MX, NS, PTR, QTYPE, RR, TXT, A
from hypothesis import given, settings
from hypothesis import strategies as st

from flowtape.capture.decode.dns import DnsAnswer, DnsMessage, parse_dns, parse_dns_dnslib, qtype_name, rcode_name
from flowtape.capture.decode.dns_fast import fast_parse
from pcap_seeds import segments

HANDLED = {"A": A, "AAAA": AAAA, "CNAME": CNAME, "NS": NS, "PTR": PTR, "MX": MX, "TXT": TXT}


def fast(data: bytes):
    return fast_parse(data, DnsMessage, DnsAnswer, qtype_name, rcode_name)


def _name(rng: random.Random) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
    return ".".join("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(rng.randint(1, 4))) + "."


def _ip6(rng: random.Random) -> str:
    groups = [rng.choice([0, 0, 0, rng.randint(1, 0xFFFF)]) for _ in range(8)]
    return ":".join(f"{g:x}" for g in groups)


def message(rng: random.Random, types: list[str]) -> bytes:
    qname = _name(rng)
    rec = DNSRecord(DNSHeader(id=rng.randint(0, 0xFFFF), qr=1, aa=rng.randint(0, 1), ra=1, rcode=rng.choice([0, 0, 2, 3, 5])),
                    q=DNSQuestion(qname, getattr(QTYPE, types[0] if types else "A")))
    for t in types:
        name = rng.choice([qname, _name(rng)])
        rdata = {"A": lambda: A(".".join(str(rng.randint(0, 255)) for _ in range(4))), "AAAA": lambda: AAAA(_ip6(rng)),
                 "MX": lambda: MX(_name(rng), rng.randint(0, 50)), "TXT": lambda: TXT([rng.choice(["v=spf1 -all", "say \"hi\"", "a\\b", _name(rng)]) for _ in range(rng.randint(1, 3))])}.get(t, lambda: HANDLED[t](rng.choice([qname, _name(rng)])))()
        rec.add_answer(RR(name, getattr(QTYPE, t), rdata=rdata, ttl=rng.randint(0, 2**31)))
    return rec.pack()


def test_the_seed_capture_takes_the_fast_path_and_equals_dnslib():
    msgs = [s.payload[:512] for s in segments("dns") if s.proto == "udp"]
    taken = 0
    for m in msgs:
        got = fast(m)
        if got is not None:
            taken += 1
            assert got == parse_dns_dnslib(m)
        assert parse_dns(m) == parse_dns_dnslib(m)
    assert taken == len(msgs)  # the seeds' answer types are all on the fast path


def test_generated_messages_of_handled_types_are_taken_and_equal():
    rng = random.Random(20261201)
    for _ in range(2000):
        m = message(rng, [rng.choice(list(HANDLED)) for _ in range(rng.randint(0, 6))])
        got = fast(m)
        assert got is not None, m
        assert got == parse_dns_dnslib(m)


def test_other_types_are_left_to_dnslib():
    rng = random.Random(7)
    for t in ("SRV", "SOA", "HTTPS"):
        rec = DNSRecord.parse(message(rng, ["A"]))
        rec.add_answer(*RR.fromZone(f"x.test. 60 IN {t} " + {"SRV": "1 2 3 t.test.", "SOA": "a.test. b.test. 1 2 3 4 5",
                                                              "HTTPS": "1 . alpn=h2"}[t]))
        m = rec.pack()
        assert fast(m) is None
        assert parse_dns(m) == parse_dns_dnslib(m) and parse_dns(m).answers[1].type == t


def test_queries_and_escaped_names():
    q = DNSRecord.question("Example.COM", "AAAA").pack()
    assert fast(q) == parse_dns_dnslib(q) and fast(q).qname == "example.com"
    odd = DNSRecord.question("a\\032b.example", "A").pack()  # a label with a space: dnslib escapes it
    assert fast(odd) is None and parse_dns(odd) == parse_dns_dnslib(odd)


@settings(max_examples=600, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6), st.integers(0, 600))
def test_mutated_and_cut_messages_are_declined_or_equal(seed, flips, cut):
    rng = random.Random(seed)
    data = bytearray(message(rng, [rng.choice(list(HANDLED)) for _ in range(rng.randint(1, 5))]))
    for at, value in flips:
        data[at % len(data)] = value
    m = bytes(data[: max(cut, 0)] if cut < len(data) else data)
    got = fast(m)
    if got is not None:
        assert got == parse_dns_dnslib(m)
    assert parse_dns(m) == parse_dns_dnslib(m)
