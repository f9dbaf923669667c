"""`flowtape record --inject-trace-context ip-option`, live (root + bcc): the one probe that writes
into packets (bpf/inject.c).

Two "nodes", each a network namespace of a lab (198.18.0.0/15) with its own recorder confined to
the namespace's eth0 (netlab.node_recorder), both injecting: node a runs the clients (curl, a
Python client), node b the servers (nginx, plain and TLS; a Python http.server), so every
connection is node a's to mark and node b must leave it alone. tcpdump on the bridge port in front of node b is the wire
between them.

Oracles: the servers' own logs and the clients' own output (statuses, bytes, digests of a large
download and of an upload); tshark on the capture (which packets carry option 136, its bytes,
the IPv4 header checksum); the injector's counters against the packets tshark counted.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

import flowtape
from conftest import run_cli
from ebpf_support import ebpf_host, require_ebpf  # noqa: F401  (fixture)
from flowtape.writer import TapeWriter
from netlab import Host, Lab, access_log, make_cert, node_recorder, start_nginx_l7

pytestmark = [pytest.mark.ebpf, pytest.mark.slow, require_ebpf()]

BIG = bytes((i * 7919) % 251 for i in range(20_000_000))
UPLOAD_BYTES = 3_000_000
FULL_SEGMENTS = 20

SERVER = r"""
import hashlib, http.server, json, sys, threading
log_path = sys.argv[2]
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _log(self, status, n, digest):
        with lock, open(log_path, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path, "status": status, "bytes": n, "sha256": digest,
                                "client_port": self.client_address[1]}) + "\n")
    def do_GET(self):
        n = int(self.path.split("?", 1)[1])
        body = bytes(i % 251 for i in range(n))
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        self.wfile.write(body)
        self._log(200, n, hashlib.sha256(body).hexdigest())
    def do_POST(self):
        data = self.rfile.read(int(self.headers["Content-Length"]))
        digest = hashlib.sha256(data).hexdigest().encode()
        self.send_response(201)
        self.send_header("Content-Length", str(len(digest)))
        self.end_headers()
        self.wfile.write(digest)
        self._log(201, len(data), digest.decode())
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer((sys.argv[1], 8000), H)
print("ready", flush=True)
srv.serve_forever()
"""

CLIENT = r"""
import hashlib, http.client, json, os, sys
host, n_get, n_post, n_full = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
c = http.client.HTTPConnection(host, 8000)
c.connect()
port = c.sock.getsockname()[1]
out = []
c.request("GET", "/blob?%d" % n_get)
r = c.getresponse()
body = r.read()
out.append({"method": "GET", "status": r.status, "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(), "client_port": port})
data = os.urandom(n_post)
c.request("POST", "/upload", body=data, headers={"Content-Type": "application/octet-stream"})
r = c.getresponse()
answer = r.read().decode()
out.append({"method": "POST", "status": r.status, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "answer": answer,
            "client_port": port})
# a body sent one full-size segment at a time (no GSO packet to shrink): these cannot take 20 bytes more
import socket, time
c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
mss = c.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
data = os.urandom(mss * n_full)
c.putrequest("POST", "/upload")
c.putheader("Content-Length", str(len(data)))
c.endheaders()
time.sleep(0.05)
for i in range(n_full):
    c.sock.sendall(data[i * mss:(i + 1) * mss])
    time.sleep(0.01)
r = c.getresponse()
answer = r.read().decode()
out.append({"method": "POST", "status": r.status, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "answer": answer,
            "client_port": port, "mss": mss})
print(json.dumps(out), flush=True)
"""

# Connections that carry a trace context of their own, which the injector must leave alone:
# node a's socket with IP_OPTIONS (option 136 with the application's id, set as root: the kernel
# takes unknown options from CAP_NET_RAW), and a server on node b whose answers carry one.
FOREIGN_CLIENT = r"""
import socket, sys
dst, own = sys.argv[1], bytes.fromhex(sys.argv[2])
def get(port, opts=None):
    s = socket.socket()
    if opts:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, opts)
    s.connect((dst, port))
    s.sendall(b"GET /f100 HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
    got = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        got += d
    port_used = s.getsockname()[1]
    s.close()
    return port_used, got.split(b" ", 2)[1].decode(), len(got)
print(*get(80, bytes([136, 20]) + own + b"\0\0"), *get(8001), flush=True)
"""
FOREIGN_SERVER = r"""
import socket, sys
peer_opts = bytes([136, 20]) + bytes.fromhex(sys.argv[2]) + b"\0\0"
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], 8001))
ls.listen()
print("ready", flush=True)
while True:
    c, _ = ls.accept()
    c.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, peer_opts)   # every answer carries it
    req = b""
    while b"\r\n\r\n" not in req:
        req += c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    c.close()
"""
OWN_ID, PEER_ID = "0af7651916cd43dd8448eb211c80319c", "4bf92f3577b34da6a3ce929d0e0e4736"

CURL_W = "%{http_code} %{size_download} %{size_header} %{local_port}\\n"


def curl(host, *urls: str, extra: tuple[str, ...] = ()) -> list[dict]:
    """curl on `host` asking `urls` over one kept-alive connection; one dict per response."""
    argv = ["curl", "-s", "--http1.1", *extra]
    for u in urls:
        argv += ["-o", "/dev/null", "-w", CURL_W, u]
    out = host.run(argv).stdout.decode().split()
    return [{"status": int(out[i]), "body": int(out[i + 1]), "head": int(out[i + 2]), "port": int(out[i + 3])} for i in range(0, len(out), 4)]


def packets_from(pcap: Path, src_ip: str, numbered: bool = False) -> list:
    """TCP packets from src_ip as tshark dissects them: ports, IP header length, option 136's bytes
    (empty when absent) and the IPv4 header checksum's status (1: good). numbered: (frame number,
    packet) pairs, the capture's order."""
    argv = ["tshark", "-n", "-r", str(pcap), "-o", "ip.check_checksum:TRUE", "-Y", f"ip.src == {src_ip} && tcp",
            "-T", "fields", "-E", "separator=\t", "-E", "occurrence=f",
            "-e", "frame.number", "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "ip.hdr_len", "-e", "ip.opt.type", "-e", "ip.options.sid", "-e", "ip.checksum.status",
            "-e", "ip.len"]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        n, *f = line.split("\t")
        p = {"sport": int(f[0]), "dport": int(f[1]), "hdr_len": int(f[2]), "opt_type": f[3], "opt": f[4], "csum": f[5], "len": int(f[6])}
        rows.append((int(n), p) if numbered else p)
    return rows


@pytest.fixture(scope="module")
def two_nodes(ebpf_host, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("inject")
    with Lab() as lab:
        b, a = lab.add_host("b"), lab.add_host("a")
        www = lab.www({"f100": b"x" * 100, "big": BIG})
        cert = make_cert(lab.workdir, ["b.lab.test"])
        nginx, _ = start_nginx_l7(b, www, tls=cert)
        (lab.workdir / "server.py").write_text(SERVER)
        slog = lab.workdir / "server.jsonl"
        py = b.popen(["python3", str(lab.workdir / "server.py"), b.ip, str(slog)], stdout=subprocess.PIPE, text=True)
        assert py.stdout.readline().strip() == "ready"
        (lab.workdir / "client.py").write_text(CLIENT)
        (lab.workdir / "fserver.py").write_text(FOREIGN_SERVER)
        (lab.workdir / "fclient.py").write_text(FOREIGN_CLIENT)
        fsrv = b.popen(["python3", str(lab.workdir / "fserver.py"), b.ip, PEER_ID], stdout=subprocess.PIPE, text=True)
        assert fsrv.stdout.readline().strip() == "ready"
        tape_a, tape_b = work / "a.tape", work / "b.tape"
        out: dict = {"a": a, "b": b, "tape_a": tape_a, "tape_b": tape_b, "work": work}
        common = ["--interfaces", "eth0", "--no-k8s", "--flow-interval", "1"]
        with node_recorder(a, ["-o", str(tape_a), "--node", "node-a", "--inject-trace-context", "ip-option", *common]), \
             node_recorder(b, ["-o", str(tape_b), "--node", "node-b", "--inject-trace-context", "ip-option", *common]):
            with lab.capture([b.host_if], snaplen=128) as pcaps:
                out["plain"] = curl(a, *(f"http://{b.ip}/{p}" for p in ("f100", "moved", "boom", "missing", "f100")))
                big = work / "big.out"
                got = a.run(["curl", "-s", "--http1.1", "-o", str(big), "-w", CURL_W, f"http://{b.ip}/big"]).stdout.decode().split()
                out["big"] = {"status": int(got[0]), "body": int(got[1]), "head": int(got[2]), "port": int(got[3]),
                              "sha256": hashlib.sha256(big.read_bytes()).hexdigest()}
                out["tls"] = curl(a, *(f"https://{b.ip}/f100" for _ in range(3)), extra=("-k",))
                r = a.run(["python3", str(lab.workdir / "client.py"), b.ip, "1000000", str(UPLOAD_BYTES), str(FULL_SEGMENTS)])
                out["py"] = json.loads(r.stdout)
                f = a.run(["python3", str(lab.workdir / "fclient.py"), b.ip, OWN_ID]).stdout.decode().split()
                out["foreign"] = {"own_port": int(f[0]), "own_status": f[1], "peer_port": int(f[3]), "peer_status": f[4]}
                time.sleep(1.5)  # tcpdump writes the last packets within a second
            out["pcap"] = work / "b.pcap"
            out["pcap"].write_bytes(pcaps[b.host_if].read_bytes())
        out["access"] = access_log(lab.workdir)
        out["access_tls"] = access_log(lab.workdir, tls=True)
        out["server_log"] = [json.loads(x) for x in slog.read_text().splitlines()]
        py.kill()
        fsrv.kill()
        nginx.kill()
    return out


def test_traffic_still_flows(two_nodes):
    """nginx, curl, a Python server and client exchange what they would without injection."""
    t = two_nodes
    plain = t["plain"]
    assert [r["status"] for r in plain] == [200, 301, 500, 404, 200]
    access = t["access"]
    # nginx's log: the same statuses, and every byte it sent is what curl received (heads + bodies)
    access = [x for x in access if x["remote_port"] != t["foreign"]["own_port"]]  # the foreign-context GET (checked below)
    assert [(x["status"], x["bytes_sent"]) for x in access] == [(r["status"], r["head"] + r["body"]) for r in [*plain, t["big"]]]
    assert plain[0]["body"] == 100
    big = t["big"]
    assert big["status"] == 200 and big["body"] == len(BIG) and big["sha256"] == hashlib.sha256(BIG).hexdigest()
    tls = t["tls"]
    assert [r["status"] for r in tls] == [200] * 3 and [r["body"] for r in tls] == [100] * 3
    assert [(x["status"], x["bytes_sent"]) for x in t["access_tls"]] == [(r["status"], r["head"] + r["body"]) for r in tls]
    # the Python pair: statuses, sizes and digests on both ends (the upload's digest as the server computed it)
    got = [{k: x[k] for k in ("method", "status", "bytes", "sha256", "client_port")} for x in t["py"]]
    assert got == [{k: x[k] for k in ("method", "status", "bytes", "sha256", "client_port")} for x in t["server_log"]]
    assert t["foreign"]["own_status"] == t["foreign"]["peer_status"] == "200"
    assert [x["status"] for x in t["access"] if x["remote_port"] == t["foreign"]["own_port"]] == [200]
    assert [x["answer"] for x in t["py"][1:]] == [x["sha256"] for x in t["py"][1:]] and t["py"][0]["bytes"] == 1_000_000


def test_far_side_wire_carries_the_ids_the_near_side_wrote(two_nodes):
    t = two_nodes
    a, b = t["a"], t["b"]
    everything = packets_from(t["pcap"], a.ip)
    fo = t["foreign"]
    # the connection that carries the application's own option 136: every packet keeps it, unchanged
    own = [p for p in everything if p["sport"] == fo["own_port"]]
    assert len(own) >= 5 and all(p["hdr_len"] == 40 and p["opt"] == "8814" + OWN_ID + "0000" for p in own)
    # the connection whose peer sends one: ours until the peer's first answer, none after it
    mine = [(i, p) for i, p in packets_from(t["pcap"], a.ip, numbered=True) if p["sport"] == fo["peer_port"]]
    peer = packets_from(t["pcap"], b.ip, numbered=True)
    first_answer = min(i for i, p in peer if p["dport"] == fo["peer_port"] and p["opt"] == "8814" + PEER_ID + "0000")
    before = [p for i, p in mine if i < first_answer]
    after = [p for i, p in mine if i > first_answer]
    assert before and all(p["hdr_len"] == 40 for p in before) and len({p["opt"] for p in before}) == 1
    assert after and all(p["hdr_len"] == 20 for p in after)
    pkts = [p for p in everything if p["sport"] not in (fo["own_port"], fo["peer_port"])]
    assert pkts
    injected = [p for p in pkts if p["hdr_len"] == 40]
    plain = [p for p in pkts if p["hdr_len"] == 20]
    assert len(injected) + len(plain) == len(pkts)
    for p in injected:
        assert p["opt_type"] == "136" and p["opt"][:4] == "8814" and p["opt"][-4:] == "0000" and len(p["opt"]) == 40, p
        assert p["csum"] == "1", p  # the header checksum was computed again
    # the packets without it are the full-size segments sent one at a time (the client's last upload): 20
    # bytes more would pass the MTU of 1500. Bulk data leaves TCP as GSO packets, whose segment size the
    # injector lowers by 20: those all carry it
    assert len(plain) >= FULL_SEGMENTS // 2 and all(p["len"] + 20 > 1500 for p in plain)
    # one id per connection, the same on every one of its packets
    ids: dict[int, set[str]] = defaultdict(set)
    for p in injected:
        ids[p["sport"]].add(p["opt"][4:36])
    assert all(len(v) == 1 for v in ids.values())
    wire = {port: next(iter(v)) for port, v in ids.items()}
    assert len(set(wire.values())) == len(wire)
    ports = {*(r["port"] for r in t["plain"]), t["big"]["port"], t["tls"][0]["port"], t["py"][0]["client_port"]}
    assert ports <= set(wire)

    # the injector's counters are the packets tshark saw
    m_a = flowtape.open(t["tape_a"]).manifest
    ctr = m_a["extra"]["inject"]
    assert ctr["inject.injected_wire_packets"] == len(injected) + len(before)
    assert ctr["inject.injected_packets"] <= len(injected)  # GSO packets count once there
    assert ctr["inject.skipped_mtu"] == len(plain)
    assert ctr["inject.connections"] == len(wire) + 1  # the one whose peer sends a context was given one first
    assert ctr["inject.skipped_foreign"] == len(own) + len(after)
    assert ctr["inject.skipped_other"] == ctr["inject.map_full"] == 0
    assert not any(k.startswith("inject.") for k in m_a["lost"]["node-a"])  # packets sent unchanged lose nothing from the tape
    assert m_a["settings"]["inject_trace_context"] == "ip-option" and m_a["probes"]["inject"]["mode"] == "ip-option"
    assert m_a["probes"]["inject"]["interfaces"] == {"eth0": "injected on egress"}
    # node b injects too, as a cluster whose every node runs it would: every connection here already
    # carries node a's id (or the application's) when node b sends its first packet, so node b
    # writes nothing and counts each of its packets as skipped
    m_b = flowtape.open(t["tape_b"]).manifest
    ctr_b = m_b["extra"]["inject"]
    assert m_b["settings"]["inject_trace_context"] == "ip-option"
    from_b = packets_from(t["pcap"], b.ip)
    assert {p["hdr_len"] for p in from_b if p["dport"] != fo["peer_port"]} == {20}
    assert ctr_b["inject.injected_packets"] == ctr_b["inject.connections"] == 0 and ctr_b["inject.skipped_foreign"] == len(from_b)

    # both recorders wrote those ids: node a (what it sent, read by its l7 after the injector) and
    # node b (what arrived): wire_trace_context rows and the connections' wire_trace_id
    sent = {**wire, fo["own_port"]: OWN_ID, fo["peer_port"]: before[0]["opt"][4:36]}
    for tape, node in ((t["tape_a"], "node-a"), (t["tape_b"], "node-b")):
        tp = flowtape.open(tape)
        rows = tp.sql(f"SELECT src_port, trace_id, source, node FROM wire_trace_context WHERE src_ip = '{a.ip}' AND dst_ip = '{b.ip}'").fetchall()
        assert {r[0]: r[1] for r in rows} == sent, node
        assert {r[2] for r in rows} == {"ip-option"} and {r[3] for r in rows} == {node}
        # node b injects nothing: the only context from b is the one its application set
        assert tp.sql(f"SELECT dst_port, trace_id FROM wire_trace_context WHERE src_ip = '{b.ip}'").fetchall() == [(fo["peer_port"], PEER_ID)]
        side = "client" if node == "node-a" else "server"
        conns = tp.sql(f"""SELECT client_port, wire_trace_id, wire_trace_source FROM connections
                           WHERE role = '{side}' AND client_ip = '{a.ip}' AND server_ip = '{b.ip}'""").fetchall()
        assert {r[0]: r[1] for r in conns} == sent and {r[2] for r in conns} == {"ip-option"}
    # the same span id (OBI's: seq and ack of the first packet either side saw with it) on both sides
    span = lambda tape: dict(flowtape.open(tape).sql(  # noqa: E731
        f"SELECT src_port, span_id FROM wire_trace_context WHERE src_ip = '{a.ip}'").fetchall())
    assert span(t["tape_a"]) == span(t["tape_b"])


def two_node_tape(t: dict, out: Path) -> Path:
    """What two real nodes would have written: node a's client rows, node b's server rows. On one
    kernel each recorder also sees the other namespace's sockets (tracepoints and uprobes are not
    per namespace), so each tape holds both sides; the other side's rows are left out here."""
    a, b = t["a"], t["b"]
    lab = f"client_ip = '{a.ip}' AND server_ip = '{b.ip}'"
    with TapeWriter(out, node="node-a") as w:
        for tape, node, side in ((t["tape_a"], "node-a", "client"), (t["tape_b"], "node-b", "server")):
            tp = flowtape.open(tape)
            w.append("connections", tp.sql(f"SELECT * EXCLUDE (node) FROM connections WHERE role = '{side}' AND {lab}").pl(), node=node)
            w.append("http", tp.sql(f"SELECT * EXCLUDE (node) FROM http WHERE side = '{side}' AND {lab}").pl(), node=node)
            w.append("wire_trace_context", tp.sql(f"SELECT * EXCLUDE (node) FROM wire_trace_context WHERE src_ip = '{a.ip}'").pl(), node=node)
    return out


def test_traces_link_the_two_nodes_through_the_injected_id(two_nodes, tmp_path):
    t = two_nodes
    tape = two_node_tape(t, tmp_path / "two.tape")
    r = run_cli("report", "traces", str(tape), "-f", "json")
    assert r.code == 0, r.err
    spans = json.loads(r.out)
    by_node = Counter((s["node"], s["kind"]) for s in spans)
    n = len(t["plain"]) + 1 + len(t["tls"]) + len(t["py"]) + 2  # + the two foreign-context GETs
    assert by_node == {("node-a", "client"): n, ("node-b", "server"): n}
    ids = {s["span_id"]: s for s in spans}
    wire = dict(flowtape.open(t["tape_a"]).sql(
        f"SELECT client_port, wire_trace_id FROM connections WHERE role = 'client' AND server_ip = '{t['b'].ip}'").fetchall())
    tls_port = t["tls"][0]["port"]
    for s in spans:
        if s["kind"] != "server":
            continue
        parent = ids[s["parent_span_id"]]
        assert parent["node"] == "node-a" and parent["path"] == s["path"] and parent["status"] == s["status"]
        # the trace id of the tree that spans both nodes is the one node a wrote into the packets
        assert s["trace_id"] == parent["trace_id"] and s["trace_id"] in set(wire.values())
        # TLS exchanges have no request_seq: the injected id is what links them; plain HTTP links by the
        # (more exact) TCP sequence numbers
        if s["path"] == "/f100" and s["status"] == 200 and s["trace_id"] == wire[tls_port]:
            assert s["source"] == "ip-option", s
        else:
            assert s["source"] == "tcp-seq", s
    assert sum(1 for s in spans if s["source"] == "ip-option") == len(t["tls"])


def test_off_by_default_writes_nothing(ebpf_host, tmp_path):  # noqa: F811
    """Without the flag the recorder changes no packet: no IPv4 option on the wire, no context read."""
    with Lab() as lab:
        b, a = lab.add_host("b"), lab.add_host("a")
        www = lab.www({"f100": b"x" * 100})
        nginx, _ = start_nginx_l7(b, www)
        tape = tmp_path / "a.tape"
        with node_recorder(a, ["-o", str(tape), "--node", "node-a", "--interfaces", "eth0", "--no-k8s", "--flow-interval", "1"]):
            with lab.capture([b.host_if], snaplen=128) as pcaps:
                got = curl(a, *(f"http://{b.ip}/f100" for _ in range(5)))
                time.sleep(1.5)
            pkts = packets_from(pcaps[b.host_if], a.ip)
        nginx.kill()
    assert [r["status"] for r in got] == [200] * 5
    assert len(pkts) >= 10 and {p["hdr_len"] for p in pkts} == {20}
    tp = flowtape.open(tape)
    assert tp.manifest["settings"]["inject_trace_context"] == "off" and "inject" not in tp.manifest["probes"]
    assert "inject" not in tp.manifest["extra"] and not any(k.startswith("inject.") for k in tp.manifest["lost"]["node-a"])
    assert not tp.sql(f"SELECT 1 FROM wire_trace_context WHERE src_ip = '{a.ip}'").fetchall()
    assert not any("ft_inject" in name for name in tp.manifest["extra"]["bpf_programs"])


def test_pod_traffic_is_injected_when_the_uplink_alone_is_covered(ebpf_host, tmp_path):  # noqa: F811
    """A "pod" (a namespace routed through node a, as a CNI does) talks to node b. Its packets
    enter node a through the pod's veth: with every interface covered they were taken there (by
    l7 and flows), before anything could know they leave the node, and the injector leaves them
    alone; with `--interfaces eth0` the veth is not covered, they are taken at eth0's egress, and
    injected there (and recorded by node a's l7 as they leave)."""
    with Lab() as lab:
        b, a = lab.add_host("b"), lab.add_host("a")
        www = lab.www({"f100": b"x" * 100})
        nginx, _ = start_nginx_l7(b, www)
        pod_ns, veth_node, veth_pod = f"ft{lab.tag}-pod", f"ftq{lab.tag}", f"ftr{lab.tag}"
        net = lab.net.replace("198.18.", "198.19.")  # the pod network: still inside 198.18.0.0/15
        node_ip, pod_ip = f"{net}.1", f"{net}.2"
        subprocess.run(["ip", "netns", "add", pod_ns], check=True)
        try:
            pod = Host(lab, "pod", pod_ns, pod_ip, "")
            a.run(["ip", "link", "add", veth_node, "type", "veth", "peer", "name", veth_pod])
            a.run(["ip", "link", "set", veth_pod, "netns", pod_ns])
            a.run(["ip", "addr", "add", f"{node_ip}/30", "dev", veth_node])
            a.run(["ip", "link", "set", veth_node, "up"])
            a.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            pod.run(["ip", "addr", "add", f"{pod_ip}/30", "dev", veth_pod])
            pod.run(["ip", "link", "set", veth_pod, "up"])
            pod.run(["ip", "link", "set", "lo", "up"])
            pod.run(["ip", "route", "add", "default", "via", node_ip])
            b.run(["ip", "route", "add", f"{net}.0/30", "via", a.ip])
            seen = {}
            for name, ifaces in (("all", []), ("uplink", ["--interfaces", "eth0"])):
                tape = tmp_path / f"{name}.tape"
                with node_recorder(a, ["-o", str(tape), "--node", "node-a", "--no-k8s", "--inject-trace-context", "ip-option", *ifaces]):
                    with lab.capture([b.host_if], snaplen=128) as pcaps:
                        got = curl(pod, *(f"http://{b.ip}/f100" for _ in range(3)))
                        time.sleep(1.5)
                    pkts = packets_from(pcaps[b.host_if], pod_ip)
                assert [r["status"] for r in got] == [200] * 3
                tp = flowtape.open(tape)
                seen[name] = (pkts, dict(tp.sql(f"SELECT src_port, trace_id FROM wire_trace_context WHERE src_ip = '{pod_ip}'").fetchall()),
                              tp.manifest["extra"]["inject"])
        finally:
            subprocess.run(["ip", "netns", "del", pod_ns], capture_output=True)
            nginx.kill()
    pkts, recorded, ctr = seen["all"]
    assert len(pkts) >= 6 and {p["hdr_len"] for p in pkts} == {20} and not recorded and ctr["inject.connections"] == 0
    pkts, recorded, ctr = seen["uplink"]
    assert len(pkts) >= 6 and {p["hdr_len"] for p in pkts} == {40}
    ids = {p["sport"]: p["opt"][4:36] for p in pkts}
    assert recorded == ids and ctr["inject.connections"] == len(ids) and ctr["inject.injected_wire_packets"] == len(pkts)
