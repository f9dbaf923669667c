"""The HTTP/2 decoder's user-space cost per request, replayed, against HTTP/1.1 in the same run.

Real traffic once: nginx on loopback (h2c with prior knowledge, and HTTP/1.1 keep-alive), h2load
with 16 connections and 10 concurrent streams each (HTTP/1.1: 16 connections, one request at a
time each), captured whole by tcpdump. Each connection's segments are cut to 1448-byte wire
segments (the lab's veths have no segmentation offload) and made into the struct l7_event records
bpf/l7.c sends, then replayed through the recorder's L7Decoder (ordering, decoding, rows joined to
both local endpoints) with process CPU time, best of --repeat. Baseline: the HTTP/1.1 records
through the same L7Decoder (the compiled capture/decode/_http1.c decoder). Also the bare
H2Connection on the connections' bytes (no records, no rows).

Run as root:  .venv/bin/python benchmarks/bench_h2.py [--requests 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import dpkt

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from flowtape.capture.decode.http2 import H2Connection  # noqa: E402
from flowtape.capture.decode.http_pairing import Redaction  # noqa: E402
from flowtape.capture.decode.stats import DecodeStats  # noqa: E402
from flowtape.capture.live.l7 import Endpoint, L7Decoder  # noqa: E402
from test_decode_http2 import _records  # noqa: E402

H1, H2C = 18081, 18082


def capture(work: Path, n: int) -> Path:
    (work / "www").mkdir()
    (work / "www" / "f100").write_bytes(b"x" * 100)
    conf = work / "nginx.conf"
    conf.write_text(f"""daemon off; user root; pid {work}/nginx.pid; error_log {work}/error.log; worker_processes 1;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000; client_body_temp_path {work};
  server {{ listen 127.0.0.1:{H1}; root {work}/www; }}
  server {{ listen 127.0.0.1:{H2C} http2; root {work}/www; }} }}""")
    nginx = subprocess.Popen(["nginx", "-c", str(conf)])
    time.sleep(1)
    pcap = work / "load.pcap"
    dump = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "-n", "-s", "0", "-B", "65536", "-w", str(pcap), f"tcp port {H1} or tcp port {H2C}"],
                            stderr=subprocess.PIPE, text=True)
    assert "listening" in dump.stderr.readline()
    try:
        for argv in (["-m", "10", f"http://127.0.0.1:{H2C}/f100"], ["--h1", f"http://127.0.0.1:{H1}/f100"]):
            out = subprocess.run(["h2load", "-n", str(n), "-c", "16", *argv], check=True, capture_output=True, text=True).stdout
            print(f"  h2load {argv[-1]}: " + next(line for line in out.splitlines() if line.startswith("requests:")))
        time.sleep(0.5)
    finally:
        dump.terminate()
        dump.wait()
        nginx.terminate()
        nginx.wait()
    return pcap


def connections(pcap: Path, port: int) -> dict[tuple, list]:
    out: dict[tuple, list] = defaultdict(list)
    with open(pcap, "rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            tcp = ip.data
            if not isinstance(tcp, dpkt.tcp.TCP) or not tcp.data or port not in (tcp.sport, tcp.dport):
                continue
            fc = tcp.dport == port
            out[(tcp.sport, tcp.dport) if fc else (tcp.dport, tcp.sport)].append((round(ts * 1e9), bytes(tcp.data), fc))
    return dict(out)


def replay(conns: dict, repeat: int) -> tuple[float, int, DecodeStats]:
    feeds = [(c, s, _records(segs, c, s), segs[0][0]) for (c, s), segs in conns.items()]
    best, rows, stats = float("inf"), 0, None
    for _ in range(repeat):
        dec = L7Decoder("n", 0, redaction=Redaction())
        for c, s, _, t0 in feeds:
            # (the addresses _records gives the packets)
            dec.add_endpoint(Endpoint(c, "client", t0 - 1000, "198.18.0.2", c, "198.18.0.1", s, 1, "h2load", c))
            dec.add_endpoint(Endpoint(s * 100000 + c, "server", t0 - 1000, "198.18.0.1", s, "198.18.0.2", c, 2, "nginx", s * 100000 + c))
        t = time.process_time()
        for _, _, recs, _ in feeds:
            dec.feed_batch(recs)
        out = dec.take_rows(final=True)["http"]
        table = out.to_arrow()
        best = min(best, time.process_time() - t)
        rows, stats = table.num_rows, dec.stats
    return best, rows, stats


def bare(conns: dict, repeat: int) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(repeat):
        t = time.process_time()
        n = 0
        for segs in conns.values():
            c = H2Connection(DecodeStats(), Redaction())
            for ts, data, fc in segs:
                n += len(c.feed_tuples(ts, data, fc))
            n += len(c.close_tuples(0))
        best = min(best, time.process_time() - t)
    return best, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="profile the bare HTTP/2 decoder instead")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"capturing {a.requests} requests each (h2c and HTTP/1.1) on loopback")
        pcap = capture(Path(tmp), a.requests)
        h2, h1 = connections(pcap, H2C), connections(pcap, H1)
        if a.profile:
            import cProfile
            import pstats

            cProfile.runctx("bare(h2, 1)", globals(), {"h2": h2}, str(Path(tmp) / "prof"))
            pstats.Stats(str(Path(tmp) / "prof")).sort_stats("tottime").print_stats(12)
            return 0
    n = a.requests
    t2, rows2, st2 = replay(h2, a.repeat)
    t1, rows1, _ = replay(h1, a.repeat)
    tb, nb = bare(h2, a.repeat)
    print(f"h2c      L7Decoder: {t2 / n * 1e6:6.2f} us/request  ({rows2} rows for {n} requests, {len(h2)} connections; "
          f"desync {st2['http2_desync']}, malformed {st2['http2_malformed']})")
    print(f"HTTP/1.1 L7Decoder: {t1 / n * 1e6:6.2f} us/request  ({rows1} rows; the baseline, compiled HTTP/1 decoder)")
    print(f"h2c bare H2Connection: {tb / n * 1e6:6.2f} us/request ({nb} streams)")
    print(f"ratio h2c / HTTP/1.1: {t2 / t1:.2f}")
    ok = rows2 == 2 * n and rows1 == 2 * n and nb == n
    if not ok:
        print("row counts differ from the requests made", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
