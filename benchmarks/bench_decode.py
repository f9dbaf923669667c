"""Decoder throughput on the real seed captures (tests/data/*.pcap), against baselines in the same run.

    .venv/bin/python benchmarks/bench_decode.py [--seconds 1.0] [--prefix 512]

Prints, for each decoder, items/s and µs per item, and the ratio to a baseline that does
the least work on the same bytes:
- HTTP: one full request/response exchange through the compiled decoder (capture/decode/_http1.c;
  both heads parsed, bodies skipped by length, row built with redaction), each segment cut to
  --prefix bytes as the recorder sends them; baselines: the Python decoder it was made from
  (http_pairing.HttpConnection) and `bytes.find(b"\\r\\n\\r\\n")` on the same segments.
  The issue's budget is <= 10 µs of recorder CPU per HTTP request in total.
- DNS: decode_dns per message (its fast path compiled: capture/decode/_dns.c); baselines: dnslib's own
  `DNSRecord.parse` on the same messages, and decode_dns with the Python fast path (dns_fast.py, the
  reference). The issue's target: <= 5 µs per message.
- TLS: decode_client_hello per ClientHello (its fast path compiled: capture/decode/_tls.c); baselines:
  dpkt.ssl.TLS record parsing, and the Python fast path (tls._fast_client_hello). The issue's target:
  no slower than dpkt (ratio >= 1).
Needs dpkt (test extra) to read the pcaps.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import dnslib  # noqa: E402

from flowtape.capture.decode import dns as dns_mod, tls as tls_mod  # noqa: E402
from flowtape.capture.decode.dns import decode_dns  # noqa: E402
from flowtape.capture.decode.dns_fast import fast_parse as dns_fast_python  # noqa: E402
from flowtape.capture.decode.stats import DecodeStats  # noqa: E402
from flowtape.capture.decode.tls import decode_client_hello  # noqa: E402
from flowtape.capture.decode.http_pairing import HttpConnection, Redaction, decoder_in_use, new_connection  # noqa: E402
from pcap_seeds import segments  # noqa: E402


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Items per second of fn (which returns how many items one call processed): best of 3 runs."""
    best = 0.0
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while (t := time.perf_counter()) - t0 < seconds / 3:
            n += fn()
        best = max(best, n / (t - t0))
    return best


def http_streams(prefix: int) -> list[list[tuple[int, bytes, bool, int]]]:
    """Per connection of the capture: its segments cut to prefix, as (ts, seen, from_client, length)."""
    conns: dict[int, list] = {}
    for s in segments("http"):
        from_client = s.dst_port == 8080
        port = s.src_port if from_client else s.dst_port
        conns.setdefault(port, []).append((s.ts_ns, s.payload[:prefix], from_client, len(s.payload)))
    return list(conns.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--prefix", type=int, default=512)
    args = ap.parse_args()

    streams = http_streams(args.prefix)

    def http_with(make: Callable[[DecodeStats], object]) -> Callable[[], int]:
        def run() -> int:
            stats = DecodeStats()
            rows = 0
            for st in streams:
                conn = make(stats)
                for ts, data, from_client, length in st:
                    rows += len(conn.feed_tuples(ts, data, from_client, length))  # type: ignore[attr-defined]
                rows += len(conn.close_tuples(0))  # type: ignore[attr-defined]
            return rows
        return run

    http = http_with(lambda stats: new_connection(stats, Redaction()))
    http_python = http_with(lambda stats: HttpConnection(stats))

    all_segs = [seg[1] for st in streams for seg in st]

    def http_base() -> int:
        for data in all_segs:
            data.find(b"\r\n\r\n")
        return n_requests

    n_requests = http()  # 10 exchanges in the capture: keep-alive, pipelined, HEAD, 204, 304, chunked, 100-continue
    dns_msgs = [s.payload[: args.prefix] for s in segments("dns") if s.proto == "udp"]

    def dns() -> int:
        stats = DecodeStats()
        for m in dns_msgs:
            decode_dns(m, stats)
        return len(dns_msgs)

    def dns_python() -> int:  # the same, with the Python fast path (the reference) swapped in
        saved, dns_mod._fast_parse = dns_mod._fast_parse, dns_fast_python
        try:
            return dns()
        finally:
            dns_mod._fast_parse = saved

    def dns_base() -> int:
        for m in dns_msgs:
            dnslib.DNSRecord.parse(m)
        return len(dns_msgs)

    seen: set[int] = set()
    hellos = []
    for s in segments("tls"):
        if s.dst_port == 8443 and s.src_port not in seen:
            seen.add(s.src_port)
            hellos.append(s.payload[: args.prefix])

    def tls() -> int:
        stats = DecodeStats()
        for h in hellos:
            decode_client_hello(h, stats)
        return len(hellos)

    def tls_python() -> int:
        saved, tls_mod._tls = tls_mod._tls, None
        try:
            return tls()
        finally:
            tls_mod._tls = saved

    try:
        import dpkt

        def tls_base() -> int:
            for h in hellos:
                try:
                    dpkt.ssl.tls_multi_factory(h)
                except Exception:
                    pass
            return len(hellos)
    except ImportError:  # pragma: no cover
        tls_base = None

    dns_c = "c" if dns_mod._dns is not None else "python (capture/decode/_dns.c was not built)"
    tls_c = "c" if tls_mod._tls is not None else "python (capture/decode/_tls.c was not built)"
    print(f"decoder throughput, segments cut to {args.prefix} bytes ({args.seconds:.1f} s per measure); "
          f"HTTP decoder: {decoder_in_use()}; DNS fast path: {dns_c}; ClientHello fast path: {tls_c}")
    measured: dict[str, tuple[float, float | None]] = {}
    for key, name, fn, base, what in (
        ("http_py", "HTTP exchanges", http, http_python, "the Python decoder, http_pairing.HttpConnection"),
        ("http_find", "HTTP exchanges", http, http_base, 'bytes.find(b"\\r\\n\\r\\n") per segment'),
        ("dns_dnslib", "DNS messages", dns, dns_base, "dnslib DNSRecord.parse"),
        ("dns_py", "DNS messages", dns, dns_python, "decode_dns with the Python fast path, dns_fast.py"),
        ("tls_dpkt", "TLS ClientHellos", tls, tls_base, "dpkt.ssl.tls_multi_factory"),
        ("tls_py", "TLS ClientHellos", tls, tls_python, "the Python fast path, tls._fast_client_hello"),
    ):
        r = rate(fn, args.seconds)
        line = f"{name:17s} {r:12,.0f}/s  {1e6 / r:7.2f} µs each"
        b = None
        if base is not None:
            b = rate(base, args.seconds)
            line += f"   baseline ({what}) {b:12,.0f}/s  ratio {r / b:.3f}"
        measured[key] = (r, b)
        print(line)
    r, b = measured["dns_dnslib"]
    http_rate = measured["http_py"][0]
    # The 5 µs was stated on a machine where an HTTP exchange took 6 µs: the same bound as a
    # ratio to this run's HTTP exchange (absolute µs differ more than 2x between machines of this kind)
    print(f"DNS target <= 5 µs per message (where an HTTP exchange takes 6 µs): {1e6 / r:.2f} µs, "
          f"{http_rate / r:.2f} HTTP exchanges' time (bound 5/6 = 0.83: {'met' if http_rate / r <= 5 / 6 else 'NOT met'}); "
          f"{r / b:.1f}x dnslib's DNSRecord.parse in the same run")
    r, b = measured["tls_dpkt"]
    if b is not None:
        print(f"ClientHello target no slower than dpkt: {1e6 / r:.2f} µs vs dpkt {1e6 / b:.2f} µs, ratio {r / b:.2f} "
              f"({'met' if r >= b else 'NOT met'})")
    r = rate(http, args.seconds)
    print(f"HTTP path: {1e6 / r:.2f} µs of user-space decode+pair+row per request (budget 10 µs per request, kernel and writer excluded)")


if __name__ == "__main__":
    main()
