"""The live recorder's user-space cost per DNS query, replayed: ring records -> L7Decoder -> dns rows ->
Arrow, timed with process CPU time, against the reference path in the same run.

bench_l7.py --dns measures the recorder live (dnsmasq under dns_load.py), but on a shared 2-CPU
machine its µs per query swing with the load and lost events. This replays the records such a load
gives (a query and its answer 50 µs later, 16 client sockets, A answers from dnsmasq's own records)
through the recorder's code, and through the reference it was made faster than, on the same records:
  - recorder:  L7Decoder.feed_batch (runs of DNS_UDP records), DnsPairer.feed_udp (the parser's fast
               path called directly, expire() only when a query can be due), dns_rows.dns_table;
  - reference: L7Decoder._feed_one per record, decode_dns + observe with expire() at every message
               (DnsPairer before issue 24), conform's row path (Polars' dict reader).
Both must write a row for every query, the same rows. tests/test_dns_rows.py holds them equal.

Run:  .venv/bin/python benchmarks/bench_dns_replay.py [--queries 40000] [--repeat 5]   (no root)
"""

from __future__ import annotations

import argparse
import time

from dnslib import QTYPE, RR, A, DNSRecord

from flowtape.capture.decode.dns import decode_dns
from flowtape.capture.decode.dns_pairing import DnsPairer
from flowtape.capture.decode.dns_rows import dns_table
from flowtape.capture.live.l7 import DNS_UDP, L7Decoder, c_header_class
from flowtape.conform import conform
from flowtape.schema import table

EVENT = c_header_class()
OFFSET = 1_700_000_000 * 10**9
EVERY = 20_000  # rows handed over every 20k queries (1 s at 20k queries/s), as the recorder's L7_ROWS_EVERY_S


def _record(ts: int, src: int, dst: int, sport: int, dport: int, data: bytes) -> bytes:
    ev = EVENT()
    ev.ts_ns, ev.kind, ev.family = ts, DNS_UDP, 4
    ev.saddr[:], ev.daddr[:] = list(bytes([10, 0, 0, src]) + bytes(12)), list(bytes([10, 0, 0, dst]) + bytes(12))
    ev.sport, ev.dport, ev.length, ev.cap_len = sport, dport, len(data), len(data)
    ev.data[: len(data)] = list(data)
    return bytes(ev)


def records(n: int) -> list[bytes]:
    out, ts = [], 10**9
    for i in range(n):
        ts += 50_000
        name = f"name{i % 200}.lab.test"
        q = DNSRecord.question(name, "A")
        q.header.id = i & 0xFFFF
        a = q.reply()
        a.add_answer(RR(name, QTYPE.A, rdata=A(f"10.77.0.{i % 250 + 1}"), ttl=0))
        port = 30000 + i % 16
        out += [_record(ts, 2, 1, port, 53, q.pack()), _record(ts + 50_000, 1, 2, 53, port, a.pack())]
    return out


class ReferencePairer(DnsPairer):
    """DnsPairer as it was: decode_dns for every datagram, expire() at every message."""

    def feed_udp(self, ts_ns, payload, src_ip, src_port, dst_ip, dst_port, pid=None, comm=None):  # type: ignore[override]
        msg = decode_dns(payload, self.stats)
        if msg is None:
            return []
        return self.observe(ts_ns, msg, src_ip, src_port, dst_ip, dst_port, "udp", pid, comm)

    def observe(self, *args, **kw):  # type: ignore[override]
        self._due = 0
        return super().observe(*args, **kw)


def run(recs: list[bytes], reference: bool) -> tuple[float, list]:
    dec = L7Decoder("bench", OFFSET, event_class=EVENT)
    if reference:
        dec.dns = ReferencePairer(dec.stats)
    to_arrow = (lambda rows: conform(table("dns"), rows)) if reference else dns_table
    tables = []
    t0 = time.process_time()
    for start in range(0, len(recs), 512):  # ring reads
        batch = recs[start : start + 512]
        if reference:
            dec.events += len(batch)
            for raw in batch:
                dec._feed_one(raw)
        else:
            dec.feed_batch(batch)
        if start % (2 * EVERY) < 512:
            tables.append(to_arrow(dec.take_rows()["dns"]))
    tables.append(to_arrow(dec.take_rows(final=True)["dns"]))
    return time.process_time() - t0, tables


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=40_000)
    ap.add_argument("--repeat", type=int, default=5, help="alternating runs of each; the fastest is reported")
    args = ap.parse_args()
    recs = records(args.queries)
    best = {True: float("inf"), False: float("inf")}
    out = {}
    for _ in range(args.repeat):
        for reference in (False, True):
            dt, tables = run(recs, reference)
            best[reference] = min(best[reference], dt)
            out[reference] = [t for t in tables if t.num_rows]
    rows = sum(t.num_rows for t in out[False])
    if rows != args.queries or sum(t.num_rows for t in out[True]) != rows:
        raise SystemExit(f"bench_dns_replay: {rows} dns rows for {args.queries} queries")
    import pyarrow as pa

    if not pa.concat_tables(out[False]).equals(pa.concat_tables(out[True])):
        raise SystemExit("bench_dns_replay: the recorder's rows differ from the reference's")
    fast, ref = (1e6 * best[k] / args.queries for k in (False, True))
    print(f"replayed {args.queries} DNS queries ({2 * args.queries} records, a row each), best of {args.repeat}, CPU us per query:")
    print(f"   recorder path {fast:6.2f}   reference path {ref:6.2f}   ratio {fast / ref:.2f}")


if __name__ == "__main__":
    main()
