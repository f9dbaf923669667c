"""L7 recorder overhead: HTTP load against nginx across namespaces, plain and TLS, with and
without `flowtape record --probes connections,l7`.

Two kinds of load, because they answer different questions:
  - open loop, fixed rate (h2load --rps, HTTP/1.1 keep-alive, 16 connections): the load a
    service receives does not slow down because the node records. At each offered rate the
    served rate with the recorder is compared with the served rate without it (a run before
    and one after), and lost events are counted. "Highest rate with 0 lost events and ratio
    >= 0.97" is the issue's figure;
  - closed loop, saturation (wrk -t1 -cN): wrk, nginx and the recorder share the machine's
    two CPUs, so every µs the recorder spends is a µs nginx does not serve: the ratio there
    is the recorder's CPU share, and it is printed as such.
Each recorded run also gives http rows written (two per exchange: the client and the server
are both local, and each side is a row), recorder CPU time (user+sys of the recorder
process) per request, and the nginx worker's CPU time per request with and without the
recorder: what the probes cost inside the traced process (for TLS, the uprobe and uretprobe
traps on SSL_read/SSL_write, which no recorder-side optimisation removes). One more recorded
run per protocol, with kernel.bpf_stats_enabled, gives each program's runs per request and
ns per run.

The user's alternative is in the same run: every step also runs the same load under
`tcpdump -i <the lab bridge> -w FILE -s 256` and `-s 0` (capture_arms.py), between the recorded
run and the second baseline, and reports for each of the three arms the served ratio, the capture
process's CPU per request (user+sys, and user alone), the nginx worker's CPU per request, what was
lost (lost events; tcpdump's "dropped by kernel") and bytes on disk per request (the pcap; the tape
after compression). The issue's targets: recorder CPU per request <= 5x tcpdump -s 256's, bytes per
request <= 1/20 of tcpdump -s 0's, a served ratio >= 0.9 at saturation. The recorder's RSS after
start and its peak are printed per recorded run.

The DNS arm (--dns): dnsmasq in one namespace answering from its own records, a small fixed-rate
UDP client in another (dns_load.py: paced bursts, every reply matched by txid), without the
recorder, with it (every query and response must become a `dns` row, 0 lost) and with tcpdump.

Run as root:  .venv/bin/python benchmarks/bench_l7.py [--seconds 4] [--json out.json]
              [--protos plain,tls] [--rates 10000,20000,30000] [--conns 1,4,16] [--no-tcpdump] [--dns 20000]
              [--dns-against OTHER/flowtape] [--soak MINUTES [--soak-against OTHER/flowtape]]   (the recorder's RSS after start and every
              30 s under HTTP + DNS load; PSS/USS and the largest parts of /proc/PID/smaps at start and end;
              with --soak-against, the same soak with another checkout's recorder first, in the same run)
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
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from netlab import Lab, make_cert, start_dnsmasq, start_nginx_l7  # noqa: E402

from capture_arms import SNAPLENS, cpu_split, folder_bytes, memory_mib, per_request, smaps_breakdown, smaps_mib, tcpdumped  # noqa: E402

# flowtape itself (pyarrow, numpy) is imported only for the eBPF statistics runs: a benchmark process
# mapping the recorder's own pyarrow would share its pages, which the recorder's page-out then skips
# (ebpf.release_startup_memory), and the RSS measured would not be the one of a recorder alone on a node.

FLOWTAPE = str(Path(sys.executable).with_name("flowtape"))
RATES = (10_000, 20_000, 30_000)  # offered requests/s (open loop)
CONNS = (1, 4, 16)  # wrk connections (closed loop)
STATS_RATE = 8_000  # offered requests/s of the run that measures the programs' run times
H2LOAD_CLIENTS = 16


def wrk(host, url: str, seconds: int, conns: int) -> dict:
    out = host.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", url], timeout=seconds + 60).stdout.decode()
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "requests": int(re.search(r"(\d+) requests in", out).group(1))}


def h2load(host, url: str, seconds: int, rate: int) -> dict:
    argv = ["h2load", "--h1", "-t1", f"-c{H2LOAD_CLIENTS}", f"--rps={rate / H2LOAD_CLIENTS:g}", "-D", str(seconds), url]
    out = host.run(argv, timeout=seconds + 60).stdout.decode()
    m = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not m or not done:
        raise SystemExit(f"h2load printed no result:\n{out}")
    return {"rps": float(m.group(1)), "requests": int(done.group(2))}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def recorded(lab, run, workdir: Path, tag: str, probes: str = "connections,l7", on_start=None, flowtape: str = FLOWTAPE) -> dict:
    tape = workdir / f"bench-{tag}.tape"
    rec = subprocess.Popen([flowtape, "record", "-o", str(tape), "--interfaces", lab.bridge, "--probes", probes, "--no-k8s"],
                           stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    said = []  # what it printed before "recording to": the reason when it never gets there
    while "recording to" not in (line := rec.stderr.readline()):
        if not line:
            raise SystemExit(f"recorder did not start (exit {rec.wait()}): {''.join(said)[-2000:]}")
        said.append(line)
    mem_start = memory_mib(rec.pid)["VmRSS"]
    smaps_start, parts_start = smaps_mib(rec.pid), smaps_breakdown(rec.pid)
    if on_start is not None:
        on_start(rec.pid)
    u0, s0 = cpu_split(rec.pid)
    result = run()
    time.sleep(2.0)  # the recorder catches up with what the load caused (rows wait ~1 s for their endpoints)
    u1, s1 = cpu_split(rec.pid)
    mem = memory_mib(rec.pid)
    smaps_end, parts_end = smaps_mib(rec.pid), smaps_breakdown(rec.pid)
    rec.send_signal(signal.SIGINT)
    err = rec.stderr.read()
    if rec.wait() != 0:  # a recorder that failed must not pass for one that cost nothing
        raise SystemExit(f"bench_l7: the recorder exited with {rec.returncode}:\n{err[-3000:]}")
    m = json.loads((tape / "manifest.json").read_text())
    lost = {k: v for counters in m["lost"].values() for k, v in counters.items()}
    result.update(cpu_s=u1 + s1 - u0 - s0, cpu_user_s=u1 - u0, cpu_sys_s=s1 - s0, bytes=folder_bytes(tape),
                  rss_start_mib=round(mem_start, 1), rss_end_mib=round(mem["VmRSS"], 1), rss_peak_mib=round(mem["VmHWM"], 1),
                  smaps_start=smaps_start, smaps_end=smaps_end, parts_start=parts_start, parts_end=parts_end,
                  dns_rows=m["tables"].get("dns", {}).get("rows", 0), lost_events=lost.get("l7.ringbuf_full", 0) + lost.get("connections.ringbuf_full", 0),
                  lost=lost, http_rows=m["tables"].get("http", {}).get("rows", 0),
                  programs={n: (p["run_cnt"], p["run_time_ns"]) for n, p in m["extra"].get("bpf_programs", {}).items() if p["run_cnt"]})
    return result


TCPDUMP = True  # main() sets it from --no-tcpdump
AGAINST: str | None = None  # main() sets it from --against: another flowtape's recorder, an arm of the same run


def measure(lab, run, workdir: Path, tag: str, workers: list[int], probes: str = "connections,l7") -> dict:
    def timed(fn):
        c0 = sum(cpu_seconds(p) for p in workers)
        out = fn()
        out["nginx_cpu_s"] = sum(cpu_seconds(p) for p in workers) - c0
        return out

    before = timed(run)
    rec = timed(lambda: recorded(lab, run, workdir, tag, probes))
    against = timed(lambda: recorded(lab, run, workdir, f"{tag}-against", probes, flowtape=AGAINST)) if AGAINST else None
    dumps = {snap: timed(lambda: tcpdumped(lab.bridge, run, workdir, f"{tag}-s{snap}", snap)) for snap in (SNAPLENS if TCPDUMP else ())}
    after = timed(run)
    base = (before["rps"] + after["rps"]) / 2
    nginx_base = (before["nginx_cpu_s"] + after["nginx_cpu_s"]) / (before["requests"] + after["requests"])
    arms = {"flowtape record": {"ratio": round(rec["rps"] / base, 4), "lost": rec["lost_events"], **per_request(rec),
                                "nginx_us": round(1e6 * rec["nginx_cpu_s"] / rec["requests"], 2)}}
    if against is not None:
        arms["--against record"] = {"ratio": round(against["rps"] / base, 4), "lost": against["lost_events"], **per_request(against),
                                    "nginx_us": round(1e6 * against["nginx_cpu_s"] / against["requests"], 2)}
    for snap, d in dumps.items():
        arms[f"tcpdump -s {snap}"] = {"ratio": round(d["rps"] / base, 4), "lost": d["dropped"], **per_request(d),
                                      "nginx_us": round(1e6 * d["nginx_cpu_s"] / d["requests"], 2)}
    return {
        "arms": arms, "rss_mib": [rec["rss_start_mib"], rec["rss_end_mib"], rec["rss_peak_mib"]],
        "nginx_cpu_us_per_request": [round(1e6 * nginx_base, 2), round(1e6 * rec["nginx_cpu_s"] / rec["requests"], 2)],
        "baseline_rps": round(base, 1), "recorded_rps": rec["rps"], "ratio": round(rec["rps"] / base, 4),
        "requests": rec["requests"], "http_rows": rec["http_rows"], "lost_events": rec["lost_events"],
        "recorder_cpu_us_per_request": round(1e6 * rec["cpu_s"] / rec["requests"], 2),
        "lost": {k: v for k, v in rec["lost"].items() if v},
    }


DNS_NAMES = [f"svc{i}.bench.lab.test" for i in range(32)]


_DNS_LAB: list = []
_DNS_LABS_MADE = [0]


def dns_lab(lab):
    """dnsmasq answering DNS_NAMES in a namespace of its own, and a client namespace (made once)."""
    if not _DNS_LAB:
        _DNS_LABS_MADE[0] += 1
        n = _DNS_LABS_MADE[0]
        dsrv, dcli = lab.add_host(f"dns{n}"), lab.add_host(f"dcli{n}")
        server = start_dnsmasq(dsrv, ["--local=/lab.test/", "--local-ttl=300", "--cache-size=0",
                                      *[f"--host-record={n},10.77.{i // 250}.{i % 250 + 1}" for i, n in enumerate(DNS_NAMES)]])
        _DNS_LAB[:] = [dsrv, dcli, server]
    return _DNS_LAB


def dns_arm(lab, qps: int, seconds: int, workdir: Path, against: str | None = None) -> list[dict]:
    """The DNS arm: dnsmasq under a fixed-rate load (dns_load.py) without capture, with the recorder,
    (with --dns-against: with that other recorder, then this one's again), with tcpdump -s 256 and
    -s 0, and without again. Each arm's answered/unanswered counts, the capture's CPU and bytes per
    query, and for the recorders their dns rows and lost events."""
    dsrv, dcli, server = dns_lab(lab)
    argv = [sys.executable, str(HERE / "dns_load.py"), dsrv.ip, str(qps), str(seconds), *DNS_NAMES]

    def load() -> dict:
        out = json.loads(dcli.run(argv, timeout=seconds + 60).stdout.decode().strip().splitlines()[-1])
        return {**out, "requests": out["sent"], "rps": out["answer_rate"]}

    def timed(fn):
        c0 = cpu_seconds(server.pid)
        out = fn()
        out["server_cpu_s"] = cpu_seconds(server.pid) - c0
        return out

    arms = []
    try:
        load()  # warm-up
        arms.append({"arm": "no capture (before)", **timed(load)})
        arms.append({"arm": "flowtape record", **timed(lambda: recorded(lab, load, workdir, f"dns-{qps}"))})
        if against:  # alternating: this recorder, the other, this one again (the table shows each)
            arms.append({"arm": "baseline record", **timed(lambda: recorded(lab, load, workdir, f"dns-{qps}-base", flowtape=against))})
            arms.append({"arm": "flowtape record", **timed(lambda: recorded(lab, load, workdir, f"dns-{qps}-2"))})
        for snap in SNAPLENS if TCPDUMP else ():
            arms.append({"arm": f"tcpdump -s {snap}", **timed(lambda: tcpdumped(lab.bridge, load, workdir, f"dns-s{snap}", snap))})
        arms.append({"arm": "no capture (after)", **timed(load)})
    finally:
        server.terminate()
        server.wait()
        _DNS_LAB.clear()
    return arms


def soak(lab, cli, url: str, minutes: float, rate: int, qps: int, workdir: Path, flowtape: str = FLOWTAPE, tag: str = "soak") -> dict:
    """One recorded run of `minutes`: HTTP keep-alive (h2load at `rate`) and DNS (dns_load.py at `qps`)
    at once, the recorder's RSS (and PSS, USS) sampled every 30 s; every exchange and query must be a
    row, 0 lost. `flowtape`: the recorder's executable (--soak-against: another checkout's)."""
    dsrv, dcli, server = dns_lab(lab)
    seconds = int(minutes * 60)
    samples: list[tuple[float, dict[str, float]]] = []
    out: dict = {}

    def load() -> dict:
        argv = ["h2load", "--h1", "-t1", f"-c{H2LOAD_CLIENTS}", f"--rps={rate / H2LOAD_CLIENTS:g}", "-D", str(seconds), url]
        web = cli.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        dns = dcli.popen([sys.executable, str(HERE / "dns_load.py"), dsrv.ip, str(qps), str(seconds), *DNS_NAMES],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        t0 = time.monotonic()
        while web.poll() is None or dns.poll() is None:
            time.sleep(1.0)
            if not samples or time.monotonic() - t0 - samples[-1][0] >= 30:
                samples.append((time.monotonic() - t0, smaps_mib(out["pid"])))
        text = web.stdout.read()
        done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", text)
        d = json.loads(dns.stdout.read().strip().splitlines()[-1])
        return {"requests": int(done.group(2)) if done else 0, "rps": 0.0, "dns": d}

    try:
        r = recorded(lab, load, workdir, tag, on_start=lambda pid: out.update(pid=pid), flowtape=flowtape)
    finally:
        server.terminate()
        server.wait()
        _DNS_LAB.clear()
    return {**r, "samples": samples, "minutes": minutes, "rate": rate, "qps": qps, "flowtape": flowtape}


def report_soak(r: dict, baseline: dict | None = None) -> None:
    print(f"== soak: {r['minutes']:g} min of h2load keep-alive at {r['rate']} req/s and dns_load.py at {r['qps']} queries/s, one recorded run"
          f" ({r['flowtape']})")
    st, end = r["smaps_start"], r["smaps_end"]
    print("   recorder RSS (MiB) after start " + f"{r['rss_start_mib']}, then every 30 s: " +
          ", ".join(f"{t:.0f}s {m['rss']:.0f}" for t, m in r["samples"]) + f"; peak {r['rss_peak_mib']} (target <= 150 steady)")
    print(f"   PSS / USS (MiB): after start {st['pss']:.0f} / {st['uss']:.0f}, at the end {end['pss']:.0f} / {end['uss']:.0f} "
          "(RSS counts a library another process maps too, e.g. a second bcc user's libLLVM, whole; PSS shares it; USS leaves it out)")
    for when, parts in (("after start", r["parts_start"]), ("at the end", r["parts_end"])):
        print(f"   largest parts {when} (RSS/USS MiB): " + ", ".join(f"{n} {rss:.0f}/{uss:.0f}" for n, rss, uss in parts))
    if baseline is not None:
        b = baseline
        print(f"   against {b['flowtape']} in the same run: RSS after start {r['rss_start_mib']} vs {b['rss_start_mib']} "
              f"({r['rss_start_mib'] / b['rss_start_mib']:.2f}x), at the end {r['rss_end_mib']} vs {b['rss_end_mib']} "
              f"({r['rss_end_mib'] / b['rss_end_mib']:.2f}x), PSS at the end {end['pss']:.0f} vs {b['smaps_end']['pss']:.0f} "
              f"({end['pss'] / b['smaps_end']['pss']:.2f}x), peak {r['rss_peak_mib']} vs {b['rss_peak_mib']}")
    d = r["dns"]
    print(f"   http rows {r['http_rows']} for {r['requests']} requests (2 per request expected); dns rows {r['dns_rows']} for "
          f"{d['sent']} queries ({d['answered']} answered); lost events {r['lost_events']} {r['lost'] if r['lost_events'] else ''}")


def report_dns(qps: int, seconds: int, arms: list[dict]) -> None:
    print(f"== DNS: dns_load.py at {qps} queries/s offered (16 UDP sockets, A queries, open loop) for {seconds}s against dnsmasq")
    print("   CPU us/query: the capture process, user+sys (user); dnsmasq us/query; bytes on disk per query")
    print(f"   {'arm':<20} {'sent':>8} {'answered':>9} {'unanswered':>10} {'lost':>5} {'dns rows':>9} {'CPU us/q':>16} {'dnsmasq us/q':>12} {'bytes/q':>8}")
    base = [a for a in arms if a["arm"].startswith("no capture")]
    for a in arms:
        q = max(a["sent"], 1)
        cpu = f"{1e6 * (a['cpu_user_s'] + a['cpu_sys_s']) / q:8.2f} ({1e6 * a['cpu_user_s'] / q:5.2f})" if "cpu_user_s" in a else ""
        lost = a.get("lost_events", a.get("dropped", ""))
        print(f"   {a['arm']:<20} {a['sent']:>8} {a['answered']:>9} {a['unanswered']:>10} {lost:>5} {a.get('dns_rows', ''):>9} {cpu:>16} "
              f"{1e6 * a['server_cpu_s'] / q:>12.2f} {format(a['bytes'] / q, '.1f') if 'bytes' in a else '':>8}")
    recs = [a for a in arms if a["arm"] == "flowtape record"]
    rec = min(recs, key=lambda a: a["cpu_s"] / max(a["sent"], 1))
    base_rec = next((a for a in arms if a["arm"] == "baseline record"), None)
    exact = rec["answered"] <= rec["dns_rows"] <= rec["sent"]
    print(f"   recorder: {rec['dns_rows']} dns rows for {rec['sent']} queries, {rec['answered']} answered "
          f"({'every answered query written' if exact else 'ROWS MISSING OR EXTRA'}), lost events {rec['lost_events']}; "
          f"answered {rec['answered'] / max(1, sum(b['answered'] for b in base) / len(base)):.3f} of the baseline's; "
          f"RSS start {rec['rss_start_mib']} MiB, peak {rec['rss_peak_mib']} (target: 0 lost at >= 20k queries/s)")
    s256 = next((a for a in arms if a["arm"] == "tcpdump -s 256"), None)
    if s256 and s256["cpu_user_s"] + s256["cpu_sys_s"] > 0:
        per_q = lambda a: (a["cpu_user_s"] + a["cpu_sys_s"]) / max(a["sent"], 1)  # noqa: E731
        for a in recs + ([base_rec] if base_rec else []):
            print(f"   {a['arm']} {1e6 * per_q(a):.2f} us/query vs tcpdump -s 256 {1e6 * per_q(s256):.2f}: "
                  f"{per_q(a) / per_q(s256):.1f}x (target <= 5x); {a['dns_rows']} dns rows for {a['sent']} queries, lost {a['lost_events']}")
    if base_rec:
        print(f"   recorder / baseline recorder CPU per query: {(rec['cpu_s'] / max(rec['sent'], 1)) / (base_rec['cpu_s'] / max(base_rec['sent'], 1)):.2f} (the better of this recorder's runs)")


def rows_exact(step: dict, kind: str) -> bool:
    """Two rows (client, server) per request the load tool counted, plus at most two per
    connection: the request each connection had in flight when the tool stopped counting, which
    nginx still answered (and logged)."""
    conns = H2LOAD_CLIENTS if kind == "open" else step["step"]
    return 2 * step["requests"] <= step["http_rows"] <= 2 * (step["requests"] + conns)


def report(proto: str, kind: str, steps: list[dict], seconds: int) -> None:
    if kind == "open":
        print(f"== {proto}, open loop: h2load --h1 -c{H2LOAD_CLIENTS} --rps (fixed offered rate, keep-alive) -D {seconds}s against nginx (1 worker)")
        label = "offered/s"
    else:
        print(f"== {proto}, closed loop: wrk -t1 -cN -d{seconds}s keep-alive against nginx (1 worker): saturates both CPUs")
        label = "conns"
    print("   CPU us/req: the recorder process; nginx us/req: the nginx worker without -> with the recorder;")
    print("   http rows: 2 per counted request, + up to 2 per connection for the request in flight when the client stopped counting")
    print(f"   {label:>9} {'baseline/s':>11} {'recorded/s':>11} {'ratio':>6} {'lost':>5} {'http rows':>10} {'2 x req':>9} {'CPU us/req':>10} "
          f"{'nginx us/req':>14}")
    for s in steps:
        nginx = s["nginx_cpu_us_per_request"]
        print(f"   {s['step']:>9} {s['baseline_rps']:>11.0f} {s['recorded_rps']:>11.0f} {s['ratio']:>6.3f} {s['lost_events']:>5} "
              f"{s['http_rows']:>10} {2 * s['requests']:>9} {s['recorder_cpu_us_per_request']:>10} {nginx[0]:>6.1f} -> {nginx[1]:<6.1f} {s['lost'] or ''}"
              + ("" if rows_exact(s, kind) else "  ROWS MISSING OR EXTRA"))
    if steps and len(steps[0]["arms"]) > 1:
        print("   against tcpdump, same load, same run (CPU: the capture process, user+sys (user); bytes: on disk, per request):")
        print(f"   {label:>9} {'arm':<16} {'ratio':>6} {'lost':>6} {'CPU us/req':>16} {'nginx us/req':>12} {'bytes/req':>10}")
        for s in steps:
            for name, a in s["arms"].items():
                print(f"   {s['step']:>9} {name:<16} {a['ratio']:>6.3f} {a['lost']:>6} {a['cpu_us']:>8} ({a['cpu_user_us']:>5}) {a['nginx_us']:>12} {a['bytes']:>10}")
            rec, s256, s0 = s["arms"]["flowtape record"], s["arms"].get("tcpdump -s 256"), s["arms"].get("tcpdump -s 0")
            if s256 and s0:
                cpu_x = rec["cpu_us"] / s256["cpu_us"] if s256["cpu_us"] else float("inf")
                user_x = rec["cpu_user_us"] / s256["cpu_user_us"] if s256["cpu_user_us"] else float("inf")
                if "--against record" in s["arms"]:
                    ag = s["arms"]["--against record"]
                    print(f"   {s['step']:>9} --against recorder CPU / tcpdump -s 256's: {ag['cpu_us'] / s256['cpu_us'] if s256['cpu_us'] else float('inf'):.1f}x; "
                          f"this recorder's CPU / --against's: {rec['cpu_us'] / ag['cpu_us'] if ag['cpu_us'] else float('inf'):.2f}x")
                print(f"   {s['step']:>9} recorder CPU / tcpdump -s 256's: {cpu_x:.1f}x (user only {user_x:.1f}x; target <= 5x); "
                      f"bytes / tcpdump -s 0's: 1/{s0['bytes'] / max(rec['bytes'], 0.1):.0f} (target <= 1/20); "
                      f"recorder RSS start {s['rss_mib'][0]} MiB, end {s['rss_mib'][1]}, peak {s['rss_mib'][2]} (target <= 150)")
    if kind == "open":
        ok = [s for s in steps if s["lost_events"] == 0 and s["ratio"] >= 0.97 and rows_exact(s, kind)]
        if ok:
            best = max(ok, key=lambda s: s["recorded_rps"])
            print(f"   highest rate served with 0 lost events, every exchange written and ratio >= 0.97: {best['recorded_rps']:.0f} req/s (offered {best['step']}); "
                  f"ratio {best['ratio']:.3f}; recorder CPU {best['recorder_cpu_us_per_request']} us/request "
                  f"(targets: >= 20000 req/s plain, <= 10 us/request)")
        else:
            print("   no offered rate was served with 0 lost events, every exchange written and ratio >= 0.97")
    else:
        top = max(steps, key=lambda s: s["recorded_rps"])
        print(f"   at saturation (-c{top['step']}): ratio {top['ratio']:.3f} = the CPU share the recorder takes from wrk and nginx "
              f"({top['recorder_cpu_us_per_request']} us/request x {top['recorded_rps']:.0f}/s on 2 CPUs)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=4, help="length of each load run")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--protos", default="plain,tls", help="comma-separated: plain, tls")
    ap.add_argument("--rates", default=",".join(map(str, RATES)), help="open-loop offered rates (requests/s), comma-separated; '' for none")
    ap.add_argument("--conns", default=",".join(map(str, CONNS)), help="closed-loop wrk connection counts, comma-separated; '' for none")
    ap.add_argument("--no-tcpdump", action="store_true", help="leave out the tcpdump arms")
    ap.add_argument("--no-stats", action="store_true", help="leave out the eBPF run-time statistics runs")
    ap.add_argument("--dns", type=int, default=0, metavar="QPS", help="also run the DNS arm at this many queries/s (0: not)")
    ap.add_argument("--soak", type=float, default=0, metavar="MINUTES",
                    help="also one recorded run of this many minutes: HTTP at the first --rates rate and DNS at --dns (default 2000) queries/s, RSS every 30 s")
    ap.add_argument("--soak-against", metavar="FLOWTAPE",
                    help="run the soak first with this flowtape executable (another checkout's, e.g. /work/main/.venv/bin/flowtape), then with this one: the baseline in the same run")
    ap.add_argument("--dns-against", metavar="FLOWTAPE",
                    help="in the DNS arm, also record with this flowtape executable (another checkout's, e.g. /work/base/.venv/bin/flowtape) between two runs of this one")
    ap.add_argument("--against", metavar="FLOWTAPE",
                    help="also an arm recorded by this flowtape executable (another checkout's, e.g. /work/base/.venv/bin/flowtape): the baseline recorder in the same run")
    args = ap.parse_args()
    global TCPDUMP, AGAINST
    TCPDUMP = not args.no_tcpdump
    AGAINST = args.against
    rates = [int(x) for x in args.rates.split(",") if x]
    conns_list = [int(x) for x in args.conns.split(",") if x]
    protos = [p for p in args.protos.split(",") if p]
    if os.geteuid() != 0:
        print("bench_l7: needs root", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    programs: dict[str, dict[str, tuple[float, float]]] = {}
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="flowtape-bench-l7-") as tmp:
        workdir = Path(tmp)
        www = lab.www({"f100": b"b" * 100})
        srv, cli = lab.add_host("srv"), lab.add_host("cli")
        master, workers = start_nginx_l7(srv, www, tls=make_cert(lab.workdir, ["bench.lab.test"]))
        try:
            for proto, url in (("plain", f"http://{srv.ip}/f100"), ("tls", f"https://{srv.ip}/f100")):
                if proto not in protos:
                    continue
                wrk(cli, url, 1, 4)  # warm-up
                for rate in rates:
                    r = measure(lab, lambda: h2load(cli, url, args.seconds, rate), workdir, f"{proto}-r{rate}", workers)
                    results.setdefault(f"{proto}/open", []).append({"step": rate, **r})
                for conns in conns_list:
                    r = measure(lab, lambda: wrk(cli, url, args.seconds, conns), workdir, f"{proto}-c{conns}", workers)
                    results.setdefault(f"{proto}/closed", []).append({"step": conns, **r})
                if args.no_stats:
                    continue
                # the programs' run times, in a run of their own (the statistics cost two clock reads per run)
                from flowtape.capture.live import ebpf

                with ebpf.run_time_stats():
                    r = recorded(lab, lambda: h2load(cli, url, args.seconds, STATS_RATE), workdir, f"{proto}-stats")
                programs[proto] = {n: (cnt / r["requests"], ns / cnt) for n, (cnt, ns) in r["programs"].items()}
            if args.dns:
                results["dns"] = dns_arm(lab, args.dns, args.seconds, workdir, args.dns_against)
            if args.soak:
                soak_args = (lab, cli, f"http://{srv.ip}/f100", args.soak, (rates or [2700])[0], args.dns or 2000, workdir)
                if args.soak_against:
                    results["soak_baseline"] = soak(*soak_args, flowtape=args.soak_against, tag="soak-baseline")
                results["soak"] = soak(*soak_args)
        finally:
            master.terminate()
            master.wait()
    for key, steps in results.items():
        if key == "dns":
            report_dns(args.dns, args.seconds, steps)
            continue
        if key == "soak_baseline":
            report_soak(steps)
            continue
        if key == "soak":
            report_soak(steps, results.get("soak_baseline"))
            continue
        proto, kind = key.split("/")
        report(proto, kind, steps, args.seconds)
    for proto, progs in programs.items():
        print(f"== {proto}: eBPF programs at {STATS_RATE} req/s offered (kernel.bpf_stats_enabled, a run of its own)")
        for name, (per_request, ns) in sorted(progs.items()):
            print(f"   {name:<45} {per_request:6.2f} runs/request  {ns:8.0f} ns/run")
        print(f"   in-kernel total {sum(r * ns for r, ns in progs.values()) / 1e3:.2f} µs/request (uprobe traps themselves not included)")
        results[f"{proto}/programs"] = progs
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
