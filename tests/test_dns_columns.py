"""capture/decode/_dns.c's Pairer (through dns_columns.ColumnPairer) against its reference, DnsPairer
fed the same datagrams: the same rows in the same order after every take, and the same counters,
on the seed capture, generated traffic (timeouts, retransmissions, unanswered, question-less
answers, IPv6), messages dnslib must read (other types, escapes) and mutated, cut and random bytes.
Then the same under AddressSanitizer, and L7Decoder with either path."""

from __future__ import annotations

import random
import socket
import struct
from pathlib import Path

import pytest
from dnslib import QTYPE, RR, A, DNSRecord, SOA

from flowtape.capture.decode import dns_columns
from flowtape.capture.decode.dns_columns import ColumnPairer, as_rows
from flowtape.capture.decode.dns_pairing import DnsPairer
from flowtape.capture.decode.addresses import IpText
from flowtape.capture.live.l7 import DNS_UDP, HeaderDecoder, L7Decoder

import sanitizer
from pcap_seeds import segments
from test_dns_fast import HANDLED, message
from test_dns_rows import EVENT, OFFSET, _record, _rows, _traffic
from test_dns_tls_compiled import compressed

HERE = Path(__file__).resolve().parent
HEADER = HeaderDecoder(EVENT)
S = 1_000_000_000

pytestmark = pytest.mark.skipif(dns_columns.decoder_in_use() != "c", reason="capture/decode/_dns.c is not built")


def record(ts: int, src: str, sport: int, dst: str, dport: int, data: bytes) -> bytes:
    """A DNS_UDP struct l7_event record (IPv4 or IPv6 by the address's text)."""
    ev = EVENT()
    family = socket.AF_INET6 if ":" in src else socket.AF_INET
    ev.ts_ns, ev.kind, ev.family = ts, DNS_UDP, 10 if family == socket.AF_INET6 else 4
    ev.saddr[:] = list(socket.inet_pton(family, src).ljust(16, b"\0"))
    ev.daddr[:] = list(socket.inet_pton(family, dst).ljust(16, b"\0"))
    ev.sport, ev.dport = sport, dport
    data = data[: len(ev.data)]
    ev.length, ev.cap_len = len(data), len(data)
    ev.data[: len(data)] = list(data)
    return bytes(ev)


def differential(records: list[bytes], chunk: int = 37, timeout_ns: int = S, module=None) -> tuple[list, list, dict]:
    """The rows (and counters) of ColumnPairer and of DnsPairer on the same records, taken every `chunk`."""
    cp = ColumnPairer(HEADER.dns_layout, timeout_ns=timeout_ns)
    if module is not None:  # the sanitizer build
        from flowtape.capture.decode.dns import decode_dns, qtype_name, rcode_name
        from flowtape.capture.decode.addresses import ip_text

        cp._c = module.Pairer(timeout_ns, HEADER.dns_layout, lambda d: decode_dns(d, cp.stats), ip_text, qtype_name, rcode_name)
    ref, ip = DnsPairer(timeout_ns=timeout_ns), IpText()
    got: list = []
    want: list = []
    last = 0
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        end, last = cp.feed_ring(part, 0, len(part), OFFSET, last)
        assert end == len(part)
        for raw in part:
            ts, *_, cap, fam, sa, da, sp, dp, _k, _f, _c, _cm, _t = HEADER.struct.unpack_from(raw)
            want += ref.feed_udp(ts + OFFSET, raw[HEADER.data_offset : HEADER.data_offset + cap], ip(fam, sa), sp, ip(fam, da), dp)
        now = last + OFFSET + (start % 3) * S // 2  # takes at, and after, the last message
        want += ref.expire(now)
        got += as_rows(cp.take(now))
        assert cp.pending == ref.pending
    want += ref.flush()
    got += as_rows(cp.take(None, final=True))
    assert +cp.stats.counts == +ref.stats.counts
    return got, want, +ref.stats.counts


def _seed_records() -> list[bytes]:
    return [record(s.ts_ns, s.src_ip, s.src_port, s.dst_ip, s.dst_port, s.payload[:512]) for s in segments("dns") if s.proto == "udp"]


def test_the_seed_capture():
    records = _seed_records()
    got, want, _ = differential(records, timeout_ns=10 * S)
    assert got == want and len(want) > 3 and any(r["answers"] for r in want)
    assert {r["transport"] for r in got} == {"udp"}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("chunk", [1, 37, 512])
def test_generated_traffic_with_timeouts_and_retransmissions(seed, chunk):
    records = [r for r in _traffic(seed, 1500) if r[HEADER.kind_offset] == DNS_UDP]
    got, want, counts = differential(records, chunk)
    assert got == want
    assert counts["dns_duplicate_queries"] > 5 and counts["dns_unmatched_answers"] > 5 and counts["dns_malformed"] > 5
    assert sum(r["ts_answer"] is None for r in want) > 20 and sum(bool(r["answers"]) for r in want) > 50


def _exchanges(rng: random.Random, n: int) -> list[bytes]:
    """IPv6 and IPv4 clients; answers of every handled type, of types dnslib reads (SOA, escapes),
    question-less error answers (paired on the txid), mixed-case names (DNS 0x20)."""
    out, ts = [], 10_000
    for i in range(n):
        ts += rng.randrange(1, 300_000_000)
        cli = rng.choice(["10.1.0.7", "fd00::7", "fd00::1:0:0:7", "::ffff:10.1.0.9"])
        srv = "fd00::53" if ":" in cli else "10.1.0.53"
        port = rng.randrange(40000, 40004)
        q = DNSRecord.question(rng.choice(["a.Lab.test", "b.lab.TEST", "c\\032d.lab.test", "x.y.lab.test"]), rng.choice(["A", "AAAA", "MX", "SOA"]))
        q.header.id = rng.randrange(4)  # few ids: collisions between names
        out.append(record(ts, cli, port, srv, 53, q.pack()))
        kind = rng.random()
        if kind < 0.1:
            continue
        if kind < 0.2:  # FORMERR without a question
            a = bytes(struct.pack("!HHHHHH", q.header.id, 0x8181, 0, 0, 0, 0))
        elif kind < 0.4:
            a = message(rng, [rng.choice(list(HANDLED)) for _ in range(rng.randint(0, 4))])
            a = struct.pack("!H", q.header.id) + a[2:]
        else:
            r = q.reply()
            if rng.random() < 0.3:
                r.add_auth(RR("lab.test", QTYPE.SOA, rdata=SOA("ns.lab.test", "h.lab.test", (1, 2, 3, 4, 5))))
                r.add_answer(RR(str(q.q.qname), QTYPE.SOA, rdata=SOA("ns.lab.test", "h.lab.test", (1, 2, 3, 4, 5))))
            else:
                r.add_answer(RR(str(q.q.qname), QTYPE.A, rdata=A("10.9.9.9"), ttl=rng.randrange(1 << 32)))
            a = r.pack()
        out.append(record(ts + rng.randrange(1, 2 * S), srv, 53, cli, port, a))
    if rng.random() < 0.2:
        rng.shuffle(out)  # out of time order
    return out


@pytest.mark.parametrize("seed", range(6))
def test_ipv6_error_answers_and_dnslib_messages(seed):
    records = _exchanges(random.Random(seed), 600)
    got, want, _ = differential(records)
    assert got == want
    assert any(":" in r["client_ip"] for r in want) and any(r["rcode_name"] == "FORMERR" for r in want)


def mutated(rng: random.Random, n: int) -> list[bytes]:
    """Messages with bytes changed, cut anywhere, random bytes, compression-pointer mazes, both ways."""
    out = []
    for i in range(n):
        m = bytearray(message(rng, [rng.choice(list(HANDLED)) for _ in range(rng.randint(0, 5))]) if i % 3 else compressed(rng))
        for _ in range(rng.randint(0, 3)):
            m[rng.randrange(len(m))] = rng.randrange(256)
        if i % 7 == 0:
            m = bytearray(rng.randbytes(rng.randint(0, 60)))
        cut = bytes(m[: rng.randint(0, len(m))]) if rng.random() < 0.3 else bytes(m)
        if rng.random() < 0.5:  # its query first, so that the answer pairs
            q = bytearray(cut)
            if len(q) > 3:
                q[2] &= 0x7F
                out.append(record(i * 1000, "10.2.0.1", 5353, "10.2.0.53", 53, bytes(q)))
        out.append(record(i * 1000 + 1, "10.2.0.53", 53, "10.2.0.1", 5353, cut))
    return out


@pytest.mark.parametrize("seed", range(3))
def test_mutated_cut_and_random_messages(seed):
    got, want, counts = differential(mutated(random.Random(seed), 1500))
    assert got == want
    assert counts["dns_malformed"] > 10 and len(want) > 100


def test_the_l7_decoder_with_either_path():
    records = _traffic(11, 2000)
    python, c = _rows(records, reference=True, python=True), _rows(records, reference=False, python=False)
    assert c == python and len(python) > 500


def test_the_reference_is_kept_under_its_switch(monkeypatch):
    assert L7Decoder("n1", 0, event_class=EVENT).dns_decoder == "c"
    monkeypatch.setenv("FLOWTAPE_DNS_DECODER", "python")
    dec = L7Decoder("n1", 0, event_class=EVENT)
    assert dec.dns_udp is None and dec.dns_decoder == "python (FLOWTAPE_DNS_DECODER=python)"
    dec.feed_batch([_record(DNS_UDP, 5, 2, 53, 3000, 53, DNSRecord.question("a.lab.test").pack())])
    assert [r["qname"] for r in as_rows(dec.take_rows(final=True)["dns"])] == ["a.lab.test"]


def test_bad_layouts_and_records_are_errors_not_crashes():
    from flowtape.capture.decode import _dns

    with pytest.raises(ValueError):
        _dns.Pairer(S, (0,) * 5, None, None, None, None)
    with pytest.raises(ValueError):
        _dns.Pairer(S, (0,) * 9 + (3, 1, 1), None, None, None, None)
    cp = ColumnPairer(HEADER.dns_layout)
    with pytest.raises(ValueError, match="shorter"):
        cp.feed_ring([b"\0" * 10])
    assert cp.take(None, final=True).num_rows == 0


# --- under AddressSanitizer -----------------------------------------------------------------------

ASAN_SCRIPT = """
import random, sys
sys.path.insert(0, {tests!r})
import _dns_asan
from test_dns_columns import differential, mutated, _exchanges, _seed_records
from test_dns_rows import _traffic
from test_dns_columns import HEADER, DNS_UDP
n = 0
for seed in range(3):
    for records in (mutated(random.Random(seed), 800), _exchanges(random.Random(seed), 300),
                    [r for r in _traffic(seed, 800) if r[HEADER.kind_offset] == DNS_UDP], _seed_records()):
        got, want, _ = differential(records, chunk=29, module=_dns_asan)
        if got != want:
            print("MISMATCH", seed); sys.exit(3)
        n += len(want)
print("ok", n)
"""


def test_under_address_sanitizer(tmp_path):
    sanitizer.require_gcc("capture/decode/_dns.c")
    plant = ("        const unsigned char *d = r + p->o_data;", "        const unsigned char *d = r + p->o_data; volatile unsigned char z = r[v.len + 8]; (void)z;")
    sanitizer.build(tmp_path, "capture/decode/_dns.c", "_dns_planted", plant)
    planted = sanitizer.run(tmp_path, PLANTED_SCRIPT.format(tests=str(HERE)), HERE)
    assert planted.returncode == 86 and "heap-buffer-overflow" in planted.stderr, planted.stderr[-2000:]
    sanitizer.build(tmp_path, "capture/decode/_dns.c", "_dns_asan")
    result = sanitizer.run(tmp_path, ASAN_SCRIPT.format(tests=str(HERE)), HERE)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "ok " in result.stdout and int(result.stdout.split("ok ")[1]) > 1000


PLANTED_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import _dns_planted
from test_dns_columns import differential, _seed_records
differential(_seed_records(), module=_dns_planted)
"""
