"""Stitching request journeys (the traces view) against the latency report, on the same tape, in one run.

    .venv/bin/python benchmarks/bench_traces.py [--tape /tmp/flowtape-bench-traces.tape] [--duration 6m] [--runs 3] [--memory-limit 1GB] [--compare DIR]

Builds (once, cached at --tape) the benchmark tape of bench_reports.py (`flowtape synth`: 40
services on 30 nodes at 200 req/s), shorter by default (6 minutes: about 3.7M http rows; the
issue's 18 minutes give 11M: `--duration 18m`), plus request journeys at 50 per second
(`--journeys 50`: call trees whose rows carry traceparent, tid and TCP sequence numbers, so
every linking rule runs; the rest of the rows link by socket and nearest time). Then, in one
run, --runs pairs of fresh processes, each opening the tape afresh:
- latency: what `flowtape report latency --routes` computes (HTTP per edge and route, DNS, TCP);
- traces: stitching every row into trees (analyze.reports.traces.stitch) and naming the 10
  slowest traces (`flowtape report traces TAPE`).
It prints the medians of wall and CPU time, their ratio (target <= 2), and each process's peak
RSS. Memory: every per-row table of the stitching is DuckDB's, which spills to its temporary
folder past its memory_limit (`--memory-limit`, set in both processes alike; DuckDB's default is
80% of RAM, so without it nothing spills); Python holds one partition of the socket rule
(traces.PART_ROWS rows) and the rows of the deeper trees at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def build(path: Path, duration: str) -> None:
    if (path / "manifest.json").exists():
        return
    subprocess.run([sys.executable, "-m", "flowtape.cli", "synth", "-o", str(path), "--seed", "11", "--services", "40", "--nodes", "30",
                    "--zones", "3", "--regions", "1", "--duration", duration, "--rps", "200", "--journeys", "50", "-q"], check=True)


def one(kind: str, path: Path, memory_limit: str | None = None) -> dict:
    """Run one measurement in this process (a fresh one per measurement: peak RSS is its own)."""
    import flowtape
    from flowtape.analyze.reports.latency import dns_latency, http_latency, tcp_latency
    from flowtape.analyze.reports.traces import stitch, traces

    t0, c0 = time.perf_counter(), time.process_time()
    t = flowtape.open(path)
    if memory_limit:
        t.sql(f"SET memory_limit = '{memory_limit}'")
    a = t.analysis
    if kind == "latency":
        n = len(http_latency(a, per_route=True)) + len(dns_latency(a)) + len(tcp_latency(a))
    else:
        stitch(a)
        n = len(traces(a, slowest=10))
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rows": n}


def measure(kind: str, path: Path, memory_limit: str | None, checkout: Path | None = None) -> dict:
    """One measurement in a fresh process: of this checkout, or of `checkout` (its own .venv and
    benchmark script: a baseline timed on the same tape in the same run)."""
    extra = ["--memory-limit", memory_limit] if memory_limit else []
    exe, script = sys.executable, __file__
    if checkout is not None:
        exe, script = str(checkout / ".venv" / "bin" / "python"), str(checkout / "benchmarks" / "bench_traces.py")
    out = subprocess.run([exe, script, "--one", kind, "--tape", str(path), *extra], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tape", type=Path, default=Path("/tmp/flowtape-bench-traces.tape"))
    ap.add_argument("--duration", default="6m")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--memory-limit", help="DuckDB's memory_limit in both processes (e.g. 1GB); default DuckDB's own")
    ap.add_argument("--compare", type=Path, help="also time this checkout's stitching (its .venv), alternately in the same run")
    ap.add_argument("--one", choices=("latency", "traces"))
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.tape, args.memory_limit)))
        return
    build(args.tape, args.duration)
    import flowtape

    t = flowtape.open(args.tape)
    rows = t.sql("SELECT count(*) FROM http").fetchall()[0][0]
    linked = t.sql("SELECT count(*) FROM http WHERE tid IS NOT NULL").fetchall()[0][0]
    t.close()
    print(f"tape {args.tape}: {rows:,} http rows ({linked:,} of journeys with traceparent, tid and seq); DuckDB memory_limit "
          f"{args.memory_limit or 'default'}; load average {os.getloadavg()[0]:.2f}")
    kinds = ["latency", "traces"] + (["base"] if args.compare else [])
    res: dict[str, list[dict]] = {k: [] for k in kinds}
    for _ in range(args.runs):
        for kind in kinds:  # alternate, so that load swings hit all alike
            if kind == "base":
                res[kind].append(measure("traces", args.tape, args.memory_limit, args.compare))
            else:
                res[kind].append(measure(kind, args.tape, args.memory_limit))
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall", "cpu", "rss_mib")} for k, v in res.items()}
    for k in kinds:
        walls = ", ".join("%.2f" % r["wall"] for r in res[k])
        label = "base" if k == "base" else k
        print(f"{label:8} wall {med[k]['wall']:.2f} s  cpu {med[k]['cpu']:.2f} s  peak RSS {med[k]['rss_mib']:.0f} MiB  (walls {walls})")
    print(f"traces / latency: wall {med['traces']['wall'] / med['latency']['wall']:.2f}x, cpu {med['traces']['cpu'] / med['latency']['cpu']:.2f}x "
          f"(target <= 2); {rows / med['traces']['wall'] / 1e6:.2f}M rows/s stitched; load average {os.getloadavg()[0]:.2f}")
    if args.compare:
        print(f"base ({args.compare}) / latency: wall {med['base']['wall'] / med['latency']['wall']:.2f}x, cpu {med['base']['cpu'] / med['latency']['cpu']:.2f}x; "
              f"traces / base cpu {med['traces']['cpu'] / med['base']['cpu']:.2f}x")


if __name__ == "__main__":
    main()
