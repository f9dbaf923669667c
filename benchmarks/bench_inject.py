"""What `--inject-trace-context ip-option` costs (bpf/inject.c), against baselines of the same run.

Two lab nodes (namespaces), a recorder in node a (netlab.node_recorder, `--interfaces eth0`), the
client in node a sending to nginx in node b. Per round, alternating the order: the recorder
without the flag and with it, each while
  - curl uploads UPLOAD_MB to nginx (bulk: GSO packets, each grown by 20 bytes), and
  - wrk runs small requests on kept-alive connections for --seconds (many small packets).
Printed: upload time and wrk requests/s with injection over without (medians of the rounds), and,
from one more run of each with kernel.bpf_stats_enabled=1, the injector's in-kernel time per run
next to the l7 egress program's (which runs on the same packets). Needs root and bcc.

    sudo .venv/bin/python benchmarks/bench_inject.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from netlab import Lab, node_recorder, start_nginx_l7  # noqa: E402

import flowtape  # noqa: E402
from flowtape.capture.live import ebpf  # noqa: E402

UPLOAD_MB = 200


def upload(a, b, body: Path) -> float:
    t0 = time.monotonic()
    r = a.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", f"@{body}", f"http://{b.ip}/upload"])
    assert r.stdout.decode() == "200", r.stdout
    return time.monotonic() - t0


def wrk(a, b, seconds: int) -> float:
    out = a.run(["wrk", "-t1", "-c8", f"-d{seconds}s", f"http://{b.ip}/f100"]).stdout.decode()
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")))


def arm(lab, a, b, body: Path, inject: bool, seconds: int, name: str, stats: bool = False) -> dict:
    tape = lab.workdir / f"{name}.tape"
    argv = ["-o", str(tape), "--node", "node-a", "--interfaces", "eth0", "--no-k8s", "--probes", "flows,connections,l7"]
    if inject:
        argv += ["--inject-trace-context", "ip-option"]
    with node_recorder(a, argv):
        up = upload(a, b, body)
        rps = wrk(a, b, seconds)
    m = flowtape.open(tape).manifest
    out = {"upload_s": up, "rps": rps, "programs": m["extra"].get("bpf_programs", {}), "inject": m["extra"].get("inject")}
    subprocess.run(["rm", "-rf", str(tape)])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()}", file=sys.stderr)
    with Lab() as lab:
        b, a = lab.add_host("b"), lab.add_host("a")
        nginx, _ = start_nginx_l7(b, lab.www({"f100": b"x" * 100}))
        body = lab.workdir / "upload.bin"
        body.write_bytes(os.urandom(UPLOAD_MB << 20))
        pairs = []
        for r in range(args.rounds):
            res = {}
            for inject in ((False, True) if r % 2 == 0 else (True, False)):
                res[inject] = arm(lab, a, b, body, inject, args.seconds, f"r{r}-{int(inject)}")
            pairs.append(res)
            print(f"round {r + 1}: upload {res[False]['upload_s']:.2f} s -> {res[True]['upload_s']:.2f} s, "
                  f"wrk {res[False]['rps']:.0f} -> {res[True]['rps']:.0f} req/s", file=sys.stderr, flush=True)
        with ebpf.run_time_stats():
            st = arm(lab, a, b, body, True, args.seconds, "stats", stats=True)
        nginx.kill()
    per_run = {n: (v["run_time_ns"] / v["run_cnt"] if v.get("run_cnt") else None) for n, v in st["programs"].items()}
    result = {
        "load_average": os.getloadavg(),
        "upload_time_ratio": round(statistics.median(p[True]["upload_s"] / p[False]["upload_s"] for p in pairs), 3),
        "wrk_rps_ratio": round(statistics.median(p[True]["rps"] / p[False]["rps"] for p in pairs), 3),
        "ns_per_run": {n: round(v, 1) for n, v in per_run.items() if v is not None and n in ("ft_inject_egress", "ft_inject_ingress", "ft_l7_egress", "ft_l7_ingress")},
        "inject_counters": st["inject"],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
