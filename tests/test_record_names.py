"""A real recording without Kubernetes names every local process and looked-up server (root + bcc).

A namespace lab (198.18.0.0/15) on one machine, as a new user tries flowtape on a VM: dnsmasq
answers `web.lab.test` (TTL 0, as local resolvers answer), curl resolves it and fetches from
nginx, a Python client (in a Docker-like cgroup: `docker-<id>.scope`) calls nginx by address
and a small Python server known only from the recording host's /etc/hosts (the recorder runs
in a mount namespace where /etc/hosts is a test file: the machine's own stays untouched).

Oracles: the commands we ran (how many requests each client made, which name curl asked for),
the cgroup we made, the hosts file we wrote, and Chromium's screenshot of the HTML page.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import flowtape
from conftest import require_tool, run_cli
from ebpf_support import ebpf_host, require_ebpf  # noqa: F401  (fixture)
from flowtape.analyze.enrich import GRANULARITIES
from netlab import Lab, start_dnsmasq, start_nginx_l7

pytestmark = [pytest.mark.ebpf, pytest.mark.slow, require_ebpf()]

FLOWTAPE = str(Path(sys.executable).with_name("flowtape"))
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
NODE = "labvm"
CURLS, PY_REQUESTS, DB_REQUESTS = 3, 2, 2

CLIENT = r"""
import socket, sys
with open("/proc/self/comm", "w") as f:
    f.write(sys.argv[1])
host, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for _ in range(n):
    s = socket.create_connection((host, port))
    s.sendall(b"GET /page HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
    while s.recv(65536):
        pass
    s.close()
"""

DB = r"""
import socket, sys
with open("/proc/self/comm", "w") as f:
    f.write("ftdb")
srv = socket.create_server((sys.argv[1], 5432))
print("ready", flush=True)
while True:
    c, _ = srv.accept()
    c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    c.close()
"""


def _cgroup_v2_writable() -> bool:
    return (CGROUP_ROOT / "cgroup.procs").exists() and os.access(CGROUP_ROOT, os.W_OK)


@pytest.fixture(scope="module")
def recording(ebpf_host, tmp_path_factory):
    unshare = require_tool(("unshare",), "util-linux")
    out = tmp_path_factory.mktemp("names")
    tape = out / "lab.tape"
    container_id = secrets.token_hex(32)
    with Lab() as lab:
        dns, srv, cli, db = lab.add_host("dns"), lab.add_host("web"), lab.add_host("cli"), lab.add_host("db")
        master, _workers = start_nginx_l7(srv, lab.www({"page": b"x" * 3000}))
        resolver = start_dnsmasq(dns, [f"--address=/web.lab.test/{srv.ip}"])
        dbp = db.popen([sys.executable, "-c", DB, db.ip], stdout=subprocess.PIPE, text=True)
        assert dbp.stdout.readline().strip() == "ready"
        # `ip netns exec` mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf for the command
        netns_etc = Path("/etc/netns") / cli.netns
        netns_etc.mkdir(parents=True)
        (netns_etc / "resolv.conf").write_text(f"nameserver {dns.ip}\noptions attempts:1 timeout:2\n")
        hosts = out / "hosts"
        hosts.write_text(f"127.0.0.1 localhost\n{db.ip} db.lab.hosts db\n")
        cgroup = None
        if _cgroup_v2_writable():
            cgroup = CGROUP_ROOT / f"flowtape-test-{lab.tag}.slice" / f"docker-{container_id}.scope"
            cgroup.mkdir(parents=True)
        rec = subprocess.Popen([unshare, "--mount", "--propagation", "private", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts),
                                FLOWTAPE, "record", "-o", str(tape), "--node", NODE, "--interfaces", lab.bridge, "--flow-interval", "1"],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        try:
            while "recording to" not in (line := rec.stderr.readline()):
                if not line:
                    raise AssertionError(f"the recorder did not start: {rec.stderr.read()}")
            for _ in range(CURLS):
                r = cli.run(["curl", "-sf", "-o", "/dev/null", "http://web.lab.test/page"], timeout=30)
                assert r.returncode == 0, r.stderr
            # the Python client joins the container-like cgroup before it runs (a shell moves itself, then execs)
            move = f'echo $$ > "{cgroup}/cgroup.procs" && ' if cgroup else ""
            p = subprocess.run(["sh", "-c", move + 'exec "$@"', "sh", *cli.cmd([sys.executable, "-c", CLIENT, "ftclient", srv.ip, "80", str(PY_REQUESTS)])],
                               capture_output=True, text=True, timeout=30)
            assert p.returncode == 0, p.stderr
            cli.run([sys.executable, "-c", CLIENT, "ftdbclient", db.ip, "5432", str(DB_REQUESTS)], timeout=30)
            time.sleep(2.5)  # the last flows and connection rows are flushed (1 s interval)
            rec.send_signal(signal.SIGINT)
            rec.stderr.read()
            assert rec.wait(timeout=60) == 0
        finally:
            if rec.poll() is None:
                rec.kill()
                rec.wait()
            shutil.rmtree(netns_etc, ignore_errors=True)
            for p in (dbp, resolver, master):
                p.kill()
                p.wait()
            if cgroup is not None:
                cgroup.rmdir()
                cgroup.parent.rmdir()
        yield {"tape": flowtape.open(str(tape)), "path": tape, "srv": srv, "cli": cli, "db": db, "dns": dns, "lab": lab,
               "container": container_id[:12] if cgroup else None, "cgroup": "/" + str(cgroup.relative_to(CGROUP_ROOT)) if cgroup else None}


def _edges(r, by: str) -> dict[tuple[str, str], dict]:
    res = run_cli("report", "topology", r["path"], "--by", by, "-f", "json")
    assert res.code == 0, res.err
    return {(e["client"], e["server"]): e for e in json.loads(res.out)}


def test_process_edges(recording):
    e = _edges(recording, "process")
    py = f"docker:{recording['container']}/ftclient" if recording["container"] else "ftclient"
    assert ("curl", "nginx") in e, sorted(e)
    assert e[("curl", "nginx")]["requests"] == CURLS and e[("curl", "nginx")]["connections"] == CURLS
    assert e[(py, "nginx")]["requests"] == PY_REQUESTS and e[(py, "nginx")]["connections"] == PY_REQUESTS
    assert e[("ftdbclient", "ftdb")]["connections"] == DB_REQUESTS


def test_no_local_process_is_unknown_at_any_granularity(recording):
    r = recording
    lab_ips = {h.ip for h in (r["srv"], r["cli"], r["db"], r["dns"])}
    for by in GRANULARITIES:
        names = {n for pair in _edges(r, by) for n in pair}
        talkers = json.loads(run_cli("report", "traffic", r["path"], "--by", by, "-f", "json").out)["talkers"]
        names |= {t["endpoint"] for t in talkers}
        dns = json.loads(run_cli("report", "dns", r["path"], "--by", by, "-f", "json").out)["failures"]
        names |= {c for f in dns for c in f["top_clients"]}
        assert not {n for n in names if any(n.endswith(ip) for ip in lab_ips)}, (by, sorted(names))


def test_looked_up_server_is_named_by_its_dns_name(recording):
    """curl asked for web.lab.test (dnsmasq answered with TTL 0) and connected: by host, the server
    is that name; the db, which nobody looked up, is named by the recording host's /etc/hosts;
    the clients, in namespaces nobody named, are on the recording host."""
    e = _edges(recording, "host")
    assert e[(NODE, "web.lab.test")]["requests"] == CURLS + PY_REQUESTS
    assert e[(NODE, "db.lab.hosts")]["connections"] == DB_REQUESTS
    m = recording["tape"].manifest["nodes"][NODE]["host"]
    assert {"ip": recording["db"].ip, "names": ["db.lab.hosts", "db"]} in m["etc_hosts"]  # the recorder's /etc/hosts, not this machine's
    assert recording["lab"].gateway_ip in {a["ip"] for a in m["addresses"]}  # the bridge's address: the host's own
    ns = {a["ip"] for a in m["namespace_addresses"]}
    assert {recording[h].ip for h in ("srv", "cli", "db", "dns")} <= ns and not ns & {a["ip"] for a in m["addresses"]}


def test_container_cgroup_is_described(recording):
    if recording["container"] is None:
        pytest.skip("cgroup v2 is not writable here: no container-like cgroup")
    cg = recording["tape"].manifest["nodes"][NODE]["host"]["cgroups"]
    docker = [c for c in cg.values() if c["runtime"] == "docker"]
    assert len(docker) == 1 and docker[0]["container"] == recording["container"]  # no Docker state here: the id, cut to 12
    assert docker[0]["path"] == recording["cgroup"] and docker[0]["unit"] == recording["cgroup"].rsplit("/", 1)[1]


def test_info_lists_only_what_was_lost(recording):
    r = run_cli("info", recording["path"])
    assert r.code == 0, r.err
    lost = r.out.split("\nlost", 1)[1].splitlines()
    counters = recording["tape"].manifest["lost"][NODE]
    if not any(counters.values()):
        assert lost[0].strip() == "none"
    else:
        shown = {line.split()[1]: int(line.split()[2].replace(",", "")) for line in lost[1:] if line.startswith("  ")}
        assert shown == {k: v for k, v in counters.items() if v}
    r = run_cli("info", recording["path"], "--all")
    assert all(k in r.out for k in counters)


def test_html_latency_lines_are_drawn(recording, tmp_path):
    """The page of a tape shorter than a minute has 1 s buckets, and Chromium draws the lines:
    the latency figure alone, screenshot, holds pixels of the p50 and p99 line colours."""
    exe = require_tool(("chromium", "chromium-browser"), "apt-get install chromium")
    require_tool(("dot",), "apt-get install graphviz")
    page = tmp_path / "report.html"
    r = run_cli("report", "html", recording["path"], "-o", page, "--by", "process")
    assert r.code == 0, r.err
    text = page.read_text()
    assert "per 1 s bucket" in text and "Zones are not known" in text and 'data-limit="kubernetes"' in text
    fig = re.search(r'<figure id="fig-latency">(<svg.*?</svg>)', text, re.S)
    assert fig, "no latency figure"
    only = tmp_path / "latency.html"
    only.write_text(f'<!DOCTYPE html><html><body style="margin:0;background:#fff">{fig.group(1)}</body></html>')
    shot = tmp_path / "latency.png"
    p = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1300,700",
                        f"--screenshot={shot}", only.as_uri()], capture_output=True, text=True, timeout=180)
    assert p.returncode == 0 and shot.exists(), p.stderr[-2000:]
    from PIL import Image

    im = Image.open(shot).convert("RGB")
    counts: dict[tuple[int, int, int], int] = {}
    for c in im.get_flattened_data() if hasattr(im, "get_flattened_data") else im.getdata():
        counts[c] = counts.get(c, 0) + 1

    def near(rgb: tuple[int, int, int]) -> int:  # anti-aliasing blends a line's edges: its core keeps the colour
        return sum(n for c, n in counts.items() if all(abs(a - b) <= 12 for a, b in zip(c, rgb)))

    assert near((0x1D, 0x23, 0x30)) > 150, "no p50 line (nor axis text) drawn"
    assert near((0x2F, 0x5F, 0xB3)) > 150, "no p99 line drawn"


def test_readme_first_recording_works_as_printed(ebpf_host, tmp_path):
    """The README's "A first recording" block, run as printed (30 s made 3 s; `sudo` dropped
    when we already are root and it is not installed): every command succeeds and the page is
    written. What it records is whatever this machine does meanwhile; no traffic is made here."""
    from conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## A first recording\n.*?```sh\n(.*?)```", readme, re.S).group(1)
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    ran = []
    for line in block.splitlines():
        cmd = re.sub(r"\s+#\s.*$", "", line).strip()
        if not cmd:
            continue
        cmd = cmd.replace("--duration 30s", "--duration 3s")
        if os.geteuid() == 0 and shutil.which("sudo") is None:
            cmd = re.sub(r"^sudo ", "", cmd)
        p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"README command failed: {cmd}\n{p.stderr[-2000:]}"
        ran.append(cmd.split()[1] if cmd.startswith(".venv") else cmd.split()[0])
    assert ran == ["record", "chown", "info", "report", "report", "report", "report"]
    page = (tmp_path / "first.html").read_text()
    assert all(f'<section id="{s}">' in page for s in ("topology", "latency", "zones", "dns", "egress", "metadata"))
    host = flowtape.open(tmp_path / "first.tape").manifest["nodes"]
    assert all(h["host"]["addresses"] for h in host.values())  # what names this machine later, elsewhere
