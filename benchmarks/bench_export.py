"""`flowtape export otlp --signals traces` on a large synthetic tape: the columnar encoder (the
default) against the reference encoder and a bare DuckDB scan of the columns it reads, in the same run.

    .venv/bin/python benchmarks/bench_export.py [--tape /tmp/flowtape-bench-export.tape] [--duration 6m] [--runs 1]
        [--out-dir /tmp] [--memory-limit 256MB] [--receiver] [--skip-reference] [--compare /work/main]

Builds (once, cached at --tape) a tape with `flowtape synth` (40 services on 30 nodes, 200 req/s
entering, 6 minutes: 3.7M http rows, both sides of most exchanges), then times, each in its own
process so that peak memory (RSS) is its own:
- bare: DuckDB reading every http column the export reads, as Arrow batches of 512 rows (the
  floor: no naming, no pairing, no encoding);
- reference: the CLI with FLOWTAPE_EXPORT_ENCODER=reference (span JSON written in SQL; for a
  receiver, decoded into opentelemetry-proto's messages);
- columnar: the CLI as shipped (analyze/export/wire.py encodes every span from Arrow columns);
- with --compare DIR: the CLI of another checkout (its own .venv), e.g. main before a change, so
  that the two are timed in the same run under the same load.
Each export writes every span as OTLP JSON Lines (--output), or with --receiver sends it as
OTLP/HTTP protobuf with gzip to a loopback receiver (a separate process that reads each request
and answers 200). Prints spans/s, CPU per span and peak RSS of each, and the ratios columnar /
reference and per-row time / bare. Target: >= 100k spans/s to a file, memory bounded (flat in the
tape's size: the export streams slice by slice; DuckDB spills beyond --memory-limit).
"""

from __future__ import annotations

import argparse
import hashlib
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


RECEIVER = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


def build(path: Path, duration: str) -> None:
    if (path / "manifest.json").exists():
        return
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flowtape.cli", "synth", "-o", str(path), "--seed", "11", "--services", "40", "--nodes", "30",
                    "--zones", "3", "--regions", "1", "--duration", duration, "--rps", "200", "-q"], check=True)
    print(f"built {path} in {time.perf_counter() - t:.0f} s", flush=True)


def child(args: list[str], env: dict | None = None) -> tuple[str, float, float, int]:
    """Run a child process; (stdout+stderr, wall s, cpu s, peak RSS KiB)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
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
    ap.add_argument("--memory-limit", default=None, help="also time the columnar encoder with this --memory-limit (both encoders run with the CLI's default)")
    ap.add_argument("--receiver", action="store_true", help="send to a loopback OTLP/HTTP receiver instead of writing a file")
    ap.add_argument("--skip-reference", action="store_true", help="time only the columnar encoder (and the bare scan)")
    ap.add_argument("--compare", type=Path, default=None, help="also time the CLI of this checkout (DIR/.venv/bin/python), first in each run")
    a = ap.parse_args()
    build(a.tape, a.duration)
    flowtape = [sys.executable, "-m", "flowtape.cli"]
    rx = None
    if a.receiver:
        rx = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
        port = int(rx.stdout.readline())
    try:
        for run in range(a.runs):
            out, wall_b, cpu_b, rss_b = child([sys.executable, "-c", BARE, str(a.tape)])
            rows, scan_s = out.split()[:2]
            rows, scan_s = int(rows), float(scan_s)
            print(f"run {run + 1}: bare scan {rows:,} rows in {scan_s:.2f} s ({rows / scan_s:,.0f} rows/s; process {wall_b:.1f} s, cpu {cpu_b:.1f} s, "
                  f"peak RSS {rss_b // 1024} MiB)", flush=True)
            rates = {}
            runs = [("compare", None)] if a.compare else []
            runs += [("reference", None)] if not a.skip_reference else []
            runs += [("columnar", None)] + ([("columnar", a.memory_limit)] if a.memory_limit else [])
            for enc, limit in runs:
                cli = [str(a.compare / ".venv" / "bin" / "python"), "-m", "flowtape.cli"] if enc == "compare" else flowtape
                target = a.out_dir / "flowtape-bench-export.jsonl"
                where = ["--endpoint", f"http://127.0.0.1:{port}", "--fresh", "--checkpoint", str(a.out_dir / "flowtape-bench-export.ck.json")] if rx else ["--output", str(target)]
                extra = ["--memory-limit", limit] if limit else []
                out, wall_e, cpu_e, rss_e = child([*cli, "export", "otlp", str(a.tape), *where, "--signals", "traces", *extra],
                                                  env={"FLOWTAPE_EXPORT_ENCODER": "columnar" if enc == "compare" else enc})
                size = 0
                if not rx:
                    size = target.stat().st_size
                    digest = hashlib.sha256()
                    with target.open("rb") as fh:  # the same tape gives the same file, whichever CLI wrote it
                        while chunk := fh.read(1 << 24):
                            digest.update(chunk)
                    target.unlink()
                spans = int(out.split("exported ")[1].split(" HTTP spans")[0].replace(",", ""))
                dns = int(out.split("HTTP spans, ")[1].split(" DNS spans")[0].replace(",", "")) if "DNS spans" in out else 0
                total = spans + dns
                rates.setdefault(enc, (total / wall_e, cpu_e / total))
                what = f"{size / 2**20:,.0f} MiB of JSON, {size / total:,.0f} B/span, sha256 {digest.hexdigest()[:16]}" if size else f"to {'loopback receiver'}"
                label = f"{enc if enc != 'compare' else a.compare.name} ({limit or 'default'} memory limit)"
                print(f"run {run + 1}: {label:36} {total:,} spans in {wall_e:.1f} s = {total / wall_e:,.0f} spans/s (cpu {cpu_e:.1f} s = "
                      f"{cpu_e / total * 1e6:.1f} us/span; peak RSS {rss_e // 1024} MiB; {what}); per-row time / bare {(wall_e / total) / (scan_s / rows):.1f}",
                      flush=True)
            for other in ("reference", "compare"):
                if other in rates:
                    name = other if other == "reference" else a.compare.name
                    print(f"run {run + 1}: ratio columnar / {name} (same memory limit): spans/s {rates['columnar'][0] / rates[other][0]:.2f}, "
                          f"CPU per span {rates['columnar'][1] / rates[other][1]:.2f}", flush=True)
            print(f"run {run + 1}: load average {os.getloadavg()[0]:.1f}; target >= 100,000 spans/s to a file", flush=True)
    finally:
        if rx is not None:
            rx.kill()
            rx.wait()


if __name__ == "__main__":
    main()
