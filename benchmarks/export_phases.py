"""Where the CPU of `flowtape export otlp --signals traces` goes, phase by phase, in one process:
the enrichment state, HttpSides.build (naming and the time-sorted tables), then per slice
HttpSides.materialize (pairing, the slice table) and columnar.slice_items (classes, span
columns, encoding to JSON). Prints CPU-µs per span of each (the file writing and the main
thread's grouping are not in it: bench_export.py times the whole CLI).

    .venv/bin/python benchmarks/export_phases.py TAPE [--naming keyed|enriched]

A 1-minute synth tape of bench_export's cluster (617k spans) takes about a minute:
    .venv/bin/flowtape synth -o /tmp/ft-1m.tape --seed 11 --services 40 --nodes 30 --zones 3 --regions 1 --duration 1m --rps 200 -q
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import flowtape
from flowtape.analyze.export import columnar, spans as sp
from flowtape.analyze.reports.filters import Filters


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tape")
    ap.add_argument("--naming", choices=("keyed", "enriched"), default="keyed")
    a = ap.parse_args()
    t = flowtape.open(a.tape)
    t.sql("SET memory_limit = '1GB'")
    totals: dict[str, list[float]] = {}
    last = [time.perf_counter(), _cpu()]

    def mark(name: str) -> None:
        w, c = time.perf_counter(), _cpu()
        acc = totals.setdefault(name, [0.0, 0.0])
        acc[0] += w - last[0]
        acc[1] += c - last[1]
        last[:] = [w, c]

    t.analysis  # noqa: B018 (the enrichment state)
    mark("create_views")
    sides = sp.HttpSides(t, Filters(), naming=a.naming)
    sides.build()
    mark("build")
    n = 0
    for sl in sides.slices:
        sides.materialize(sl, table=False)
        mark("materialize")
        for _, _, spans in columnar.slice_items(t.con, "json", 8192):
            n += len(spans)
        t.sql("DROP VIEW IF EXISTS ftx_slice")
        mark("slice_items")
    sides.close()
    for name, (wall, cpu) in totals.items():
        print(f"{name:14} wall {wall:6.2f} s  cpu {cpu:6.2f} s = {cpu / n * 1e6:5.2f} us/span")
    print(f"{n:,} spans; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
