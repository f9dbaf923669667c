"""go_spawns is sent lazily (bpf/l7.c go_lineage): a goroutine's spawn and its ancestors' (up to 8
links) reach the tape when it first does socket I/O, each link once; goroutines that never touch a
socket cost no row. Recorded from real goroutines (root + bcc).

tests/go/spawner.go starts, below its main goroutine, chains of depth 1..8 and 10 whose last goroutine
does one HTTP exchange over a raw socket, with a goroutine that does nothing beside every level,
and logs each goroutine it started with its creator (ids from runtime.Stack): that log is the truth.
A g pointer is matched to a goroutine id through the leaf's HTTP row (its path carries the id and
`http.goroutine` the g), then up the chain, row by row, in step with the log. The rows must be
exactly the links of the socket goroutines' chains, cut at 8 links and at main (spawned before the
uprobes were attached): sending every spawn (FLOWTAPE_GO_SPAWN_LINKS=0) adds the quiet goroutines'
rows, sending one link loses the chains' upper links, and both fail here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

import flowtape
from ebpf_support import ebpf_host, require_ebpf  # noqa: F401  (fixture)
from gobuild import go_build
from netlab import Lab, recorder

pytestmark = [pytest.mark.ebpf, pytest.mark.slow, require_ebpf()]

DEPTHS = (1, 2, 3, 4, 5, 6, 7, 8, 10)
LINKS = 8

SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
srv = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
print("listening", flush=True)
srv.serve_forever()
"""


@pytest.fixture(scope="module")
def run(ebpf_host, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("gospawns")
    exe = go_build("spawner.go", work / "ftspawner")
    tape = work / "spawns.tape"
    start = work / "start"
    with Lab() as lab:
        cli, srv = lab.add_host("spawner"), lab.add_host("httpd")
        server = srv.popen([sys.executable, "-c", SERVER, srv.ip, "8080"], stdout=subprocess.PIPE, text=True)
        try:
            assert "listening" in server.stdout.readline()
            with recorder(["-o", str(tape), "--interfaces", lab.bridge, "--node", "lab-node", "--no-k8s"]):
                prog = cli.popen([str(exe), "-addr", f"{srv.ip}:8080", "-start", str(start),
                                  "-depths", ",".join(map(str, DEPTHS))], stdout=subprocess.PIPE, text=True)
                assert "listening" in prog.stdout.readline()
                time.sleep(2.5)  # the recorder's process scan (about every second) attaches the binary's uprobes
                start.touch()
                out, _ = prog.communicate(timeout=60)
                time.sleep(1.5)
        finally:
            server.kill()
            server.wait()
    log = json.loads(out)
    return {"tape": tape, "pid": prog.pid, "main": log["main"], "spawns": log["spawns"]}


def expected_links(main: int, spawns: list[dict]) -> set[tuple[int, int]]:
    """(parent id, child id) of each socket goroutine's chain, up to LINKS links, ending below main."""
    parent = {s["g"]: s["parent"] for s in spawns}
    out = set()
    for s in spawns:
        if s["io"]:
            g = s["g"]
            for _ in range(LINKS):
                if g == main:
                    break
                out.add((parent[g], g))
                g = parent[g]
    return out


def test_the_program_ran_as_planned(run):
    leaves = [s for s in run["spawns"] if s["io"]]
    assert sorted(len(_chain(run, s["g"])) for s in leaves) == list(DEPTHS)
    assert all(s["status"] == 200 for s in leaves)
    assert sum(not s["io"] for s in run["spawns"]) == sum(DEPTHS) - len(DEPTHS) + sum(DEPTHS)  # the levels above the leaves + quiet ones


def _chain(run, g: int) -> list[int]:
    parent = {s["g"]: s["parent"] for s in run["spawns"]}
    out = []
    while g != run["main"]:
        out.append(g)
        g = parent[g]
    return out


def test_the_rows_are_the_socket_goroutines_ancestry_up_to_8_links(run):
    tape = flowtape.open(run["tape"])
    rows = tape.sql("SELECT parent_g, child_g FROM go_spawns WHERE pid = ?", [run["pid"]]).fetchall()
    assert len(rows) == len({c for _, c in rows}), "a goroutine's spawn was sent twice"
    up = dict((c, p) for p, c in rows)  # child g -> parent g (no g is reused during the run)
    leaf_g = dict(tape.sql("""SELECT path, goroutine FROM http WHERE pid = ? AND side = 'client'""", [run["pid"]]).fetchall())
    parent = {s["g"]: s["parent"] for s in run["spawns"]}
    ids: dict[int, int] = {}  # g pointer -> goroutine id, learnt walking each chain in step with the log
    for s in (s for s in run["spawns"] if s["io"]):
        g, gid = leaf_g[s["path"]], s["g"]
        for _ in range(LINKS + 1):
            assert ids.setdefault(g, gid) == gid, f"g {g:#x} is goroutine {ids[g]} and {gid}"
            if g not in up:
                break
            g, gid = up[g], parent.get(gid)
            if gid is None:
                raise AssertionError(f"a row links goroutine {s['g']}'s chain above what the program started")
    got = {(ids.get(p), ids.get(c)) for p, c in rows}
    want = expected_links(run["main"], run["spawns"])
    print(f"\ngo_spawns: {len(rows)} rows for {len(run['spawns'])} goroutines started; {len(want)} links expected")
    assert got == want, (sorted(got - want)[:5], sorted(want - got)[:5])
