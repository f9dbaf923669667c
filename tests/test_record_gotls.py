"""HTTPS of Go programs (crypto/tls uprobes, stripped binary included) and of Node.js (OpenSSL
linked into the node binary), recorded for real and checked against the programs' own logs.

In a namespace lab (198.18.0.0/15): a Go net/http HTTPS server built stripped, a Node.js https
server, both started before the recorder; a Go http.Client (keep-alive, HTTP/1.1) started after
it (found by the recorder's process scan), curl against both servers. Every server logs each
request it served and the Go client each response it got: those logs are the truth, compared
exactly (method, path, status, and how many). A Go program without crypto/tls is skipped with
a counted note.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import flowtape
from ebpf_support import ebpf_host, require_ebpf, skip_or_fail  # noqa: F401  (fixture)
from gobuild import go_build, go_version
from netlab import Lab, make_cert, recorder

pytestmark = [pytest.mark.ebpf, pytest.mark.slow, require_ebpf()]

GO_PORT, GO_H2_PORT, NODE_PORT = 8443, 9443, 7443
PATHS = ["/a", "/status/404", "/bytes/5000", "/status/503"]
ROUNDS = 5
NODE_SERVER = r"""
const https = require('https'), fs = require('fs');
const [ip, port, cert, key, logPath] = process.argv.slice(1);  // node -e: no script path
const log = fs.openSync(logPath, 'w');
https.createServer({cert: fs.readFileSync(cert), key: fs.readFileSync(key)}, (req, res) => {
  const status = req.url.startsWith('/status/') ? parseInt(req.url.slice(8)) : 200;
  res.writeHead(status, {'content-type': 'text/plain'});
  res.end('node ' + status + '\n');
  fs.writeSync(log, JSON.stringify({method: req.method, path: req.url, status: status}) + '\n');
}).listen(parseInt(port), ip, () => console.log('listening'));
"""


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _start(host, argv, cwd: Path) -> subprocess.Popen:
    p = host.popen(argv, stdout=subprocess.PIPE, text=True, cwd=cwd)
    line = p.stdout.readline()
    if "listening" not in line:
        p.kill()
        raise AssertionError(f"{argv[0]} did not start: {line!r}")
    return p


@pytest.fixture(scope="module")
def recording(ebpf_host, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("gotls")
    server = go_build("server.go", work / "gosrv-stripped", stripped=True)
    server_h2 = go_build("server.go", work / "gosrv-h2")
    client = go_build("client.go", work / "goclient")
    hello = go_build("hello.go", work / "gohello")
    node = "/usr/bin/node"
    if not Path(node).exists():
        skip_or_fail("node is not installed")
    with Lab() as lab:
        srv, cli = lab.add_host("srv"), lab.add_host("cli")
        cert, key = make_cert(lab.workdir, ["go.lab.test"])
        procs = [_start(srv, [str(server), "-addr", f"{srv.ip}:{GO_PORT}", "-cert", str(cert), "-key", str(key),
                              "-log", str(work / "go-served.jsonl"), "-http1"], work),
                 _start(srv, [str(server_h2), "-addr", f"{srv.ip}:{GO_H2_PORT}", "-cert", str(cert), "-key", str(key),
                              "-log", str(work / "go-h2-served.jsonl")], work),
                 _start(srv, [node, "-e", NODE_SERVER, srv.ip, str(NODE_PORT), str(cert), str(key), str(work / "node-served.jsonl")], work)]
        procs.append(subprocess.Popen([str(hello)], stdout=subprocess.DEVNULL))
        tape = work / "gotls.tape"
        try:
            with recorder(["-o", str(tape), "--interfaces", lab.bridge, "--node", "lab-node", "--no-k8s"]):
                # started after the recorder: found by its process scan (about every second)
                cli.run([str(client), "-base", f"https://{srv.ip}:{GO_PORT}", "-n", str(ROUNDS), "-http1", "-wait", "2.5s",
                         "-log", str(work / "go-got.jsonl"), *PATHS], timeout=120)
                # Go's default: HTTP/2 over TLS (ALPN h2) on both ends
                cli.run([str(client), "-base", f"https://{srv.ip}:{GO_H2_PORT}", "-n", str(ROUNDS), "-wait", "1.5s",
                         "-log", str(work / "go-h2-got.jsonl"), *PATHS], timeout=120)
                for port in (GO_PORT, NODE_PORT):
                    cli.run(["curl", "-sk", "--http1.1", "-o", "/dev/null", *[f"https://{srv.ip}:{port}{p}" for p in PATHS]], timeout=60)
                time.sleep(1.5)
        finally:
            for p in procs:
                p.kill()
                p.wait()
        yield {"tape": flowtape.open(str(tape)), "work": work, "server_pid": procs[0].pid, "h2_pid": procs[1].pid, "node_pid": procs[2].pid,
               "paths": {"server": str(server), "client": str(client), "hello": str(hello)}}


def _http(tape, where: str) -> list[tuple]:
    return sorted(tape.sql(f"SELECT method, path, status FROM http WHERE {where}").fetchall())


def _log(rows: list[dict]) -> list[tuple]:
    return sorted((r["method"], r["path"], r["status"]) for r in rows)


def test_go_server_rows_equal_its_log(recording):
    served = _jsonl(recording["work"] / "go-served.jsonl")
    assert len(served) == ROUNDS * len(PATHS) + len(PATHS)  # the Go client's rounds, then curl's
    rows = _http(recording["tape"], f"side = 'server' AND tls AND pid = {recording['server_pid']}")
    assert rows == _log(served)


def test_go_client_rows_equal_its_log(recording):
    got = _jsonl(recording["work"] / "go-got.jsonl")
    assert len(got) == ROUNDS * len(PATHS)
    rows = _http(recording["tape"], "side = 'client' AND tls AND comm = 'goclient' AND http_version = 'HTTP/1.1'")
    assert rows == _log(got)


def test_go_http2_rows_equal_both_logs(recording):
    served, got = _jsonl(recording["work"] / "go-h2-served.jsonl"), _jsonl(recording["work"] / "go-h2-got.jsonl")
    assert len(served) == len(got) == ROUNDS * len(PATHS)
    assert {r["proto"] for r in served} == {"HTTP/2.0"}  # really HTTP/2
    t = recording["tape"]
    assert _http(t, f"side = 'server' AND tls AND http_version = 'HTTP/2' AND pid = {recording['h2_pid']}") == _log(served)
    assert _http(t, "side = 'client' AND tls AND http_version = 'HTTP/2' AND comm = 'goclient'") == _log(got)


def test_go_rows_join_their_connections(recording):
    t = recording["tape"]
    rows = t.sql(f"""SELECT h.comm, c.comm AS conn_comm, c.role, h.server_port FROM http h JOIN connections c USING (conn_id)
                    WHERE h.tls AND h.pid = {recording['server_pid']}""").fetchall()
    assert len(rows) == ROUNDS * len(PATHS) + len(PATHS)
    assert {r[1:] for r in rows} == {("gosrv-stripped", "server", GO_PORT)}
    assert t.sql(f"SELECT count(*) FROM http WHERE pid = {recording['server_pid']} AND conn_id IS NULL").fetchall() == [(0,)]


def test_node_server_rows_equal_its_log(recording):
    served = _jsonl(recording["work"] / "node-served.jsonl")
    assert len(served) == len(PATHS)
    rows = _http(recording["tape"], f"side = 'server' AND tls AND pid = {recording['node_pid']}")
    assert rows == _log(served)
    assert recording["tape"].sql(f"SELECT DISTINCT comm FROM http WHERE pid = {recording['node_pid']}").fetchall() == [("node",)]


def test_curl_is_still_read_through_libssl(recording):
    rows = _http(recording["tape"], "side = 'client' AND tls AND comm = 'curl'")
    assert Counter(rows) == Counter([("GET", p, s) for p, s in zip(PATHS, (200, 404, 200, 503))] * 2)


def test_manifest_names_the_go_binaries_and_what_was_skipped(recording):
    m = recording["tape"].manifest["probes"]["l7"]
    go = m["go_tls"]
    v = go_version()
    assert go["binaries"][recording["paths"]["server"]] == v
    assert go["binaries"][recording["paths"]["client"]] == v
    assert recording["paths"]["hello"] not in go["binaries"]
    # a Go binary without crypto/tls gets the goroutine probes alone (they are on by default)
    assert go["goroutines_only"][recording["paths"]["hello"]] == v
    assert recording["paths"]["server"] not in go["goroutines_only"]
    assert "/usr/bin/node" in m["ssl_libs"]  # found by the scan: OpenSSL linked into node
    assert go["uprobes"] >= 3 * (2 + 2)  # Write's entry, Read's entry and its RETs (at least two), per binary
