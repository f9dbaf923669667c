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
from conftest import run_cli
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


# TLS connections that carry a trace context below HTTP: one whose every packet has the IPv4
# option 136 (set with IP_OPTIONS, as root: the kernel takes unknown options from CAP_NET_RAW),
# one into which two segments with TCP option 25 are injected (raw socket, the connection's own
# 4-tuple: the server answers them as out-of-window ACKs and the connection goes on).
WIRE = r"""
import socket, ssl, struct, sys, time
dst, trace_ip, trace_tcp, span1, span2 = sys.argv[1], bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3]), bytes.fromhex(sys.argv[4]), bytes.fromhex(sys.argv[5])
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
def exchange(s):
    s.sendall(b"GET /f100 HTTP/1.1\r\nHost: a.lab.test\r\n\r\n")
    got = b""
    while b"x" * 100 not in got:
        got += s.recv(65536)
def csum(b):
    if len(b) % 2:
        b += b"\0"
    v = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while v >> 16:
        v = (v & 0xFFFF) + (v >> 16)
    return ~v & 0xFFFF
def inject(src, sport, span):
    opts = bytes([25, 26]) + trace_tcp + span + b"\x01\x01"
    h = struct.pack("!HHIIBBHHH", sport, 443, 12345, 1, (20 + len(opts)) // 4 << 4, 0x10, 1024, 0, 0) + opts
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(h))
    h = h[:16] + struct.pack("!H", csum(pseudo + h)) + h[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(h), 0, 0x4000, 64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw.sendto(ip + h, (dst, 0))
    raw.close()
a = socket.socket()
a.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([136, 20]) + trace_ip + b"\0\0")
a.connect((dst, 443))
pa = a.getsockname()[1]
a = ctx.wrap_socket(a)
exchange(a)
b = socket.create_connection((dst, 443))
src, pb = b.getsockname()
b = ctx.wrap_socket(b)
exchange(b)
inject(src, pb, span1)
time.sleep(0.2)
inject(src, pb, span2)
time.sleep(0.2)
exchange(b)  # the connection still works
exchange(a)
a.close()
b.close()
print(pa, pb, flush=True)
"""
TRACE_IP, TRACE_TCP = "0af7651916cd43dd8448eb211c80319c", "5b8aa5a2d2c872e8321cf37308d69df2"
SPANS = ("00f067aa0ba902b7", "53995c3f42cd8ad8")


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
                    wire = cli.run([sys.executable, "-c", WIRE, down.ip, TRACE_IP, TRACE_TCP, *SPANS], timeout=60)
                    wire_ports = [int(p) for p in wire.stdout.split()]
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
        # the same capture through the pcap importer: the same decoders, so the same sequence numbers
        imported = work / "imported.tape"
        r = run_cli("import", "pcap", pcaps[lab.bridge], "-o", imported, "--node", "pcap")
        assert r.code == 0, r.err
        syn = subprocess.run(["tshark", "-n", "-r", str(pcaps[lab.bridge]), "-Y", f"tcp.flags.syn == 1 && tcp.flags.ack == 0 && tcp.srcport == {wire_ports[0]}",
                              "-T", "fields", "-e", "tcp.seq_raw", "-e", "tcp.ack_raw", "-e", "ip.hdr_len"], check=True, capture_output=True, text=True).stdout.split()
        yield {"tape": flowtape.open(str(tape)), "log": [json.loads(x) for x in log.read_text().splitlines()], "heads": heads,
               "cli": cli, "mid": mid, "down": down, "wire_ports": wire_ports, "syn": syn, "imported": flowtape.open(str(imported))}


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


@pytest.mark.parametrize("source", ["recorded", "imported"])
def test_request_and_response_seq_equal_tsharks_on_both_sides(journeys, source):
    j = journeys
    req: dict[tuple, list[int]] = defaultdict(list)
    resp: dict[tuple, list[int]] = defaultdict(list)
    for sport, dport, seq, uri, _code in j["heads"]:
        if uri:
            req[(int(sport), int(dport))].append(int(seq))
        else:
            resp[(int(dport), int(sport))].append(int(seq))
    rows = _rows(j["tape" if source == "recorded" else "imported"], "not tls")
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


def test_trace_context_below_http_from_ip_and_tcp_options(journeys):
    j = journeys
    p_ip, p_tcp = j["wire_ports"]
    seq, ack, hdr_len = (int(x) for x in j["syn"])
    assert hdr_len == 40  # tshark saw the option on the SYN: 20 bytes of header + 20 of option
    # OBI's span id for the IPv4 option: the packet's seq then ack, each a little-endian u32 (the SYN's: ack 0)
    span_ip = (seq.to_bytes(4, "little") + ack.to_bytes(4, "little")).hex()
    rows = j["tape"].sql("select * from wire_trace_context order by ts").pl().to_dicts()
    got = [(r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"], r["trace_id"], r["span_id"], r["source"]) for r in rows]
    cli, down = j["cli"].ip, j["down"].ip
    assert got == [(cli, p_ip, down, 443, TRACE_IP, span_ip, "ip-option"),  # once: the trace id does not change
                   (cli, p_tcp, down, 443, TRACE_TCP, SPANS[0], "tcp-option"),
                   (cli, p_tcp, down, 443, TRACE_TCP, SPANS[1], "tcp-option")]  # a new span id: a change
    conns = j["tape"].sql(f"select * from connections where server_ip = '{down}' and server_port = 443").pl().to_dicts()
    by_port = defaultdict(set)
    for c in conns:
        by_port[c["client_port"]].add((c["role"], c["wire_trace_id"], c["wire_span_id"], c["wire_trace_source"]))
    assert by_port[p_ip] == {("client", TRACE_IP, span_ip, "ip-option"), ("server", TRACE_IP, span_ip, "ip-option")}
    assert by_port[p_tcp] == {("client", TRACE_TCP, SPANS[0], "tcp-option"), ("server", TRACE_TCP, SPANS[0], "tcp-option")}  # the first one
    others = j["tape"].sql(f"select wire_trace_id, wire_span_id, wire_trace_source from connections where client_port not in ({p_ip}, {p_tcp})").fetchall()
    assert len(others) > 20 and set(others) == {(None, None, None)}  # every other connection carried none
    # both TLS connections still served their two requests (decrypted by the uprobes)
    tls = j["tape"].sql(f"select client_port, count(*) n from http where tls and server_port = 443 and side = 'client' group by 1").pl().to_dicts()
    assert {(r["client_port"], r["n"]) for r in tls} == {(p_ip, 2), (p_tcp, 2)}
    # TLS rows have their thread too: the Python client and nginx's worker are single-threaded
    sides = j["tape"].sql(f"select side, pid, tid from http where tls and server_port = 443").fetchall()
    assert len(sides) == 8 and all(tid == pid for _side, pid, tid in sides)
