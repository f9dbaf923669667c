"""The report set with its heavy stage on Spark local[2] against the DuckDB engine, same run.

    .venv/bin/python benchmarks/bench_spark.py [--tape /tmp/flowtape-bench-spark.tape] [--flows 5000000] [--runs 1]

Builds (once, cached at --tape) a smaller cousin of benchmarks/bench_reports.py's tape, made the
same way (bench_reports.build: `flowtape synth`, then flow rows appended along the cluster's own
connections), sized to run in a few minutes on 2 shared cores. Then, per run, on a freshly opened
tape each: the report set of `flowtape report topology|latency|traffic|dns` (bench_reports.
run_reports) with engine="duckdb", then with engine="spark" (Spark local[2]; the SparkSession is
started and warmed up on the tiny fixture before the clock, both printed apart). Prints wall seconds of each, the ratio
spark / duckdb, the part of Spark's time spent in its per-row stage (the rest is the DuckDB
finishing both engines share), and Spark's per-row stage rows per second per core. Spark is
not expected to win on 2 cores: the figure says what the engine costs (docs/spark.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import flowtape  # noqa: E402
from bench_reports import build, run_reports  # noqa: E402
from flowtape.analyze.engines import spark as spark_engine  # noqa: E402

SYNTH = ["--seed", "11", "--services", "20", "--nodes", "10", "--zones", "3", "--regions", "1", "--duration", "6m", "--rps", "200"]


def timed(path: Path, engine: str) -> tuple[float, float, int]:
    """Wall seconds of the report set with `engine`, seconds of its per-row passes on Spark
    (translating, shipping the small tables, running, fetching; 0 for duckdb), rows those passes read."""
    tape = flowtape.open(str(path), engine=engine)
    t = time.perf_counter()
    run_reports(tape)
    wall = time.perf_counter() - t
    passes = getattr(tape.analysis.engine, "timings", [])
    for name, s in passes:
        print(f"   spark pass {name.split('_')[1]:<6} {s:7.2f} s   ({name})")  # paths, http, flow (sums), seen (egress first/last)
    inside = sum(s for _, s in passes)
    rows = tape.rows("http") * 2 + tape.rows("flows") * 2  # paths + HTTP sums; flow sums + first/last seen (a filtered scan)
    tape.close()
    return wall, inside, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tape", type=Path, default=Path("/tmp/flowtape-bench-spark.tape"))
    ap.add_argument("--flows", type=int, default=5_000_000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--master", default="local[2]")
    args = ap.parse_args()
    build(args.tape, args.flows, SYNTH)
    tape = flowtape.open(str(args.tape))
    rows = {t: tape.rows(t) for t in ("http", "flows", "connections", "dns")}
    tape.close()
    print("rows      " + ", ".join(f"{t} {n:,}" for t, n in rows.items()))
    print(f"load      {os.getloadavg()[0]:.2f} (1 min average, {os.cpu_count()} cores)")
    t = time.perf_counter()
    spark_engine.session(args.master)
    print(f"spark     session started in {time.perf_counter() - t:.1f} s (not in the figures below)")
    # the JVM's first queries load classes and compile (JIT): warmed up on the tiny fixture, as a
    # notebook's long-lived session would be; the time is printed, not counted
    t = time.perf_counter()
    run_reports(flowtape.open(str(Path(__file__).resolve().parents[1] / "fixtures" / "tiny.tape"), engine="spark"))
    print(f"spark     warm-up (the report set on fixtures/tiny.tape) {time.perf_counter() - t:.1f} s (not in the figures below)")
    results = []
    for i in range(args.runs):
        duck, _, _ = timed(args.tape, "duckdb")
        spark, inside, scanned = timed(args.tape, "spark")
        results.append((duck, spark, spark / duck, inside, scanned))
        print(f"run {i + 1}: duckdb {duck:.2f} s, spark {args.master} {spark:.2f} s (per-row stage {inside:.2f} s), ratio {spark / duck:.2f}")
    duck, spark, ratio, inside, scanned = (statistics.median(r[k] for r in results) for k in range(5))
    cores = 2 if args.master == "local[2]" else os.cpu_count()
    print(f"report set, duckdb engine        {duck:7.2f} s   (median of {len(results)})")
    print(f"report set, spark engine         {spark:7.2f} s   ratio spark/duckdb {ratio:.2f}")
    print(f"spark per-row stage              {inside:7.2f} s   ({inside / spark:.0%} of the spark run; the rest is DuckDB naming and finishing)")
    print(f"spark per-row rows/s per core    {scanned / inside / cores:,.0f}   ({scanned:,} rows read by its passes)")
    print(f"load      {os.getloadavg()[0]:.2f} at the end")
    spark_engine.stop()


if __name__ == "__main__":
    main()
