"""Recorder overhead: wrk against nginx across namespaces, with and without `flowtape record`.

One run measures, side by side on the same lab:
  - requests/s with the recorder / without it, for keep-alive traffic and for one connection
    per request. The machine is noisy, so each workload runs --reps pairs (without, with), the
    order alternating from pair to pair; the ratio of each pair is recorded and the median
    ratio is reported with its spread (min..max over the pairs);
  - lost events (ring buffer full, flow inserts failed), summed over every recorded run;
  - recorder CPU time (user+sys of the recorder process, steady state) per 1k requests;
  - in-kernel time per program run (kernel.bpf_stats_enabled=1: run_time_ns / run_cnt) from one
    more recorded run per workload. Only there: the statistics themselves cost two clock reads
    per program run (~8 runs per keep-alive request), which the pairs must not pay;
  - a CPU ratio: wrk's and nginx's CPU time per request without the recorder, over theirs with
    it plus the recorder's (catches costs paid inside the traced processes);
  - a cost model, far less noisy than the rate ratio: wrk and nginx saturate every CPU, so the
    recorder's CPU time plus its programs' run time per request, over the CPU time per request
    of the baseline (CPUs / baseline rate), predicts the ratio: 1 - (recorder + kernel) / machine.

The server's and the client's namespaces keep no TIME_WAIT sockets (net.ipv4.tcp_max_tw_buckets=0): with one
client address cycling through its ~28k ports at ~10k connections/s, SYNs otherwise keep
landing on the server's TIME_WAIT sockets and the rate collapses to ~500/s for seconds at a
time, with or without the recorder (it made single runs differ 20x).

Beside each pair, the same wrk run under `tcpdump -i <the lab bridge> -w FILE -s 256` and `-s 0`
(capture_arms.py): the capture people run today, in the same round. For the recorder and each
tcpdump: the served ratio (to the round's baseline), the capture process's CPU per request
(user+sys, and user alone), what it lost (lost events; tcpdump's "dropped by kernel") and bytes on
disk per request (the pcap; the tape after compression). --no-tcpdump leaves them out.

--tree DIR records with the flowtape of another source tree (a `git worktree` or export of
the repo), so that two versions are measured in one run, or a version is measured while the
working tree changes: e.g. --tree /tmp/ft-head --tree . compares HEAD with the working tree.

Run as root:  .venv/bin/python benchmarks/bench_record.py [--seconds 5] [--reps 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
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
from netlab import Lab, start_nginx  # noqa: E402

from capture_arms import SNAPLENS, cpu_split, folder_bytes, per_request, tcpdumped  # noqa: E402

from flowtape.capture.live import ebpf  # noqa: E402

FLOWTAPE = str(Path(sys.executable).with_name("flowtape"))
PACKAGE_DIRS = {"flowtape": "flowtape", "flowtape/capture": "capture", "flowtape/analyze": "analyze", "flowtape/bpf": "bpf"}
WORKLOADS = {"keepalive": False, "conn_per_request": True}


NGINX_WORKER: list[int] = []  # set by main: the worker whose CPU time is counted per request


def wrk(host, url: str, seconds: int, close: bool) -> dict:
    """One wrk run; also the CPU time wrk (a child: RUSAGE_CHILDREN) and the nginx worker used."""
    argv = ["wrk", "-t2", "-c32", f"-d{seconds}s", url]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    nginx0 = sum(cpu_seconds(p) for p in NGINX_WORKER)
    out = host.run(argv, timeout=seconds + 60).stdout.decode()
    nginx1 = sum(cpu_seconds(p) for p in NGINX_WORKER)
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    load_cpu = (children1.ru_utime + children1.ru_stime - children0.ru_utime - children0.ru_stime) + (nginx1 - nginx0)
    return {"rps": rps, "requests": total, "non2xx": int(errors.group(1)) if errors else 0, "load_cpu_s": load_cpu}


def cpu_seconds(pid: int) -> float:
    """user+system CPU time of a running process (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def snapshot(tree: Path, into: Path) -> list[str]:
    """Copy a source tree's package folders (as pyproject maps them) and return the recorder's argv."""
    for dest, src in PACKAGE_DIRS.items():
        shutil.copytree(tree / src, into / dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(into)!r}); from flowtape.cli import run; sys.argv[0] = 'flowtape'; sys.exit(run())"]


def recorded(lab, host, url, seconds, close, workdir: Path, tag: str, extra: list[str], cmd: list[str]) -> dict:
    tape = workdir / f"bench-{tag}.tape"
    rec = subprocess.Popen([*cmd, "record", "-o", str(tape), "--interfaces", lab.bridge, "--flow-interval", "1", *extra],
                           stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    said = []  # what it printed before "recording to": the reason when it never gets there
    while "recording to" not in (line := rec.stderr.readline()):
        if not line:
            raise SystemExit(f"recorder did not start (exit {rec.wait()}): {''.join(said)[-2000:]}")
        said.append(line)
    time.sleep(0.5)  # past start-up (first status line, first drain scheduling)
    u0, s0 = cpu_split(rec.pid)
    result = wrk(host, url, seconds, close)
    time.sleep(1.5)  # let the recorder catch up with what wrk caused
    u1, s1 = cpu_split(rec.pid)
    rec.send_signal(signal.SIGINT)
    rec.stderr.read()
    rec.wait()
    m = json.loads((tape / "manifest.json").read_text())
    lost = {k: v for counters in m["lost"].values() for k, v in counters.items()}
    result.update(
        cpu_s=u1 + s1 - u0 - s0,  # steady state: compiling the programs at start is not counted
        cpu_user_s=u1 - u0, cpu_sys_s=s1 - s0, bytes=folder_bytes(tape),
        lost=lost,
        programs={n: (p["run_cnt"], p["run_time_ns"]) for n, p in m["extra"].get("bpf_programs", {}).items()},
        rows={n: t.get("rows", 0) for n, t in m["tables"].items()},
    )
    subprocess.run(["rm", "-rf", str(tape)])
    return result


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    return f"median {fmt.format(statistics.median(values))}  (min {fmt.format(min(values))}, max {fmt.format(max(values))}, n={len(values)})"


def run_workload(lab, cli, url: str, name: str, close: bool, args, workdir: Path, trees: dict[str, list[str]]) -> dict[str, dict]:
    """--reps rounds; in each round one (without, with) pair per tree, the order alternating."""
    wrk(cli, url, 1, close)  # warm-up
    pairs: dict[str, list] = {label: [] for label in trees}
    dumps: dict[int, list] = {}
    extra = ["--probes", args.probes, *args.record_arg]
    for rep in range(args.reps):
        for label, cmd in trees.items():
            base = rec = None
            for recorder_on in ((False, True) if rep % 2 == 0 else (True, False)):
                if recorder_on:
                    rec = recorded(lab, cli, url, args.seconds, close, workdir, f"{name}-{rep}", extra, cmd)
                else:
                    base = wrk(cli, url, args.seconds, close)
            pairs[label].append((base, rec))
            print(f"   {label}{':' if label else ''}{name} pair {rep + 1}/{args.reps}: baseline {base['rps']:.0f}  recorded {rec['rps']:.0f}"
                  f"  ratio {rec['rps'] / base['rps']:.3f}  cpu {1e6 * rec['cpu_s'] / rec['requests']:.2f} ms/1k", file=sys.stderr, flush=True)
        if not args.no_tcpdump:  # the capture people run today, in the same round (snaplen order alternating)
            for snap in SNAPLENS if rep % 2 == 0 else SNAPLENS[::-1]:
                d = tcpdumped(lab.bridge, lambda: wrk(cli, url, args.seconds, close), workdir, f"{name}-{rep}-s{snap}", snap)
                dumps.setdefault(snap, []).append((base, d))
    stats_runs = {}
    for label, cmd in trees.items():  # program run times, measured apart (see the docstring)
        with ebpf.run_time_stats():
            stats_runs[label] = recorded(lab, cli, url, args.seconds, close, workdir, f"{name}-stats", extra, cmd)
    out = {label: summarize(p, stats_runs[label]) for label, p in pairs.items()}
    for label, p in pairs.items():
        out[label]["arms"] = {"flowtape record": arm_summary(p), **{f"tcpdump -s {snap}": arm_summary(d) for snap, d in dumps.items()}}
    return out


def arm_summary(runs: list) -> dict:
    """Medians over the rounds of one capture arm: ratio to the round's baseline, per-request CPU and bytes, losses."""
    per = [per_request(r) for _, r in runs]
    return {"ratio": round(statistics.median(r["rps"] / b["rps"] for b, r in runs), 4),
            "cpu_us": round(statistics.median(x["cpu_us"] for x in per), 2),
            "cpu_user_us": round(statistics.median(x["cpu_user_us"] for x in per), 2),
            "bytes": round(statistics.median(x["bytes"] for x in per), 1),
            "lost": sum(sum(r["lost"].values()) if isinstance(r.get("lost"), dict) else r["dropped"] for _, r in runs)}


def summarize(pairs: list, stats_run: dict) -> dict:
    progs = {n: list(v) for n, v in stats_run["programs"].items()}
    lost: dict[str, int] = {}
    for _, rec in pairs:
        for k, v in rec["lost"].items():
            lost[k] = lost.get(k, 0) + v
    requests = sum(r["requests"] for _, r in pairs)
    cpu_us = 1e6 * sum(r["cpu_s"] for _, r in pairs) / requests
    kernel_us = sum(ns for _, ns in progs.values()) / 1e3 / stats_run["requests"]
    machine_us = statistics.median(os.cpu_count() * 1e6 / b["rps"] for b, _ in pairs)  # CPU time per request, saturated
    # CPU accounting, the steadiest of the three: wrk's and nginx's CPU time per request without
    # the recorder, over theirs with it plus the recorder's. Hidden costs inside the traced
    # processes (slower syscalls, softirq work charged to them) show up here; steal time and
    # other guests' load, which move the rates, do not.
    base_load = statistics.median(1e6 * b["load_cpu_s"] / b["requests"] for b, _ in pairs)
    rec_load = statistics.median(1e6 * r["load_cpu_s"] / r["requests"] for _, r in pairs)
    return {
        # Cost model, much less noisy than the rate ratio on a saturated machine: every CPU-µs
        # the recorder spends (its process + its programs) is taken from wrk and nginx.
        "recorder_us_per_request": round(cpu_us, 2), "kernel_us_per_request": round(kernel_us, 2),
        "machine_us_per_request": round(machine_us, 2), "cost_model_ratio": round(1 - (cpu_us + kernel_us) / machine_us, 4),
        "load_cpu_us_per_request": [round(base_load, 2), round(rec_load, 2)],
        "cpu_ratio": round(base_load / (rec_load + cpu_us), 4),
        "baseline_rps": [b["rps"] for b, _ in pairs],
        "recorded_rps": [r["rps"] for _, r in pairs],
        "ratio": [r["rps"] / b["rps"] for b, r in pairs],
        "cpu_ms_per_1k_requests": [1e6 * r["cpu_s"] / r["requests"] for _, r in pairs],
        "requests_recorded": [r["requests"] for _, r in pairs],
        "lost": lost, "lost_total": sum(lost.values()),
        "rows": [r["rows"] for _, r in pairs],
        "programs": {n: {"runs": c, "ns_per_run": round(ns / c, 1) if c else None} for n, (c, ns) in progs.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    ap.add_argument("--reps", type=int, default=5, help="(without, with) pairs per workload, order alternating")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    ap.add_argument("--probes", default="flows,connections", help="probes recorded (default: the L3/L4 recorder)")
    ap.add_argument("--record-arg", action="append", default=[], help="extra argument for flowtape record (repeatable)")
    ap.add_argument("--tree", action="append", type=Path, default=[], help="source tree to record with (repeatable: trees alternate within each pair round); default: the installed flowtape")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--no-tcpdump", action="store_true", help="leave out the tcpdump arms")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_record: needs root", file=sys.stderr)
        return 2
    results = {}
    with ebpf.run_time_stats():
        pass  # fails here, before any work, where the statistics cannot be switched on
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="flowtape-bench-") as tmp:
        workdir = Path(tmp)
        www = workdir / "www"
        www.mkdir()
        (www / "f100").write_bytes(b"b" * 100)
        srv, cli = lab.add_host("srv"), lab.add_host("cli")
        for h in (srv, cli):
            h.run(["sysctl", "-qw", "net.ipv4.tcp_max_tw_buckets=0"])  # see the docstring
        master, worker = start_nginx(srv, www)
        NGINX_WORKER[:] = [worker]
        url = f"http://{srv.ip}/f100"
        trees = {str(t): snapshot(t.resolve(), workdir / f"tree{i}") for i, t in enumerate(args.tree)} or {"": [FLOWTAPE]}
        try:
            for name in args.workloads.split(","):
                for label, r in run_workload(lab, cli, url, name, WORKLOADS[name], args, workdir, trees).items():
                    results[f"{label}:{name}" if label else name] = r
        finally:
            master.terminate()
            master.wait()

    for name, r in results.items():
        print(f"== {name}: wrk -t2 -c32 -d{args.seconds}s against nginx across namespaces, {args.reps} pairs (order alternating), probes {args.probes}")
        print(f"   ratio        {spread(r['ratio'])}  (target >= 0.97)")
        print(f"   baseline     {spread(r['baseline_rps'], '{:.0f}')} req/s")
        print(f"   recorded     {spread(r['recorded_rps'], '{:.0f}')} req/s")
        print(f"   lost events  {r['lost_total']} over all recorded runs (target 0)  {r['lost']}")
        print(f"   recorder CPU {spread(r['cpu_ms_per_1k_requests'], '{:.2f}')} ms per 1k requests;  rows (last run) {r['rows'][-1]}")
        print(f"   cost model   recorder {r['recorder_us_per_request']} µs + in-kernel {r['kernel_us_per_request']} µs per request, of "
              f"{r['machine_us_per_request']} CPU-µs per request (baseline, {os.cpu_count()} CPUs saturated): ratio ~{r['cost_model_ratio']:.3f}")
        print(f"   CPU ratio    wrk+nginx {r['load_cpu_us_per_request'][0]} CPU-µs per request without, {r['load_cpu_us_per_request'][1]} with, "
              f"+ recorder {r['recorder_us_per_request']}: ratio ~{r['cpu_ratio']:.3f} (medians over the pairs)")
        arms = r.get("arms", {})
        if len(arms) > 1:
            print("   against tcpdump, same wrk run in the same rounds (medians; CPU: the capture process, user+sys (user); bytes on disk):")
            for arm, a in arms.items():
                print(f"     {arm:<16} ratio {a['ratio']:.3f}  lost {a['lost']:>6}  CPU {a['cpu_us']:>6} ({a['cpu_user_us']}) µs/request  {a['bytes']:>8} bytes/request")
            rec, s256, s0 = arms["flowtape record"], arms.get("tcpdump -s 256"), arms.get("tcpdump -s 0")
            if s256 and s0:
                print(f"     recorder CPU / tcpdump -s 256's: {rec['cpu_us'] / s256['cpu_us'] if s256['cpu_us'] else float('inf'):.1f}x (target <= 5x); "
                      f"bytes / tcpdump -s 0's: 1/{s0['bytes'] / max(rec['bytes'], 0.1):.0f} (target <= 1/20)")
        for prog, p in sorted(r["programs"].items()):
            if p["runs"]:
                print(f"   {prog:<45} {p['runs']:>10} runs  {p['ns_per_run']:>8} ns/run")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
