"""`flowtape import pcap` throughput against `tshark -q -z conv,tcp` on the same capture, in the same run.

The capture is real traffic, made here: a namespace lab (198.18.0.0/15) with nginx (HTTP and TLS)
and dnsmasq, and a client running at once
  - wrk keep-alive on a 1 KiB file (many small exchanges),
  - wrk with `Connection: close` (a TCP connection per request), plain and over TLS (a handshake each),
  - curl downloads of 8 MiB and 256 KiB files (bulk, at a capped rate),
  - a DNS client asking dnsmasq as fast as it answers (UDP; --dns-qps paces it),
while tcpdump writes every packet whole (-s 0) on the client's bridge port, until the file passes
--mb (default 500). Offloads are off on the veths, so every packet is a wire packet.

Then, --reps times in alternating order: tshark -n -q -r FILE -z conv,tcp, and flowtape import pcap
FILE -o TAPE, each as its own process under /usr/bin/time (wall and CPU seconds, peak RSS). Printed:
MB/s and packets/s of both, their ratio (tshark's time over the import's: the target is >= 2), and
the import's peak RSS (target <= 500 MiB). The machine is shared and noisy: the median of the pairs.

Run as root:  .venv/bin/python benchmarks/bench_pcap.py [--mb 500] [--reps 3] [--keep DIR] [--pcap FILE] [--dns-qps N]
(--pcap FILE measures an existing capture instead of making one.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from netlab import Lab, make_cert, start_dnsmasq, start_nginx_l7  # noqa: E402

FLOWTAPE = str(Path(sys.executable).with_name("flowtape"))

DNS_CLIENT = r"""
import socket, struct, sys, time
srv, stop_at, qps = sys.argv[1], time.time() + float(sys.argv[2]), float(sys.argv[3])
start = time.time()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
names = [b"a", b"b", b"c1", b"nx"]
i = 0
while time.time() < stop_at:
    name = names[i % 4] + b".lab.test"
    q = struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + b"".join(bytes([len(p)]) + p for p in name.split(b".")) + b"\0\0\1\0\1"
    s.sendto(q, (srv, 53))
    try:
        s.recv(512)
    except socket.timeout:
        pass
    i += 1
    if qps > 0:  # paced: the i-th query not before i / qps seconds
        ahead = start + i / qps - time.time()
        if ahead > 0:
            time.sleep(ahead)
"""


def make_capture(out: Path, mb: int, dns_qps: float = 0) -> dict:
    """Real mixed traffic captured on the client's bridge port until the file reaches `mb` MB."""
    with Lab() as lab:
        srv, cli = lab.add_host("srv"), lab.add_host("cli")
        www = lab.www({"f1k": b"k" * 1024, "m256": os.urandom(256 * 1024), "m8": os.urandom(8 << 20)})
        nginx, _ = start_nginx_l7(srv, www, tls=make_cert(lab.workdir, ["a.lab.test"]), workers=1)
        dns = start_dnsmasq(srv, ["--local-ttl=300", "--local=/lab.test/", f"--host-record=a.lab.test,{srv.ip}",
                                  f"--host-record=b.lab.test,{srv.ip}", "--cname=c1.lab.test,a.lab.test", "--dns-forward-max=1000"])
        cap = lab.workdir / "bench.pcap"
        dump = subprocess.Popen(["tcpdump", "-i", cli.host_if, "-n", "-s", "0", "-B", "65536", "-w", str(cap)], stderr=subprocess.PIPE, text=True)
        dump.stderr.readline()
        procs = []
        started = time.monotonic()
        try:
            run_s = "600"
            procs.append(cli.popen(["wrk", "-t1", "-c8", f"-d{run_s}", f"http://{srv.ip}/f1k"], stdout=subprocess.DEVNULL))
            procs.append(cli.popen(["wrk", "-t1", "-c2", f"-d{run_s}", "-H", "Connection: close", f"http://{srv.ip}/f1k"], stdout=subprocess.DEVNULL))
            procs.append(cli.popen(["wrk", "-t1", "-c1", f"-d{run_s}", "-H", "Connection: close", f"https://{srv.ip}/f1k"], stdout=subprocess.DEVNULL))
            procs.append(cli.popen([sys.executable, "-c", DNS_CLIENT, srv.ip, run_s, str(dns_qps)]))
            downloads = ["bash", "-c", f"while true; do curl -s -o /dev/null --limit-rate 20M http://{srv.ip}/m8; "
                                       f"for i in 1 2 3 4; do curl -s -o /dev/null http://{srv.ip}/m256; done; done"]
            procs.append(cli.popen(downloads))
            while cap.stat().st_size < mb * 1_000_000:
                time.sleep(0.5)
                if time.monotonic() - started > 900:
                    raise RuntimeError("the capture did not reach its size in 15 minutes")
        finally:
            for p in procs:
                p.kill()
            for p in procs:
                p.wait()
            time.sleep(1.5)  # tcpdump's last block
            dump.send_signal(signal.SIGINT)
            stats = dump.stderr.read()
            dump.wait()
            nginx.kill()
            dns.kill()
        shutil.move(str(cap), out)
    return {"seconds": round(time.monotonic() - started, 1), "tcpdump": " ".join(stats.split())}


def timed(argv: list[str], env: dict | None = None) -> dict:
    """Run argv under /usr/bin/time: wall and CPU seconds, peak RSS (KiB)."""
    fmt = "%e %U %S %M"
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        p = subprocess.run(["/usr/bin/time", "-o", tf.name, "-f", fmt, *argv], capture_output=True, text=True, env=env)
        if p.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {p.stderr[-500:]}")
        wall, user, sys_, rss = tf.read().split()[-4:]
    return {"wall": float(wall), "cpu": float(user) + float(sys_), "rss_mib": int(rss) / 1024, "stderr": p.stderr}


def capinfo(path: Path) -> tuple[int, int]:
    out = subprocess.run(["capinfos", "-M", "-c", "-s", str(path)], capture_output=True, text=True).stdout
    packets = int(next(ln.split(":")[1] for ln in out.splitlines() if "Number of packets" in ln).strip())
    size = path.stat().st_size
    return packets, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=500)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pcap", type=Path, help="an existing capture to measure")
    ap.add_argument("--keep", type=Path, help="keep the capture here")
    ap.add_argument("--dns-qps", type=float, default=0, help="pace the DNS client (default 0: as fast as dnsmasq answers, ~10k/s)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pcap-"))
    made = None
    try:
        if args.pcap:
            pcap = args.pcap
        else:
            if os.geteuid() != 0:
                sys.exit("bench_pcap: making the capture needs root (network namespaces); or give --pcap FILE")
            pcap = (args.keep or work) / "bench.pcap"
            pcap.parent.mkdir(parents=True, exist_ok=True)
            made = make_capture(pcap, args.mb, args.dns_qps)
            print(f"capture: {pcap} made in {made['seconds']} s of real traffic; tcpdump: {made['tcpdump']}", flush=True)
        packets, size = capinfo(pcap)
        print(f"capture: {size / 1e6:.1f} MB, {packets:,} packets ({size / packets:.0f} B/packet)", flush=True)
        pairs = []
        for rep in range(args.reps):
            tape = work / f"t{rep}.tape"
            order = ("tshark", "import") if rep % 2 == 0 else ("import", "tshark")
            res = {}
            for what in order:
                if what == "tshark":
                    res[what] = timed(["tshark", "-n", "-q", "-r", str(pcap), "-z", "conv,tcp"])
                else:
                    res[what] = timed([FLOWTAPE, "import", "pcap", str(pcap), "-o", str(tape)])
            shutil.rmtree(tape, ignore_errors=True)
            ratio = res["tshark"]["wall"] / res["import"]["wall"]
            pairs.append({"ratio": ratio, "cpu_ratio": res["tshark"]["cpu"] / res["import"]["cpu"], **{k: {x: v for x, v in r.items() if x != "stderr"} for k, r in res.items()}})
            t, i = res["tshark"], res["import"]
            print(f"rep {rep + 1}: tshark {t['wall']:.2f} s ({size / 1e6 / t['wall']:.0f} MB/s, {packets / t['wall']:,.0f} packets/s, {t['rss_mib']:.0f} MiB); "
                  f"import {i['wall']:.2f} s ({size / 1e6 / i['wall']:.0f} MB/s, {packets / i['wall']:,.0f} packets/s, peak RSS {i['rss_mib']:.0f} MiB); "
                  f"ratio {ratio:.2f} (CPU {pairs[-1]['cpu_ratio']:.2f})", flush=True)
        med = statistics.median(p["ratio"] for p in pairs)
        imp_wall = statistics.median(p["import"]["wall"] for p in pairs)
        rss = max(p["import"]["rss_mib"] for p in pairs)
        print(f"\nimport: {size / 1e6 / imp_wall:.0f} MB/s, {packets / imp_wall:,.0f} packets/s (median wall {imp_wall:.2f} s); "
              f"ratio to tshark -z conv,tcp: {med:.2f} (median of {len(pairs)}, range {min(p['ratio'] for p in pairs):.2f}-{max(p['ratio'] for p in pairs):.2f}; target >= 2); "
              f"peak RSS {rss:.0f} MiB (target <= 500)")
        if args.json:
            args.json.write_text(json.dumps({"capture": {"bytes": size, "packets": packets, "made": made}, "pairs": pairs, "ratio": med, "peak_rss_mib": rss}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
