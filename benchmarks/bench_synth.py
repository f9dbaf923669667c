"""Synth throughput and peak memory: `python benchmarks/bench_synth.py [--rows 1e7]`.

Generates a tape of about --rows rows in a child process (so its peak RSS is its own), then, as
the baseline measured in the same run, re-writes the same tables' rows with bare pyarrow
(ParquetWriter, zstd) from the finished tape, and prints rows/s, peak RSS and the ratio.
Memory flatness: the same is run at --rows/100 and --rows/10 (1e6 and 1e7 for --rows 1e8), each
in its own child, and the peaks are compared size to size: streaming means a ratio near 1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from flowtape.capture.synth import Params, synthesize
rows, out = float(sys.argv[1]), sys.argv[2]
# ~13 rows per second of tape per unit of rps on the default 10-service cluster (measured)
rps = 1000.0
duration = max(30, int(rows / (rps * 13)))
t0 = time.perf_counter()
r = synthesize(out, Params(seed=1, duration_ns=duration * 10**9, rps=rps))
dt = time.perf_counter() - t0
print(json.dumps({"rows": r.total_rows, "seconds": dt, "duration_s": duration, "rps": rps,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

BARE = r"""
import json, resource, sys, time, glob
import pyarrow.parquet as pq, pyarrow.dataset as ds
src, dst = sys.argv[1], sys.argv[2]
tables = {}
for f in sorted(glob.glob(src + "/*/node=*/part-*.parquet")):
    tables.setdefault(f.split("/")[-3], []).append(f)
t0 = time.perf_counter(); rows = 0
for name, files in tables.items():
    w = None
    for f in files:
        pf = pq.ParquetFile(f)
        for i in range(pf.num_row_groups):
            t = pf.read_row_group(i)
            if w is None:
                w = pq.ParquetWriter(f"{dst}/{name}.parquet", t.schema, compression="zstd", compression_level=3)
            w.write_table(t); rows += len(t)
    w.close()
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=float, default=1e7)
    ap.add_argument("--keep", action="store_true", help="keep the generated tape")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    try:
        sizes = []
        for k, rows in enumerate((a.rows / 100, a.rows / 10)):
            sizes.append(run(CHILD, str(rows), str(tmp / f"size{k}.tape")))
            shutil.rmtree(tmp / f"size{k}.tape", ignore_errors=True)
        big = run(CHILD, str(a.rows), str(tmp / "big.tape"))
        sizes.append(big)
        (tmp / "bare").mkdir()
        bare = run(BARE, str(tmp / "big.tape"), str(tmp / "bare"))
        size = sum(p.stat().st_size for p in (tmp / "big.tape").rglob("*") if p.is_file())
        print(f"synth   {big['rows']:>12,} rows in {big['seconds']:7.1f} s = {big['rows'] / big['seconds']:>10,.0f} rows/s, "
              f"peak RSS {big['peak_rss_mb']:6.0f} MiB, tape {size / 2**20:.0f} MiB ({big['duration_s']} s simulated at {big['rps']:g} rps)")
        print(f"pyarrow {bare['rows']:>12,} rows in {bare['seconds']:7.1f} s = {bare['rows'] / bare['seconds']:>10,.0f} rows/s, peak RSS {bare['peak_rss_mb']:6.0f} MiB (bare re-write of the same rows, baseline)")
        print(f"ratio   synth / bare pyarrow write = {(big['rows'] / big['seconds']) / (bare['rows'] / bare['seconds']):.2f}; "
              f"peak RSS synth / bare = {big['peak_rss_mb'] / bare['peak_rss_mb']:.2f}")
        print("flatness (peak RSS by tape size; each size in its own process):")
        prev = None
        for r in sizes:
            step = f"  x{r['peak_rss_mb'] / prev['peak_rss_mb']:.2f} peak for x{r['rows'] / prev['rows']:.1f} rows" if prev else ""
            print(f"  {r['rows']:>12,} rows in {r['seconds']:7.1f} s = {r['rows'] / r['seconds']:>10,.0f} rows/s, peak RSS {r['peak_rss_mb']:6.0f} MiB{step}")
            prev = r
        first = sizes[0]
        print(f"  peak RSS x{big['peak_rss_mb'] / first['peak_rss_mb']:.2f} over x{big['rows'] / first['rows']:.0f} rows")
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
