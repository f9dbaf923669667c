"""Recorder overhead: wrk against nginx across namespaces, with and without `flowtape record`.

One run measures, side by side on the same lab:
  - requests/s with the recorder / without it (baseline = mean of a run before and after),
    for keep-alive traffic and for one connection per request;
  - lost events (ring buffer full, flow inserts failed) at the highest rate reached;
  - recorder CPU time (user+sys of the recorder process) per 1k requests;
  - in-kernel time per program run (kernel.bpf_stats_enabled=1: run_time_ns / run_cnt).

Run as root:  .venv/bin/python benchmarks/bench_record.py [--seconds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from netlab import Lab, start_nginx  # noqa: E402

FLOWTAPE = str(Path(sys.executable).with_name("flowtape"))


def wrk(host, url: str, seconds: int, close: bool) -> dict:
    argv = ["wrk", "-t2", "-c32", f"-d{seconds}s", url]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    out = host.run(argv, timeout=seconds + 60).stdout.decode()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "requests": total, "non2xx": int(errors.group(1)) if errors else 0}


def cpu_seconds(pid: int) -> float:
    """user+system CPU time of a running process (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def recorded(lab, host, url, seconds, close, workdir: Path, tag: str) -> dict:
    tape = workdir / f"bench-{tag}.tape"
    rec = subprocess.Popen([FLOWTAPE, "record", "-o", str(tape), "--interfaces", lab.bridge, "--flow-interval", "1"],
                           stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    while "recording to" not in (line := rec.stderr.readline()):
        if not line:
            raise SystemExit(f"recorder did not start: {rec.stderr.read()}")
    cpu0 = cpu_seconds(rec.pid)
    result = wrk(host, url, seconds, close)
    time.sleep(1.5)  # let the recorder catch up with what wrk caused
    cpu1 = cpu_seconds(rec.pid)
    rec.send_signal(signal.SIGINT)
    rec.stderr.read()
    rec.wait()
    m = json.loads((tape / "manifest.json").read_text())
    lost = {k: v for counters in m["lost"].values() for k, v in counters.items()}
    progs = m["extra"].get("bpf_programs", {})
    result.update(
        cpu_s=cpu1 - cpu0,  # steady state: compiling the programs at start is not counted
        lost=lost,
        programs={n: {"runs": p["run_cnt"], "ns_per_run": round(p["run_time_ns"] / p["run_cnt"], 1) if p["run_cnt"] else None} for n, p in progs.items()},
        rows={n: t.get("rows", 0) for n, t in m["tables"].items()},
    )
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_record: needs root", file=sys.stderr)
        return 2
    stats_path = Path("/proc/sys/kernel/bpf_stats_enabled")
    stats_before = stats_path.read_text().strip()
    stats_path.write_text("1")
    results = {}
    try:
        with Lab() as lab, tempfile.TemporaryDirectory(prefix="flowtape-bench-") as tmp:
            workdir = Path(tmp)
            www = workdir / "www"
            www.mkdir()
            (www / "f100").write_bytes(b"b" * 100)
            srv, cli = lab.add_host("srv"), lab.add_host("cli")
            master, _ = start_nginx(srv, www)
            url = f"http://{srv.ip}/f100"
            try:
                for name, close in (("keepalive", False), ("conn_per_request", True)):
                    wrk(cli, url, 1, close)  # warm-up
                    before = wrk(cli, url, args.seconds, close)
                    rec = recorded(lab, cli, url, args.seconds, close, workdir, name)
                    after = wrk(cli, url, args.seconds, close)
                    base = (before["rps"] + after["rps"]) / 2
                    results[name] = {
                        "baseline_rps": round(base, 1), "recorded_rps": rec["rps"], "ratio": round(rec["rps"] / base, 4),
                        "requests_recorded": rec["requests"], "lost": rec["lost"], "lost_total": sum(rec["lost"].values()),
                        "recorder_cpu_ms_per_1k_requests": round(1000 * rec["cpu_s"] / (rec["requests"] / 1000), 2),
                        "rows": rec["rows"], "programs": rec["programs"],
                    }
            finally:
                master.terminate()
                master.wait()
    finally:
        stats_path.write_text(stats_before)

    for name, r in results.items():
        print(f"== {name}: wrk -t2 -c32 -d{args.seconds}s against nginx across namespaces")
        print(f"   requests/s  baseline {r['baseline_rps']:.0f}  recorded {r['recorded_rps']:.0f}  ratio {r['ratio']:.3f} (target >= 0.97)")
        print(f"   lost events {r['lost_total']} (target 0)  {r['lost']}")
        print(f"   recorder CPU {r['recorder_cpu_ms_per_1k_requests']} ms per 1k requests;  rows {r['rows']}")
        for prog, p in sorted(r["programs"].items()):
            if p["runs"]:
                print(f"   {prog:<45} {p['runs']:>10} runs  {p['ns_per_run']:>8} ns/run")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
