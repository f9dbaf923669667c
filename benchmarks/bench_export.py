"""`flowtape export otlp --output FILE --signals traces` on a large synthetic tape, against a bare
DuckDB scan of the columns it reads, in the same run.

    .venv/bin/python benchmarks/bench_export.py [--tape /tmp/flowtape-bench-export.tape] [--duration 6m] [--runs 1] [--out-dir /tmp]

Builds (once, cached at --tape) a tape with `flowtape synth` (40 services on 30 nodes, 200 req/s
entering, 6 minutes: 3.7M http rows, both sides of most exchanges), then times, each in its own
process so that peak memory (RSS) is its own:
- bare: DuckDB reading every http column the export reads, as Arrow batches of 512 rows (the
  floor: no naming, no pairing, no JSON);
- export: the CLI writing every span as OTLP JSON Lines (DuckDB memory limit 1GB, the default).
Prints spans/s of both, their ratio, CPU seconds, peak RSS and the file's size. Target: >= 100k
spans/s, memory bounded (flat in the tape's size: the export streams slice by slice).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE = r"""
import sys, time, flowtape
t = flowtape.open(sys.argv[1])
cols = "ts_request, ts_response, side, node, client_ip, client_port, server_ip, server_port, method, path, status, host, http_version, tls, pid, comm, user_agent, request_bytes, response_bytes, traceparent, conn_id"
t0 = time.perf_counter()
n = 0
for rb in t.sql(f"select {cols} from http").to_arrow_reader(512):
    n += rb.num_rows
print(n, time.perf_counter() - t0)
"""


def build(path: Path, duration: str) -> None:
    if (path / "manifest.json").exists():
        return
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flowtape.cli", "synth", "-o", str(path), "--seed", "11", "--services", "40", "--nodes", "30",
                    "--zones", "3", "--regions", "1", "--duration", duration, "--rps", "200", "-q"], check=True)
    print(f"built {path} in {time.perf_counter() - t:.0f} s", flush=True)


def child(args: list[str]) -> tuple[str, float, float, int]:
    """Run a child process; (stdout+stderr, wall s, cpu s, peak RSS KiB)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{out}")
    return out, wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tape", type=Path, default=Path("/tmp/flowtape-bench-export.tape"))
    ap.add_argument("--duration", default="6m")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--out-dir", type=Path, default=Path(tempfile.gettempdir()))
    a = ap.parse_args()
    build(a.tape, a.duration)
    flowtape = [sys.executable, "-m", "flowtape.cli"]
    for run in range(a.runs):
        out, wall_b, cpu_b, rss_b = child([sys.executable, "-c", BARE, str(a.tape)])
        rows, scan_s = out.split()[:2]
        rows, scan_s = int(rows), float(scan_s)
        target = a.out_dir / "flowtape-bench-export.jsonl"
        out, wall_e, cpu_e, rss_e = child([*flowtape, "export", "otlp", str(a.tape), "--output", str(target), "--signals", "traces"])
        size = target.stat().st_size
        target.unlink()
        spans = int(out.split("exported ")[1].split(" HTTP spans")[0].replace(",", ""))
        dns = int(out.split("HTTP spans, ")[1].split(" DNS spans")[0].replace(",", "")) if "DNS spans" in out else 0
        total = spans + dns
        print(f"run {run + 1}: bare scan {rows:,} rows in {scan_s:.2f} s ({rows / scan_s:,.0f} rows/s; process {wall_b:.1f} s, cpu {cpu_b:.1f} s, "
              f"peak RSS {rss_b // 1024} MiB)")
        print(f"run {run + 1}: export  {total:,} spans in {wall_e:.1f} s = {total / wall_e:,.0f} spans/s (cpu {cpu_e:.1f} s = "
              f"{cpu_e / total * 1e6:.1f} us/span; peak RSS {rss_e // 1024} MiB; {size / 2**20:,.0f} MiB of JSON, {size / total:,.0f} B/span)")
        print(f"run {run + 1}: ratio export/bare (time per row) {(wall_e / total) / (scan_s / rows):.1f}; target >= 100,000 spans/s", flush=True)


if __name__ == "__main__":
    main()
