"""L7 recorder overhead: wrk (keep-alive) against nginx across namespaces, plain and TLS,
with and without `flowtape record --probes connections,l7`.

For each protocol and each load step (wrk -c1, -c2, -c4, -c16: a closed loop, so more
connections means a higher rate until nginx/wrk saturate the CPUs), one run measures:
  - requests/s without the recorder (baseline: mean of a run before and one after) and with it;
  - lost events (l7.ringbuf_full, connections.ringbuf_full) and http rows written
    (two per exchange: the client and the server side, both local);
  - recorder CPU time (user+sys of the recorder process) per request.
It prints the highest rate reached with 0 lost events, and ratios against the baseline
measured in the same run.

Run as root:  .venv/bin/python benchmarks/bench_l7.py [--seconds 3] [--json out.json]
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
from netlab import Lab, make_cert, start_nginx_l7  # noqa: E402

FLOWTAPE = str(Path(sys.executable).with_name("flowtape"))
STEPS = (1, 2, 4, 16)


def wrk(host, url: str, seconds: int, conns: int) -> dict:
    out = host.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", url], timeout=seconds + 60).stdout.decode()
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "requests": int(re.search(r"(\d+) requests in", out).group(1))}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def recorded(lab, host, url, seconds, conns, workdir: Path, tag: str) -> dict:
    tape = workdir / f"bench-{tag}.tape"
    rec = subprocess.Popen([FLOWTAPE, "record", "-o", str(tape), "--interfaces", lab.bridge, "--probes", "connections,l7", "--no-k8s"],
                           stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    while "recording to" not in (line := rec.stderr.readline()):
        if not line:
            raise SystemExit(f"recorder did not start: {rec.stderr.read()}")
    cpu0 = cpu_seconds(rec.pid)
    result = wrk(host, url, seconds, conns)
    time.sleep(2.0)  # the recorder catches up with what wrk caused (rows wait ~1 s for their endpoints)
    cpu1 = cpu_seconds(rec.pid)
    rec.send_signal(signal.SIGINT)
    rec.stderr.read()
    rec.wait()
    m = json.loads((tape / "manifest.json").read_text())
    lost = {k: v for counters in m["lost"].values() for k, v in counters.items()}
    result.update(cpu_s=cpu1 - cpu0, lost_events=lost.get("l7.ringbuf_full", 0) + lost.get("connections.ringbuf_full", 0),
                  lost=lost, http_rows=m["tables"].get("http", {}).get("rows", 0))
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=3, help="length of each wrk run")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_l7: needs root", file=sys.stderr)
        return 2
    results: dict[str, list[dict]] = {}
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="flowtape-bench-l7-") as tmp:
        workdir = Path(tmp)
        www = lab.workdir / "www"
        www.mkdir()
        (www / "f100").write_bytes(b"b" * 100)
        srv, cli = lab.add_host("srv"), lab.add_host("cli")
        master, _ = start_nginx_l7(srv, www, tls=make_cert(lab.workdir, ["bench.lab.test"]))
        try:
            for proto, url in (("plain", f"http://{srv.ip}/f100"), ("tls", f"https://{srv.ip}/f100")):
                wrk(cli, url, 1, 4)  # warm-up
                for conns in STEPS:
                    before = wrk(cli, url, args.seconds, conns)
                    rec = recorded(lab, cli, url, args.seconds, conns, workdir, f"{proto}-{conns}")
                    after = wrk(cli, url, args.seconds, conns)
                    base = (before["rps"] + after["rps"]) / 2
                    results.setdefault(proto, []).append({
                        "connections": conns, "baseline_rps": round(base, 1), "recorded_rps": rec["rps"], "ratio": round(rec["rps"] / base, 4),
                        "requests": rec["requests"], "http_rows": rec["http_rows"], "lost_events": rec["lost_events"],
                        "recorder_cpu_us_per_request": round(1e6 * rec["cpu_s"] / rec["requests"], 2),
                        "lost": {k: v for k, v in rec["lost"].items() if v},
                    })
        finally:
            master.terminate()
            master.wait()
    for proto, steps in results.items():
        print(f"== {proto}: wrk -t1 -cN -d{args.seconds}s keep-alive against nginx (1 worker) across namespaces; recorder: --probes connections,l7")
        print(f"   {'conns':>5} {'baseline/s':>11} {'recorded/s':>11} {'ratio':>6} {'lost':>5} {'http rows':>10} {'2 x req':>9} {'CPU us/req':>10}")
        for s in steps:
            print(f"   {s['connections']:>5} {s['baseline_rps']:>11.0f} {s['recorded_rps']:>11.0f} {s['ratio']:>6.3f} {s['lost_events']:>5} "
                  f"{s['http_rows']:>10} {2 * s['requests']:>9} {s['recorder_cpu_us_per_request']:>10}  {s['lost'] or ''}")
        ok = [s for s in steps if s["lost_events"] == 0]
        best = max(ok, key=lambda s: s["recorded_rps"]) if ok else None
        if best:
            print(f"   highest rate with 0 lost events: {best['recorded_rps']:.0f} req/s (-c{best['connections']}); ratio {best['ratio']:.3f} (target >= 0.97); "
                  f"recorder CPU {best['recorder_cpu_us_per_request']} us/request (target <= 10); target rate >= 20000 (plain)")
        else:
            print("   every step lost events")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
