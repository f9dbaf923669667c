"""The live recorder's DNS shortcuts against their references, on the same records:
L7Decoder's run of DNS_UDP records (_dns_udp) against _feed_one per record; DnsPairer's skipped
expire() calls against calling it at every message; dns_rows.dns_table against conform's row path."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest
from dnslib import QTYPE, RR, A, AAAA, CNAME, DNSRecord

from flowtape.capture.decode import dns_pairing
from flowtape.capture.decode.dns_columns import as_rows
from flowtape.capture.decode.dns_pairing import DnsPairer
from flowtape.capture.decode.dns_rows import dns_table
from flowtape.capture.live.l7 import DNS_UDP, HTTP, L7Decoder, c_header_class
from flowtape.conform import conform
from flowtape.errors import SchemaError
from flowtape.schema import table

EVENT = c_header_class()
OFFSET = 1_700_000_000_000_000_000


def _record(kind: int, ts: int, src: int, dst: int, sport: int, dport: int, data: bytes) -> bytes:
    ev = EVENT()
    ev.ts_ns, ev.kind, ev.family = ts, kind, 4
    ev.saddr[:], ev.daddr[:] = list(bytes([10, 0, 0, src]) + bytes(12)), list(bytes([10, 0, 0, dst]) + bytes(12))
    ev.sport, ev.dport = sport, dport
    ev.length, ev.cap_len = len(data), len(data)
    ev.data[: len(data)] = list(data)
    return bytes(ev)


def _traffic(seed: int, n: int) -> list[bytes]:
    """Queries from a few clients, most answered (A, AAAA, CNAME chains, NXDOMAIN), some not, some
    repeated; answers now and then before later queries; an HTTP record here and there (it ends a run)."""
    rnd = random.Random(seed)
    out, waiting, ts = [], [], 1_000
    for i in range(n):
        ts += rnd.randrange(1, 400_000_000)  # up to 0.4 s apart: the 1 s timeout below expires some
        if waiting and rnd.random() < 0.55:
            q, cli, port = waiting.pop(rnd.randrange(len(waiting)))
            if rnd.random() < 0.15:
                continue  # never answered
            a = q.reply()
            name = str(q.q.qname)
            if rnd.random() < 0.1:
                a.header.rcode = 3
            elif q.q.qtype == QTYPE.AAAA:
                a.add_answer(RR(name, QTYPE.AAAA, rdata=AAAA("2001:db8::1"), ttl=30))
            else:
                if rnd.random() < 0.3:
                    a.add_answer(RR(name, QTYPE.CNAME, rdata=CNAME("real.lab.test"), ttl=60))
                a.add_answer(RR(name, QTYPE.A, rdata=A(f"10.77.0.{rnd.randrange(1, 250)}"), ttl=rnd.randrange(0, 1 << 31)))
            out.append(_record(DNS_UDP, ts, 53, cli, 53, port, a.pack()))
        else:
            cli, port = rnd.randrange(2, 6), rnd.randrange(30000, 30010)
            q = DNSRecord.question(f"n{rnd.randrange(40)}.Lab.test", rnd.choice(["A", "AAAA"]))
            q.header.id = rnd.randrange(1 << 16)
            out.append(_record(DNS_UDP, ts, cli, 53, port, 53, q.pack()))
            if rnd.random() < 0.05:
                out.append(_record(DNS_UDP, ts + 5, cli, 53, port, 53, q.pack()))  # a retransmission
            waiting.append((q, cli, port))
        if rnd.random() < 0.03:
            out.append(_record(HTTP, ts, 2, 1, 40000, 80, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
        if rnd.random() < 0.02:
            out.append(_record(DNS_UDP, ts, 2, 53, 30001, 53, b"\x00\x01garbage"))
    return out


def _rows(records: list[bytes], reference: bool, python: bool = True) -> list[dict]:
    """reference: a record at a time; python: DnsPairer for UDP too (else capture/decode/_dns.c's Pairer)."""
    dec = L7Decoder("n1", OFFSET, dns_timeout_ns=1_000_000_000, event_class=EVENT)
    if python:
        dec.dns_udp = None
    rows: list[dict] = []
    for start in range(0, len(records), 37):  # ring reads of various sizes
        chunk = records[start : start + 37]
        if reference:
            dec.events += len(chunk)
            for raw in chunk:
                dec._feed_one(raw)
        else:
            dec.feed_batch(chunk)
        rows += as_rows(dec.take_rows()["dns"])
    rows += as_rows(dec.take_rows(final=True)["dns"])
    return rows + [dict(dec.lost_counters()), {"last_ts": dec.last_ts, "events": dec.events}]


@pytest.mark.parametrize("seed", range(4))
def test_dns_runs_give_the_rows_of_one_record_at_a_time(seed):
    records = _traffic(seed, 1500)
    got, ref = _rows(records, reference=False), _rows(records, reference=True)
    assert got == ref
    assert sum(1 for r in ref if "ts_query" in r and r["ts_answer"] is None) > 20  # some expired unanswered
    assert sum(1 for r in ref if "ts_query" in r and r["answers"]) > 150


def test_skipped_expire_calls_give_the_same_rows_in_the_same_order(monkeypatch):
    records = _traffic(7, 3000)
    fast = _rows(records, reference=False)
    # the reference: expire() at every message, as before (_due always passed)
    monkeypatch.setattr(dns_pairing, "_NEVER", 0)
    orig = DnsPairer.observe

    def observe(self, *a, **kw):
        self._due = 0
        return orig(self, *a, **kw)

    monkeypatch.setattr(DnsPairer, "observe", observe)
    assert _rows(records, reference=False) == fast


def test_dns_table_is_conforms_table():
    rows = [r for r in _rows(_traffic(3, 2000), reference=True) if "ts_query" in r]
    assert any(r["answers"] is None for r in rows) and any(r["answers"] == [] for r in rows)
    got, ref = dns_table(rows), conform(table("dns"), rows)
    assert got.schema == ref.schema and got.equals(ref) and got.num_rows == len(rows)
    assert dns_table([]).num_rows == 0 and dns_table([]).schema == ref.schema


def test_dns_table_leaves_what_does_not_fit_to_conform():
    rows = [r for r in _rows(_traffic(5, 300), reference=True) if "ts_query" in r]
    with_pid = [dict(r, pid=123, comm="coredns") for r in rows]
    assert dns_table(with_pid).equals(conform(table("dns"), with_pid))
    for bad in ({"txid": 1 << 20}, {"qname": None}, {"client_port": "x"}, {"not_a_column": 1}):
        broken = [*rows[:5], {**rows[5], **bad}, *rows[6:]]
        with pytest.raises(SchemaError) as got:
            dns_table(broken)
        with pytest.raises(SchemaError) as ref:
            conform(table("dns"), broken)
        assert str(got.value) == str(ref.value)
    missing = [*rows[:3], {k: v for k, v in rows[3].items() if k != "comm"}, *rows[4:]]
    assert dns_table(missing).equals(conform(table("dns"), missing))
    assert isinstance(dns_table(rows), pa.Table)


def test_feed_udp_shortcut_is_decode_dns(monkeypatch):
    """feed_udp calls the parser's fast path itself; the reference is decode_dns (which counts
    malformed and truncated messages) then observe, on every message: regular, cut short, without a
    question, garbage."""
    from flowtape.capture.decode.dns import decode_dns

    records = _traffic(9, 2500)
    rnd = random.Random(2)
    payloads = []
    for raw in records:
        ev = EVENT.from_buffer_copy(raw)
        data = bytes(ev.data[: ev.cap_len])
        if ev.kind != DNS_UDP:
            continue
        roll = rnd.random()
        if roll < 0.08:
            data = data[: rnd.randrange(len(data))]  # cut anywhere (the kernel's prefix)
        elif roll < 0.12:
            data = data[:4] + b"\x00\x00" + data[6:12]  # qdcount 0: no question
        payloads.append((ev.ts_ns, data, ev.sport, ev.dport))

    def run(pairer: DnsPairer) -> list:
        out = []
        for ts, data, sport, dport in payloads:
            src, dst = ("10.0.0.2", "10.0.0.53") if dport == 53 else ("10.0.0.53", "10.0.0.2")
            out += pairer.feed_udp(ts, data, src, sport, dst, dport)
        return out + pairer.flush() + [pairer.stats.lost_counters(), pairer.stats.notes()]

    got = run(DnsPairer(timeout_ns=1_000_000_000))

    def reference(self, ts_ns, payload, src_ip, src_port, dst_ip, dst_port, pid=None, comm=None):
        msg = decode_dns(payload, self.stats)
        if msg is None:
            return []
        return self.observe(ts_ns, msg, src_ip, src_port, dst_ip, dst_port, "udp", pid, comm)

    monkeypatch.setattr(DnsPairer, "feed_udp", reference)
    ref = run(DnsPairer(timeout_ns=1_000_000_000))
    assert got == ref
    assert any(r.get("answers") for r in ref if isinstance(r, dict) and "ts_query" in r)
    assert ref[-1] or ref[-2]  # some message was counted as malformed or truncated
