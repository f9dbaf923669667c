"""Go HTTPS recorder overhead: h2load at a fixed rate against a Go net/http HTTPS server (HTTP/1.1,
stripped binary) across namespaces, with and without `flowtape record --probes connections,l7,gotls`, and
with `--probes connections,l7,gotls,goroutines` (http.goroutine, go_spawns: net/http's server starts a
goroutine per request, so one runtime.newproc1 entry+RET trap pair and one go_spawns row per request).

The same measurement as bench_l7's open loop, in the same run as its baseline: served rate with
the recorder against the mean of a run before and one after, lost events, http rows (two per
request: the Go server's, read by the crypto/tls uprobes, and h2load's, read through libssl),
recorder CPU per request, and the Go server's own CPU per request without -> with the recorder:
what the uprobe traps at the entry and RETs of crypto/tls Read/Write cost inside the program.

With --compare DIR (another checkout, e.g. main's): only the goroutines arm, alternating that checkout's
recorder (DIR/.venv/bin/flowtape) with this one's, --rounds times, between runs without a recorder; go_spawns
rows per request too.

Run as root:  .venv/bin/python benchmarks/bench_gotls.py [--rate 10000] [--seconds 4] [--compare /work/base [--rounds 2]]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from bench_l7 import FLOWTAPE, H2LOAD_CLIENTS, cpu_seconds, h2load, measure, recorded, rows_exact  # noqa: E402
from gobuild import go_build, go_version  # noqa: E402
from netlab import Lab, make_cert  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=10_000, help="offered requests/s")
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--compare", metavar="DIR", help="another checkout: its recorder alternates with this one's")
    ap.add_argument("--rounds", type=int, default=2, help="with --compare: alternations")
    args = ap.parse_args()
    other = None
    if args.compare:
        other = Path(args.compare) / ".venv" / "bin" / "flowtape"
        if not other.exists():
            print(f"bench_gotls: --compare: no {other}", file=sys.stderr)
            return 2
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
            load = lambda: h2load(cli, url, args.seconds, args.rate)  # noqa: E731
            if other is not None:
                _print_compare(args, other, compare(lab, load, work, p.pid, str(other), args.rounds))
                return 0
            arms = {probes: measure(lab, load, work, f"gotls{i}", [p.pid], probes=probes)
                    for i, probes in enumerate(("connections,l7,gotls", "connections,l7,gotls,goroutines"))}
        finally:
            p.kill()
            p.wait()
    for probes, r in arms.items():
        _print(args, probes, r)
    return 0


COMPARE_PROBES = "connections,l7,gotls,goroutines"


def compare(lab, load, work: Path, pid: int, other: str, rounds: int) -> dict:
    """Runs without a recorder around `rounds` alternations of the other checkout's recorder and this one's."""
    def timed(fn):
        c0 = cpu_seconds(pid)
        out = fn()
        out["go_cpu_s"] = cpu_seconds(pid) - c0
        return out

    bare = [timed(load)]
    arms: dict[str, list[dict]] = {"baseline": [], "this": []}
    for i in range(rounds):
        for name, exe in (("baseline", other), ("this", FLOWTAPE)):
            tag = f"cmp-{name}{i}"
            r = timed(lambda: recorded(lab, load, work, tag, COMPARE_PROBES, flowtape=exe))
            m = json.loads((work / f"bench-{tag}.tape" / "manifest.json").read_text())
            r["spawn_rows"] = m["tables"].get("go_spawns", {}).get("rows", 0)
            arms[name].append(r)
        bare.append(timed(load))
    return {"bare": bare, **arms}


def _print_compare(args, other: Path, c: dict) -> None:
    bare_rps = sum(b["rps"] for b in c["bare"]) / len(c["bare"])
    bare_us = 1e6 * sum(b["go_cpu_s"] for b in c["bare"]) / sum(b["requests"] for b in c["bare"])
    print(f"== Go {go_version()} HTTPS server, h2load --h1 -c{H2LOAD_CLIENTS} --rps {args.rate}/s, {args.seconds}s, --probes {COMPARE_PROBES}; "
          f"{args.rounds} alternations, {len(c['bare'])} runs without a recorder around them ({bare_rps:.0f}/s, Go server {bare_us:.1f} us/request)")
    for name in ("baseline", "this"):
        rs = c[name]
        req = sum(r["requests"] for r in rs)
        us = 1e6 * sum(r["go_cpu_s"] for r in rs) / req
        rec_us = 1e6 * sum(r["cpu_s"] for r in rs) / req
        label = str(other) if name == "baseline" else FLOWTAPE
        print(f"   {name:8s} ({label}): served ratio {sum(r['rps'] for r in rs) / len(rs) / bare_rps:.3f}  Go server CPU +{us - bare_us:.1f} us/request  "
              f"recorder {rec_us:.1f} us/request  go_spawns rows {sum(r['spawn_rows'] for r in rs) / req:.3f}/request  "
              f"http rows {sum(r['http_rows'] for r in rs) / req:.2f}/request  lost {sum(r['lost_events'] for r in rs)}")


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
