"""Request journeys recorded from real traffic equal the journeys the programs logged (root + bcc).

A chain in network namespaces (198.18.0.0/15), over plain HTTP/1.1: a client -> nginx
(proxy_pass, one worker) -> a threaded Python backend (ThreadingHTTPServer: a thread per
request) that calls two further threaded Python services, one after the other. The client
and the backend propagate W3C traceparent as an instrumented application would: a new span id
for each call they make, the trace id of the request they handle; nginx forwards the header
unchanged (it passes request headers through by default). Every program logs each request it
handled and the calls it made, with their ids and socket ports: that log is the truth.

With propagation, the traces view must rebuild exactly the logged trees (the applications'
trace ids and client span ids, every parent link, nothing else joined in). Without it (the
headers left out), the links must come from the socket and the thread that read each request
(`http.tid`, which the recorder writes from the socket's turns: capture/live/l7.py `IoTurns`).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

import flowtape
from ebpf_support import ebpf_host, require_ebpf  # noqa: F401  (fixture)
from netlab import Lab

pytestmark = [pytest.mark.ebpf, pytest.mark.slow, require_ebpf()]

FLOWTAPE = str(Path(sys.executable).with_name("flowtape"))
REQUESTS = 12

SERVICE = r"""
import http.client, json, os, random, socket, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
name, host, port, log_path, propagate = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
downstream = [tuple(x.split(":")) for x in sys.argv[6:]]  # host:port:path of the calls to make, in order
with open("/proc/self/comm", "w") as f:
    f.write(name)
lock = threading.Lock()
def log(rec):
    with lock, open(log_path, "a") as f:
        f.write(json.dumps(rec) + "\n")
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        tp = self.headers.get("traceparent")
        trace = tp.split("-")[1] if tp else None
        calls = []
        for h, p, path in downstream:
            span = "%016x" % random.getrandbits(64)
            c = http.client.HTTPConnection(h, int(p), timeout=10)
            c.connect()
            headers = {"traceparent": f"00-{trace}-{span}-01"} if propagate and trace else {}
            c.request("GET", path, headers=headers)
            r = c.getresponse()
            r.read()
            calls.append({"span": span if headers else None, "port": c.sock.getsockname()[1], "path": path, "status": r.status})
            c.close()
        time.sleep(random.uniform(0.002, 0.02))  # the handler's own work
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        log({"service": name, "traceparent": tp, "client_port": self.client_address[1], "path": self.path, "calls": calls})
ThreadingHTTPServer.daemon_threads = True
srv = ThreadingHTTPServer((host, port), H)
print("ready", flush=True)
srv.serve_forever()
"""

CLIENT = r"""
import http.client, json, random, sys, time
host, port, n, log_path, propagate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
with open("/proc/self/comm", "w") as f:
    f.write("ftclient")
for i in range(n):
    trace, span = "%032x" % random.getrandbits(128), "%016x" % random.getrandbits(64)
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.connect()
    path = f"/order/{i}"
    c.request("GET", path, headers={"traceparent": f"00-{trace}-{span}-01"} if propagate else {})
    r = c.getresponse()
    r.read()
    with open(log_path, "a") as f:
        f.write(json.dumps({"trace": trace if propagate else None, "span": span if propagate else None, "port": c.sock.getsockname()[1],
                            "path": path, "status": r.status}) + "\n")
    c.close()
    time.sleep(0.05)
"""


def _nginx_proxy_conf(workdir: Path, listen: str, upstream: str) -> Path:
    conf = workdir / "nginx-proxy.conf"
    conf.write_text(f"""
user root;
worker_processes 1;
daemon off;
master_process on;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {workdir}/nginx-access.log;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    server {{
        listen {listen};
        location / {{ proxy_pass http://{upstream}; }}
    }}
}}
""")
    return conf


def _wait(proc: subprocess.Popen, needle: str) -> None:
    line = proc.stdout.readline()
    assert needle in line, line


def _read_log(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _record(tmp: Path, propagate: bool) -> dict:
    with Lab() as lab:
        cli, proxy, app, s1, s2 = (lab.add_host(n) for n in ("cli", "proxy", "app", "svc1", "svc2"))
        logs = {n: lab.workdir / f"{n}.log" for n in ("client", "app", "svc1", "svc2")}
        procs = []
        tape = tmp / ("journeys.tape" if propagate else "journeys-bare.tape")
        try:
            for host, name, extra in ((s1, "ftsvc1", []), (s2, "ftsvc2", []),
                                      (app, "ftapp", [f"{s1.ip}:8001:/stock/1", f"{s2.ip}:8002:/price/1"])):
                port = {"ftsvc1": "8001", "ftsvc2": "8002", "ftapp": "8000"}[name]
                log = logs[name.removeprefix("ft")]
                p = host.popen([sys.executable, "-c", SERVICE, name, host.ip, port, str(log), "1" if propagate else "0", *extra],
                               stdout=subprocess.PIPE, text=True)
                procs.append(p)
                _wait(p, "ready")
            nginx = proxy.popen(["nginx", "-c", str(_nginx_proxy_conf(lab.workdir, f"{proxy.ip}:80", f"{app.ip}:8000"))],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(nginx)
            deadline = time.monotonic() + 10
            while proxy.run(["curl", "-s", "-o", "/dev/null", f"http://{proxy.ip}:80/warmup"], check=False).returncode != 0:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
            time.sleep(0.3)
            for f in logs.values():  # the warm-up request is not part of the truth
                f.unlink(missing_ok=True)
            rec = subprocess.Popen([FLOWTAPE, "record", "-o", str(tape), "--interfaces", lab.bridge, "--node", "lab-node", "--no-k8s"],
                                   stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
            status: list[str] = []
            try:
                while "recording to" not in (line := rec.stderr.readline()):
                    assert line, f"the recorder did not start: {rec.stderr.read()}"
                threading.Thread(target=lambda: status.extend(rec.stderr), daemon=True).start()
                time.sleep(0.5)
                cli.run([sys.executable, "-c", CLIENT, proxy.ip, "80", str(REQUESTS), str(logs["client"]), "1" if propagate else "0"], timeout=120)
                time.sleep(1.5)
                rec.send_signal(signal.SIGINT)
                assert rec.wait(timeout=120) == 0, "".join(status)
            finally:
                if rec.poll() is None:
                    rec.kill()
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=10)
        return {"tape": tape, "ips": {h.name: h.ip for h in lab.hosts}, **{n: _read_log(f) for n, f in logs.items()}}


@pytest.fixture(scope="module")
def propagated(ebpf_host, tmp_path_factory):  # noqa: F811
    return _record(tmp_path_factory.mktemp("journeys"), propagate=True)


@pytest.fixture(scope="module")
def bare(ebpf_host, tmp_path_factory):  # noqa: F811
    return _record(tmp_path_factory.mktemp("journeys-bare"), propagate=False)


def _expected(r: dict) -> dict[tuple, tuple | None]:
    """The logged trees as span key -> parent key; a key is (side, client ip, client port)."""
    ips = r["ips"]
    app_by_port = {}  # nginx's upstream port -> the backend's log line
    for x in r["app"]:
        app_by_port[x["client_port"]] = x
    out: dict[tuple, tuple | None] = {}
    assert len(r["client"]) == REQUESTS and len(r["app"]) == REQUESTS
    assert len(r["svc1"]) == REQUESTS and len(r["svc2"]) == REQUESTS
    # nginx's upstream connection for each client request: the backend saw the same path
    by_path = {x["path"]: x for x in r["app"]}
    for c in r["client"]:
        root = ("client", ips["cli"], c["port"])
        out[root] = None
        out[("server", ips["cli"], c["port"])] = root
        a = by_path[c["path"]]
        up_c, up_s = ("client", ips["proxy"], a["client_port"]), ("server", ips["proxy"], a["client_port"])
        out[up_c] = ("server", ips["cli"], c["port"])
        out[up_s] = up_c
        for call in a["calls"]:
            k = ("client", ips["app"], call["port"])
            out[k] = up_s
            out[("server", ips["app"], call["port"])] = k
    return out


def _found(tape: Path) -> pl.DataFrame:
    df = flowtape.open(tape).report.traces(by="process")
    parents = df.select("trace_id", pl.col("span_id").alias("parent_span_id"), pl.col("kind").alias("p_kind"),
                        pl.col("client_ip").alias("p_ip"), pl.col("client_port").alias("p_port"))
    return df.join(parents, on=["trace_id", "parent_span_id"], how="left")


def _check(r: dict) -> pl.DataFrame:
    want = _expected(r)
    df = _found(r["tape"])
    got = {(k, ip, port): (pk, pip, pp) if pk is not None else None
           for k, ip, port, pk, pip, pp in df.select("kind", "client_ip", "client_port", "p_kind", "p_ip", "p_port").iter_rows()}
    mine = {k: v for k, v in got.items() if k in want}
    assert set(mine) == set(want)  # every logged span was recorded
    assert mine == want  # every link, and no other parent (precision and recall 1.0)
    # nothing of another trace hangs below a logged span
    assert not [k for k, v in got.items() if v in want and k not in want]
    return df


def test_recorded_trees_equal_the_logged_ones(propagated):
    # nginx forwarded the client's traceparent unchanged, and the recorder kept it (allow-list) on both sides
    tape = flowtape.open(propagated["tape"])
    sent = {c["path"]: f"00-{c['trace']}-{c['span']}-01" for c in propagated["client"]}
    rows = tape.sql("SELECT comm, side, path, traceparent FROM http WHERE path LIKE '/order/%'").fetchall()
    assert {(comm, side) for comm, side, _, _ in rows} == {("ftclient", "client"), ("nginx", "server"), ("nginx", "client"), ("ftapp", "server")}
    assert len(rows) == 4 * REQUESTS and all(tp == sent[path] for _, _, path, tp in rows)
    df = _check(propagated)
    # the applications' ids: the client's trace id for the whole tree, its and the backend's span ids
    want_spans = {(propagated["ips"]["cli"], c["port"]): (c["trace"], c["span"]) for c in propagated["client"]}
    for x in propagated["app"]:
        for call in x["calls"]:
            want_spans[(propagated["ips"]["app"], call["port"])] = (x["traceparent"].split("-")[1], call["span"])
    clients = df.filter(pl.col("kind") == "client")
    for ip, port, trace, span in clients.select("client_ip", "client_port", "trace_id", "span_id").iter_rows():
        if (ip, port) in want_spans:
            assert (trace, span) == want_spans[(ip, port)]
    # one trace per client request, named by the processes
    traces = df.filter(pl.col("trace_id").is_in([c["trace"] for c in propagated["client"]]))
    assert traces["trace_id"].n_unique() == REQUESTS and traces.height == REQUESTS * 8
    roots = traces.filter(pl.col("parent_span_id").is_null())
    assert roots["client"].to_list() == ["ftclient"] * REQUESTS
    assert set(traces.filter(pl.col("kind") == "server")["server"]) == {"nginx", "ftapp", "ftsvc1", "ftsvc2"}
    # how each link was made: nginx forwards the client's header unchanged, so its two sides
    # and the backend's request pair by socket; the services' requests by their own span ids
    src = traces.group_by("kind", "server").agg(pl.col("source").unique())
    src = {(k, s): set(v) for k, s, v in src.iter_rows()}
    assert src[("server", "ftsvc1")] == src[("server", "ftsvc2")] == {"traceparent"}
    assert src[("server", "nginx")] | src[("server", "ftapp")] <= {"socket", "tcp-seq"}
    assert src[("client", "ftapp")] == src[("client", "ftsvc1")] == src[("client", "ftsvc2")] == {"traceparent"}


def test_without_propagation_socket_and_thread_rebuild_the_trees(bare):
    parts = list((bare["tape"] / "http").rglob("*.parquet"))
    assert any("tid" in pq.read_schema(p).names for p in parts), "the recorder wrote no http.tid"
    df = _check(bare)
    srcs = set(df.filter(pl.col("source").is_not_null())["source"])
    assert srcs <= {"socket", "tcp-seq", "thread"} and "thread" in srcs
