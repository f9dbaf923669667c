"""Go HTTPS recorder overhead: h2load at a fixed rate against a Go net/http HTTPS server (HTTP/1.1,
stripped binary) across namespaces, with and without `flowtape record --probes connections,l7,gotls`, and
with `--probes connections,l7,gotls,goroutines` (http.goroutine, go_spawns: net/http's server starts a
goroutine per request, so one runtime.newproc1 entry+RET trap pair and one go_spawns row per request).

The same measurement as bench_l7's open loop, in the same run as its baseline: served rate with
the recorder against the mean of a run before and one after, lost events, http rows (two per
request: the Go server's, read by the crypto/tls uprobes, and h2load's, read through libssl),
recorder CPU per request, and the Go server's own CPU per request without -> with the recorder:
what the uprobe traps at the entry and RETs of crypto/tls Read/Write cost inside the program.

Run as root:  .venv/bin/python benchmarks/bench_gotls.py [--rate 10000] [--seconds 4]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from bench_l7 import H2LOAD_CLIENTS, h2load, measure, rows_exact  # noqa: E402
from gobuild import go_build, go_version  # noqa: E402
from netlab import Lab, make_cert  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=10_000, help="offered requests/s")
    ap.add_argument("--seconds", type=int, default=4)
    args = ap.parse_args()
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="flowtape-bench-gotls-") as tmp:
        work = Path(tmp)
        server = go_build("server.go", work / "gosrv", stripped=True)
        srv, cli = lab.add_host("srv"), lab.add_host("cli")
        cert, key = make_cert(lab.workdir, ["bench.lab.test"])
        p = srv.popen([str(server), "-addr", f"{srv.ip}:8443", "-cert", str(cert), "-key", str(key), "-log", "/dev/null", "-http1"],
                      stdout=subprocess.PIPE, text=True)
        try:
            assert "listening" in p.stdout.readline()
            url = f"https://{srv.ip}:8443/a"
            h2load(cli, url, 1, 2000)  # warm-up
            arms = {probes: measure(lab, lambda: h2load(cli, url, args.seconds, args.rate), work, f"gotls{i}", [p.pid], probes=probes)
                    for i, probes in enumerate(("connections,l7,gotls", "connections,l7,gotls,goroutines"))}
        finally:
            p.kill()
            p.wait()
    for probes, r in arms.items():
        _print(args, probes, r)
    return 0


def _print(args, probes: str, r: dict) -> None:
    go = r["nginx_cpu_us_per_request"]
    print(f"== Go {go_version()} HTTPS server (net/http, HTTP/1.1, stripped), h2load --h1 -c{H2LOAD_CLIENTS} --rps, {args.rate}/s offered, {args.seconds}s, --probes {probes}")
    print(f"   baseline {r['baseline_rps']:.0f}/s  recorded {r['recorded_rps']:.0f}/s  ratio {r['ratio']:.3f} (target >= 0.9)  "
          f"lost {r['lost_events']} (target 0)  {r['lost'] or ''}")
    print(f"   http rows {r['http_rows']} for {r['requests']} requests ({'2 per request' if rows_exact({**r, 'step': args.rate}, 'open') else 'ROWS MISSING OR EXTRA'})")
    print(f"   recorder CPU {r['recorder_cpu_us_per_request']} us/request; Go server CPU {go[0]:.1f} -> {go[1]:.1f} us/request "
          f"(+{go[1] - go[0]:.1f}: the uprobe traps; ratio {go[1] / go[0]:.2f})")


if __name__ == "__main__":
    sys.exit(main())
