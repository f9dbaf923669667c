"""The full report set on a large tape, against a bare DuckDB scan of the same columns.

    .venv/bin/python benchmarks/bench_reports.py [--tape /tmp/flowtape-bench.tape] [--flows 50000000] [--runs 3] [--steps]
        [--compare DIR]

Builds (once, cached at --tape) a synthetic tape with >= 10M http rows (`flowtape synth`: 40
services on 30 nodes at 200 req/s for 18 minutes) and appends >= 50M flow rows (synth alone
makes few flows per request): each appended row is one direction of a client -> server pod
pair that had a connection open in that 5 s interval, written by the client's node, as a
recorder would write it. Then, in one run, it times:
- bare: DuckDB scanning every column the reports read, the floor. Which columns is taken from
  DuckDB's plans of the report set's own statements (read_columns); until 2026-11-26 it was a
  hand list that had fallen behind (http's conn_id, method and side, flows' ts_end, most of
  connections and dns were not in it);
- reports: topology, latency (per route), traffic (talkers, zone and region pairs, egress)
  and dns — what `flowtape report ...` runs;
and prints their ratio (target <= 2), rows per second per core and peak memory (RSS). Each of
--runs pairs opens the tape afresh; medians are printed, with the CPU-time ratio beside the
wall-time one (the machine is shared: wall times swing with other work, CPU times much less).

--compare DIR times DIR's checkout (its own .venv and code: a baseline such as a clean clone
of main) on the same tape in the same run: each run is a pair of child processes, this
checkout's and DIR's, in alternating order, each running one_run (the same bare queries, then
that checkout's report set) and reporting its times and peak RSS; the ratios of both are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

import flowtape
from flowtape.schema import FLOWS, TABLES
from flowtape.writer import TapeWriter

INTERVAL = 5_000_000_000


SYNTH = ["--seed", "11", "--services", "40", "--nodes", "30", "--zones", "3", "--regions", "1", "--duration", "18m", "--rps", "200"]


def build(path: Path, flows: int, synth: list[str] = SYNTH) -> None:
    """`flowtape synth` with `synth`'s options, then `flows` flow rows appended (see the module docstring)."""
    if (path / "manifest.json").exists():
        return
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flowtape.cli", "synth", "-o", str(path), *synth, "-q"], check=True)
    tape = flowtape.open(path)
    # flows follow the cluster's own connections (as a recorder's would): each row is one
    # direction of a client -> server pod pair that had a connection open in that interval
    conns = tape.sql("select client_ip, server_ip, epoch_ns(ts_start) as a, coalesce(epoch_ns(ts_end), 9e18::BIGINT) as b, node "
                     "from connections where role = 'client'").pl()
    start, end = tape.window
    nodes = sorted(tape.nodes)
    tape.close()
    rng = np.random.default_rng(5)
    cip, sip = conns["client_ip"].to_numpy(), conns["server_ip"].to_numpy()
    a, b = conns["a"].to_numpy(), conns["b"].to_numpy()
    node_of = {n: i for i, n in enumerate(nodes)}
    conn_node = np.array([node_of[n] for n in conns["node"].to_list()])
    intervals = (end - start) // INTERVAL
    per = flows // intervals + 1
    w = TapeWriter(path, append=True, node=nodes[0], rotate_seconds=1e9)
    written = 0
    for k in range(intervals):
        t0 = start + k * INTERVAL
        live = np.flatnonzero((a <= t0 + INTERVAL) & (b > t0))
        pick = live[rng.integers(0, len(live), per)]
        reply = rng.random(per) < 0.5
        src = np.where(reply, sip[pick], cip[pick])
        dst = np.where(reply, cip[pick], sip[pick])
        ts = np.sort(t0 + rng.integers(0, INTERVAL, per))
        packets = np.maximum(1, rng.lognormal(2, 1.3, per)).astype(np.uint64)
        eph = rng.integers(32768, 61000, per).astype(np.uint16)
        batch = pa.table({
            "ts_start": pa.array(ts, pa.timestamp("ns", tz="UTC")),
            "ts_end": pa.array(np.minimum(ts + rng.integers(0, INTERVAL, per), t0 + INTERVAL - 1), pa.timestamp("ns", tz="UTC")),
            "iface": pa.array(["eth0"] * per), "ifindex": pa.array(np.full(per, 2, np.uint32)), "direction": pa.array(["egress"] * per),
            "src_mac": pa.nulls(per, pa.string()), "dst_mac": pa.nulls(per, pa.string()),
            "src_ip": pa.array(src), "dst_ip": pa.array(dst),
            "src_port": pa.array(np.where(reply, np.uint16(8080), eph)), "dst_port": pa.array(np.where(reply, eph, np.uint16(8080))),
            "l4": pa.array(["tcp"] * per), "ip_proto": pa.array(np.full(per, 6, np.uint8)),
            "packets": pa.array(packets), "bytes": pa.array(packets * np.uint64(900)), "tcp_flags": pa.array(np.full(per, 0x18, np.uint16)),
        }, schema=FLOWS.arrow_schema)
        for n in np.unique(conn_node[pick]):  # written by the client's node's recorder
            w.append("flows", batch.filter(pa.array(conn_node[pick] == n)), node=nodes[n])
        written += per
        if written >= flows:
            break
    w.close()
    print(f"built {path} in {time.perf_counter() - t:.0f} s", file=sys.stderr)


def read_columns(path: Path) -> dict[str, list[str]]:
    """Table -> the columns the report set reads from it, from DuckDB's own plans: every statement
    the reports run is captured and EXPLAINed, and the projections of its Parquet scans are
    collected. The bare scan then reads exactly these (the issue's "scan of the same columns"),
    with nothing to keep in step by hand."""
    tape = flowtape.open(path)
    con, statements = tape.con, []

    class Recording:
        def __getattr__(self, name):
            return getattr(con, name)

        def execute(self, query, *args):
            statements.append(query)
            return con.execute(query, *args)

        def sql(self, query, *args):
            statements.append(query)
            return con.sql(query, *args)

    tape.con = Recording()
    run_reports(tape)
    tape.con = con
    columns = {name: {c.name for c in t.columns} | {"node"} for name, t in TABLES.items()}
    found: dict[str, set[str]] = {}

    def walk(node: dict) -> None:
        if "PARQUET" in node.get("name", ""):
            proj = node.get("extra_info", {}).get("Projections", [])
            proj = [proj] if isinstance(proj, str) else proj
            owners = [t for t, cols in columns.items() if set(proj) <= cols]
            if len(owners) != 1:
                raise RuntimeError(f"cannot tell which table a scan of {proj} reads: {owners}")
            found.setdefault(owners[0], set()).update(proj)
        for child in node.get("children", []):
            walk(child)

    for q in statements:
        select = re.sub(r"(?is)^create\s+(or\s+replace\s+)?temp(orary)?\s+(table|view)\s+(if\s+not\s+exists\s+)?\S+\s+as\s+", "", q.strip())
        if not re.match(r"(?is)^(select|with)\b", select):
            continue
        try:
            plans = con.execute("EXPLAIN (FORMAT JSON) " + select).fetchall()
        except duckdb.InvalidInputException as e:
            if "parameters" in str(e):
                continue  # a parameterised catalogue lookup: reads no table
            raise
        for _, plan in plans:
            for node in json.loads(plan):
                walk(node)
    tape.close()
    return {t: sorted(cols) for t, cols in sorted(found.items())}


def bare_queries(path: Path, read: dict[str, list[str]]) -> list[str]:
    """One query per table touching every value of the columns the reports read, at the least
    cost that still reads them: sum() of numbers, of epoch_ns() of times, of length() of text and
    of len() of lists."""
    tape = flowtape.open(path)
    queries = []
    for table, cols in read.items():
        types = dict(tape.sql(f"SELECT column_name, column_type FROM (DESCRIBE {table})").fetchall())
        terms = []
        for c in cols:
            t = types[c]
            terms.append(f"sum(epoch_ns({c}))" if t.startswith("TIMESTAMP") else f"sum(length({c}))" if t == "VARCHAR"
                         else f"count_if({c})" if t == "BOOLEAN" else f"sum(len({c}))" if t.endswith("[]")
                         else f"count({c})" if t.startswith(("STRUCT", "MAP")) else f"sum({c})")
        queries.append(f"SELECT {', '.join(terms)} FROM {table}")
    tape.close()
    return queries


def run_reports(tape) -> None:
    r = tape.report
    r.topology(by="workload")
    r.http_latency(routes=True)
    r.dns_latency()
    r.tcp_latency()
    r.talkers()
    r.zone_pairs()
    r.zone_pairs(level="region")
    r.egress()
    r.dns_failures()
    r.slow_lookups()


def steps(path: Path) -> list[tuple[str, float, float]]:
    """The report set again on a fresh tape, one step at a time: the shared tables first (views,
    HTTP and flow sums, egress first/last times), then each report over them. Wall and CPU s."""
    tape = flowtape.open(path)
    r = lambda: tape.report  # noqa: E731 - tape.analysis is made by the "views" step, not before
    parts = [("views", lambda: tape.analysis), ("http_sums", lambda: tape.analysis.http_sums()),
             ("flow_sums", lambda: tape.analysis.flow_sums()), ("flow_seen", lambda: tape.analysis.flow_seen()),
             ("topology", lambda: r().topology(by="workload")), ("http_latency", lambda: r().http_latency(routes=True)),
             ("dns_latency", lambda: r().dns_latency()), ("tcp_latency", lambda: r().tcp_latency()), ("talkers", lambda: r().talkers()),
             ("zone_pairs", lambda: r().zone_pairs()), ("region_pairs", lambda: r().zone_pairs(level="region")),
             ("egress", lambda: r().egress()), ("dns_failures", lambda: r().dns_failures()), ("slow_lookups", lambda: r().slow_lookups())]
    out = []
    for name, fn in parts:
        c, t = time.process_time(), time.perf_counter()
        fn()
        out.append((name, time.perf_counter() - t, time.process_time() - c))
    tape.close()
    return out


def one_run(path: Path, bare_sql: list[str]) -> tuple[float, float, float, float]:
    """Bare scan then the report set, on a freshly opened tape (the shared aggregates are cached
    per open tape: a second set on the same tape would measure the cache). Returns wall and CPU
    seconds of each."""
    tape = flowtape.open(path)
    c, t = time.process_time(), time.perf_counter()
    for q in bare_sql:
        tape.sql(q).fetchall()
    bare, bare_cpu = time.perf_counter() - t, time.process_time() - c
    c, t = time.process_time(), time.perf_counter()
    run_reports(tape)
    full, full_cpu = time.perf_counter() - t, time.process_time() - c
    tape.close()
    return bare, bare_cpu, full, full_cpu


ARM = """
import json, resource, sys
sys.path.insert(0, sys.argv[1] + "/benchmarks")
import bench_reports
bare, bare_cpu, full, full_cpu = bench_reports.one_run(bench_reports.Path(sys.argv[2]), json.loads(sys.argv[3]))
print(json.dumps([bare, bare_cpu, full, full_cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]))
"""


def arm(checkout: Path, path: Path, bare_sql: list[str]) -> tuple[float, float, float, float, float]:
    """one_run in a child process of `checkout`'s own Python and code (cwd there, so its
    flowtape is imported, not ours): bare and report wall and CPU s, and the child's peak RSS in MiB."""
    python = checkout / ".venv" / "bin" / "python"
    out = subprocess.run([str(python), "-c", ARM, str(checkout), str(path), json.dumps(bare_sql)], cwd=checkout,
                         check=True, capture_output=True, text=True).stdout
    return tuple(json.loads(out.strip().splitlines()[-1]))  # type: ignore[return-value]


def compare(path: Path, bare_sql: list[str], base: Path, runs: int) -> None:
    """This checkout against `base` on the same tape, alternating (see the module docstring)."""
    here = Path(__file__).resolve().parent.parent
    results: dict[str, list[tuple[float, ...]]] = {"this": [], "base": []}
    for i in range(runs):
        order = [("this", here), ("base", base)] if i % 2 == 0 else [("base", base), ("this", here)]
        for label, checkout in order:
            r = arm(checkout, path, bare_sql)
            results[label].append(r)
            print(f"run {i + 1} {label}: bare {r[0]:.2f} s ({r[1]:.1f} CPU s), reports {r[2]:.2f} s ({r[3]:.1f} CPU s), "
                  f"CPU ratio {r[3] / r[1]:.2f}, peak RSS {r[4]:,.0f} MiB")
    for label, rs in results.items():
        bare_cpu, full_cpu = statistics.median(r[1] for r in rs), statistics.median(r[3] for r in rs)
        ratio = statistics.median(r[3] / r[1] for r in rs)
        print(f"{label:<5} {base if label == 'base' else here}: bare {bare_cpu:.1f} CPU s, reports {full_cpu:.1f} CPU s, "
              f"CPU ratio {ratio:.2f} (median of {len(rs)}), wall ratio {statistics.median(r[2] / r[0] for r in rs):.2f}, "
              f"peak RSS {max(r[4] for r in rs):,.0f} MiB")
    this, other = (statistics.median(r[3] for r in results[k]) for k in ("this", "base"))
    print(f"report set CPU s, this / base   {this:.1f} / {other:.1f} = {this / other:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tape", type=Path, default=Path("/tmp/flowtape-bench.tape"))
    ap.add_argument("--flows", type=int, default=50_000_000)
    ap.add_argument("--runs", type=int, default=3, help="bare/report pairs; medians are printed (the machine is shared)")
    ap.add_argument("--steps", action="store_true", help="also time the report set step by step (shared tables, then each report)")
    ap.add_argument("--compare", type=Path, metavar="DIR",
                    help="also time DIR's checkout (its .venv) on the same tape, alternating with this one, in the same run")
    args = ap.parse_args()
    if args.compare and not (args.compare / ".venv" / "bin" / "python").exists():
        sys.exit(f"bench_reports: {args.compare} has no .venv/bin/python to compare with")
    build(args.tape, args.flows)
    tape = flowtape.open(args.tape)
    rows = {t: tape.rows(t) for t in ("http", "flows", "connections", "dns")}
    tape.close()
    print("rows      " + ", ".join(f"{t} {n:,}" for t, n in rows.items()))
    read = read_columns(args.tape)
    bare_sql = bare_queries(args.tape, read)
    print("bare scan " + "; ".join(f"{t}: {', '.join(c)}" for t, c in read.items()) + "  (the columns the reports read)")
    if args.compare:
        compare(args.tape, bare_sql, args.compare.resolve(), args.runs)
        if args.steps:
            print_steps(args.tape)
        return
    runs = []
    for i in range(args.runs):
        bare, bare_cpu, full, full_cpu = one_run(args.tape, bare_sql)
        runs.append((bare, bare_cpu, full, full_cpu, full / bare))
        print(f"run {i + 1}: bare {bare:.2f} s ({bare_cpu:.1f} CPU s), reports {full:.2f} s ({full_cpu:.1f} CPU s), ratio {full / bare:.2f}")
    bare, bare_cpu, full, full_cpu, ratio = (statistics.median(r[k] for r in runs) for k in range(5))
    total = sum(rows.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"bare scan of the same columns   {bare:7.2f} s   (median of {len(runs)})")
    print(f"full report set                 {full:7.2f} s   ratio {ratio:.2f}   (median of the runs' ratios; target <= 2)")
    print(f"CPU time, reports / bare        {full_cpu:5.1f} s / {bare_cpu:.1f} s = {full_cpu / bare_cpu:.2f}   (less sensitive to other load)")
    print(f"rows/s per core                 {total / full_cpu:,.0f}   ({total:,} rows, {full_cpu:.1f} CPU s on {os.cpu_count()} cores)")
    print(f"peak memory (RSS)               {peak:,.0f} MiB")
    if args.steps:
        print_steps(args.tape)


def print_steps(path: Path) -> None:
    for name, wall, cpu in steps(path):
        print(f"   step {name:<14} {wall:6.2f} s  {cpu:6.2f} CPU s")


if __name__ == "__main__":
    main()
