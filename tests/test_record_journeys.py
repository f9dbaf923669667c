"""The raw facts request journeys are stitched from (issue 18), recorded live (root + bcc).

A chain in a namespace lab (198.18.0.0/15): curl (cli) -> a threaded Python HTTP server (mid)
that, for each request, calls nginx (down) from the thread that read it, over a new connection
and again over a kept-alive one, passing the request's traceparent and a tracestate; and curl
asking nginx over HTTP/2 (TLS, ALPN h2) with traceparent and tracestate headers.

Oracles: mid's own log (per request: threading.get_native_id(), the downstream connections'
local ports, the trace headers it sent); tshark on a capture of the same bridge (every
segment dissected alone: the TCP sequence number, `tcp.seq_raw`, of the segment each request
and response head starts, which are what request_seq/response_seq must equal, on the client row
and the server row alike); the headers curl sent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

import flowtape
from ebpf_support import ebpf_host, require_ebpf  # noqa: F401  (fixture)
from netlab import H2_PORT, Lab, make_cert, recorder, start_nginx_l7

pytestmark = [pytest.mark.ebpf, pytest.mark.slow, require_ebpf()]

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
STATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"

# A thread-per-connection server: each request's thread makes two downstream calls itself.
MID = r"""
import http.client, http.server, json, socket, sys, threading
with open("/proc/self/comm", "w") as f:
    f.write("ftmid")
down, log_path = sys.argv[1], sys.argv[2]
lock = threading.Lock()
keep = threading.local()  # a kept-alive downstream connection per handler thread
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        tid = threading.get_native_id()
        tp = self.headers.get("traceparent")
        ports = []
        fresh = http.client.HTTPConnection(down, 80)
        fresh.connect()
        ports.append(fresh.sock.getsockname()[1])
        trace = {"traceparent": tp} if tp else {}
        fresh.request("GET", "/f100?fresh", headers={**trace, "tracestate": "mid=%d" % tid})
        fresh.getresponse().read()
        fresh.close()
        if getattr(keep, "c", None) is None:
            keep.c = http.client.HTTPConnection(down, 80)
            keep.c.connect()
        ports.append(keep.c.sock.getsockname()[1])
        keep.c.request("GET", "/f100?kept", headers=trace)
        keep.c.getresponse().read()
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        with lock, open(log_path, "a") as f:
            f.write(json.dumps({"path": self.path, "tid": tid, "pid": __import__("os").getpid(),
                                "client_port": self.client_address[1], "down_ports": ports}) + "\n")
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer((sys.argv[3], 8080), H)
print("ready", flush=True)
srv.serve_forever()
"""


@pytest.fixture(scope="module")
def journeys(ebpf_host, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("journeys")
    with Lab() as lab:
        cli, mid, down = lab.add_host("cli"), lab.add_host("mid"), lab.add_host("down")
        www = lab.www({"f100": b"x" * 100})
        cert = make_cert(lab.workdir, ["a.lab.test"])
        master, _ = start_nginx_l7(down, www, tls=cert)
        log = work / "mid.log"
        server = mid.popen([sys.executable, "-c", MID, down.ip, str(log), mid.ip], stdout=subprocess.PIPE, text=True)
        tape = work / "j.tape"
        try:
            assert server.stdout.readline().strip() == "ready"
            with lab.capture([lab.bridge], snaplen=0) as pcaps:
                with recorder(["-o", str(tape), "--interfaces", lab.bridge, "--node", "lab-node", "--no-k8s"]):
                    for i in range(5):  # separate connections: a new server thread each
                        cli.run(["curl", "-s", "-o", "/dev/null", "-H", f"traceparent: {TRACE}", f"http://{mid.ip}:8080/r{i}"], timeout=30)
                    # two requests on one connection: the same server thread, the kept downstream connection again
                    cli.run(["curl", "-s", "-o", "/dev/null", f"http://{mid.ip}:8080/k1", f"http://{mid.ip}:8080/k2"], timeout=30)
                    cli.run(["curl", "-s", "-k", "-o", "/dev/null", "--http2", "--resolve", f"a.lab.test:{H2_PORT}:{down.ip}",
                             "-H", f"traceparent: {TRACE}", "-H", f"tracestate: {STATE}", f"https://a.lab.test:{H2_PORT}/f100"], timeout=30)
                    time.sleep(1.5)
                time.sleep(0.5)
        finally:
            server.kill()
            master.terminate()
            master.wait(timeout=10)
        fields = ["tcp.srcport", "tcp.dstport", "tcp.seq_raw", "http.request.uri", "http.response.code"]
        argv = ["tshark", "-n", "-r", str(pcaps[lab.bridge]), "-o", "tcp.desegment_tcp_streams:FALSE", "-Y", "http.request || http.response",
                "-T", "fields", "-E", "separator=\t", *[a for f in fields for a in ("-e", f)]]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        heads = [line.split("\t") for line in out.splitlines() if line]
        yield {"tape": flowtape.open(str(tape)), "log": [json.loads(x) for x in log.read_text().splitlines()], "heads": heads,
               "cli": cli, "mid": mid, "down": down}


def _rows(tape, where: str) -> list[dict]:
    return tape.sql(f"select * from http where {where} order by ts_request").pl().to_dicts()


def test_server_and_downstream_client_rows_carry_the_thread_that_did_the_io(journeys):
    j = journeys
    log = j["log"]
    assert len(log) == 7 and len({x["tid"] for x in log}) == 6  # six connections, six threads (k1, k2 share one)
    assert all(x["tid"] != x["pid"] for x in log)  # handler threads, not the main thread
    server = {r["path"]: r for r in _rows(j["tape"], f"side = 'server' and server_ip = '{j['mid'].ip}'")}
    client = defaultdict(list)
    for r in _rows(j["tape"], f"side = 'client' and client_ip = '{j['mid'].ip}'"):
        client[r["client_port"]].append(r)
    for x in log:
        row = server[x["path"]]
        assert (row["pid"], row["tid"], row["client_port"]) == (x["pid"], x["tid"], x["client_port"]), x
        fresh, kept = x["down_ports"]
        # the downstream calls this request made (inside its server row's time), on a fresh and
        # on the kept-alive connection, were written by the thread that read it
        mine = [r for r in client[fresh] + client[kept] if row["ts_request"] <= r["ts_request"] <= row["ts_response"]]
        assert [r["path"] for r in mine] == ["/f100?fresh", "/f100?kept"] and len(client[fresh]) == 1, (x, mine)
        assert [(r["pid"], r["tid"]) for r in mine] == [(x["pid"], x["tid"])] * 2, (x, mine)
    # curl is one thread: its rows' tid is its pid
    curl = _rows(j["tape"], f"side = 'client' and client_ip = '{j['cli'].ip}' and not tls")
    assert len(curl) == 7 and all(r["tid"] == r["pid"] for r in curl)


def test_request_and_response_seq_equal_tsharks_on_both_sides(journeys):
    j = journeys
    req: dict[tuple, list[int]] = defaultdict(list)
    resp: dict[tuple, list[int]] = defaultdict(list)
    for sport, dport, seq, uri, _code in j["heads"]:
        if uri:
            req[(int(sport), int(dport))].append(int(seq))
        else:
            resp[(int(dport), int(sport))].append(int(seq))
    rows = _rows(j["tape"], "not tls")
    assert len(rows) == 2 * (7 + 14)  # each plain exchange has a client and a server row: curl->mid 7, mid->nginx 14
    by_conn: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_conn[(r["client_port"], r["server_port"])][r["side"]].append((r["request_seq"], r["response_seq"]))
    for key, sides in by_conn.items():
        want = list(zip(req[key], resp[key]))
        assert sides["client"] == want and sides["server"] == want, key
    # heads on kept-alive connections are not at their stream's start: the numbers really move
    assert any(len(v) > 1 for v in req.values())


def test_tracestate_and_http2_trace_context(journeys):
    j = journeys
    down = _rows(j["tape"], f"server_ip = '{j['down'].ip}' and server_port = 80")
    fresh = [r for r in down if r["path"] == "/f100?fresh"]
    assert len(fresh) == 14 and Counter(r["traceparent"] for r in fresh) == {TRACE: 10, None: 4}  # k1, k2 had none
    log_tids = {x["tid"] for x in j["log"]}
    assert {r["tracestate"] for r in fresh} == {f"mid={t}" for t in log_tids}  # on both sides' rows
    h2 = _rows(j["tape"], f"server_port = {H2_PORT}")
    assert {(r["side"], r["http_version"], r["traceparent"], r["tracestate"]) for r in h2} == {
        ("client", "HTTP/2", TRACE, STATE), ("server", "HTTP/2", TRACE, STATE)}
    assert all(r["request_seq"] is None and r["response_seq"] is None for r in h2)
