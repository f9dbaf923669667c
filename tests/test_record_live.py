"""The live recorder against tshark on real traffic in a namespace lab (root + bcc needed).

One recording, many assertions: a prime number of TCP connections (23) with known payload
sizes both ways, from curl and a Python client to nginx, one refused connect, UDP exchanges
between namespaces and with the root namespace (across the bridge), and one connection
still open when the recorder stops. Ground truth: tcpdump on the bridge ports, read with
tshark. Every comparison is exact.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

import flowtape
from ebpf_support import ebpf_host, require_ebpf  # noqa: F401  (fixture)
from netlab import Lab, start_nginx, tshark_fields, tshark_tcp_conversations, wait_line

pytestmark = [pytest.mark.ebpf, pytest.mark.slow, require_ebpf()]

FLOWTAPE = str(Path(sys.executable).with_name("flowtape"))
CURL_SIZES = [0, 1, 100, 1000, 1460, 1461, 4096, 10000, 65535, 65536, 100000, 1 << 20]  # 12 curl connections
PY_PLAN = [("/f0", 0), ("/f1", 7), ("/f100", 1000), ("/f1000", 3000), ("/f1460", 1), ("/f4096", 20000),
           ("/f10000", 5), ("/f65535", 2), ("/f65536", 300), ("/f100000", 11)]  # 10 python connections (+1 held)
UDP_SIZES = [1, 10, 100, 500, 1000, 1472, 64]

CLIENT = r"""
import socket, sys, json
with open("/proc/self/comm", "w") as f:
    f.write("ftclient")
host, plan = sys.argv[1], json.loads(sys.argv[2])
for path, pad in plan:
    s = socket.create_connection((host, 80))
    s.sendall(("GET %s HTTP/1.1\r\nHost: lab\r\nConnection: close\r\nX-Pad: %s\r\n\r\n" % (path, "p" * pad)).encode())
    while s.recv(65536):
        pass
    s.close()
s = socket.create_connection((host, 80))
s.sendall(b"GET /f100 HTTP/1.1\r\nHost: lab\r\n\r\n")
s.recv(65536)  # the response arrived: the connection is established and idle
print("held", s.getsockname()[1], flush=True)
sys.stdin.readline()
s.close()
"""

UDP_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
for _ in range(int(sys.argv[3])):
    d, a = s.recvfrom(65536)
    s.sendto(d[: max(1, len(d) // 2)], a)
"""

UDP_CLIENT = r"""
import socket, sys, json
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
for host, port, size in json.loads(sys.argv[1]):
    s.sendto(b"u" * size, (host, port))
    s.recvfrom(65536)
"""


@pytest.fixture(scope="module")
def recording(ebpf_host, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("live")
    www = work / "www"
    www.mkdir()
    for n in CURL_SIZES:
        (www / f"f{n}").write_bytes(os.urandom(n))
    with Lab() as lab:
        srv, cli = lab.add_host("srv"), lab.add_host("cli")
        master, worker_pid = start_nginx(srv, www)
        tape = work / "live.tape"
        rec = subprocess.Popen([FLOWTAPE, "record", "-o", str(tape), "--interfaces", lab.bridge, "--flow-interval", "1", "--node", "lab-node"],
                               stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            wait_line(rec.stderr, "recording to")
            threading.Thread(target=lambda: [None for _ in rec.stderr], daemon=True).start()  # keep the pipe drained
            with lab.capture([cli.host_if, srv.host_if]) as pcaps:
                curl_pids = {}
                for n in CURL_SIZES:
                    p = cli.popen(["curl", "-s", "-o", "/dev/null", f"http://{srv.ip}/f{n}"])
                    curl_pids[p.pid] = n
                    assert p.wait(timeout=30) == 0
                refused = cli.popen(["curl", "-s", "-o", "/dev/null", f"http://{srv.ip}:81/"])
                refused.wait(timeout=30)
                py = cli.popen([sys.executable, "-c", CLIENT, srv.ip, json.dumps(PY_PLAN)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                held_port = int(wait_line(py.stdout, "held", 30).split()[1])
                # UDP: namespace <-> namespace, and namespace <-> root namespace across the bridge
                echo = srv.popen([sys.executable, "-c", UDP_ECHO, srv.ip, "9000", str(len(UDP_SIZES))], stdout=subprocess.PIPE, text=True)
                wait_line(echo.stdout, "ready")
                gw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                gw.bind((lab.gateway_ip, 9001))

                def gw_echo():
                    for _ in UDP_SIZES:
                        d, a = gw.recvfrom(65536)
                        gw.sendto(d[: max(1, len(d) // 2)], a)

                t = threading.Thread(target=gw_echo)
                t.start()
                plan = [[srv.ip, 9000, s] for s in UDP_SIZES] + [[lab.gateway_ip, 9001, s] for s in UDP_SIZES]
                cli.run([sys.executable, "-c", UDP_CLIENT, json.dumps(plan)], timeout=30)
                t.join(10)
                gw.close()
                echo.wait(timeout=10)
                time.sleep(1.0)  # last FIN/ACKs settle before the ground truth stops
            rec.send_signal(signal.SIGINT)
            assert rec.wait(timeout=60) == 0
        finally:
            if rec.poll() is None:
                rec.kill()
        py.stdin.write("\n")
        py.stdin.flush()
        py.wait(timeout=10)
        master.terminate()
        master.wait(timeout=10)
        yield {
            "tape": flowtape.open(str(tape)), "tape_path": tape, "lab": lab, "srv": srv, "cli": cli,
            "pcaps": {k: Path(v) for k, v in pcaps.items()}, "curl_pids": curl_pids, "refused_pid": refused.pid,
            "py_pid": py.pid, "held_port": held_port, "nginx_worker": worker_pid,
        }


def _rows(tape, query: str) -> list[dict]:
    return tape.sql(query).pl().to_dicts()


def _tcp_bytes(pcap: Path) -> dict[int, list[tuple[int, int, int, int]]]:
    """client port -> [(payload bytes client->server, server->client, packets tshark marked as
    retransmissions or out-of-order c->s, s->c) of each TCP stream] from tshark. Bytes are
    sequence space (highest relative seq + len - 1), not a sum of tcp.len: a retransmitted
    segment crosses the capture point twice but is one payload byte range. A list: an ephemeral
    port can be reused by a later connection in the same run."""
    streams: dict[int, list[int]] = defaultdict(lambda: [0, 1, 1, 0, 0])
    fields = ["tcp.stream", "tcp.srcport", "tcp.dstport", "tcp.seq", "tcp.len", "tcp.analysis.retransmission", "tcp.analysis.out_of_order"]
    for stream, src_port, dst_port, seq, length, retrans, ooo in tshark_fields(pcap, fields, "tcp"):
        st = streams[int(stream)]
        to_server = dst_port in ("80", "81")
        st[0] = int(src_port) if to_server else int(dst_port)
        d = 1 if to_server else 2
        if int(length):  # a FIN (and the ACKs after it) moves seq by one with no payload
            st[d] = max(st[d], int(seq) + int(length))
        if retrans or ooo:
            st[d + 2] += 1
    out: dict[int, list[tuple[int, int, int, int]]] = defaultdict(list)
    for port, c2s_end, s2c_end, c2s_marks, s2c_marks in streams.values():
        out[port].append((c2s_end - 1, s2c_end - 1, c2s_marks, s2c_marks))
    return dict(out)


def test_connection_count_matches_tshark(recording):
    r = recording
    tape, srv = r["tape"], r["srv"]
    conversations = tshark_tcp_conversations(r["pcaps"][r["cli"].host_if])
    assert conversations == 12 + 1 + 10 + 1  # curl, refused, python, held open
    clients = _rows(tape, f"select * from connections where role = 'client' and server_ip = '{srv.ip}'")
    servers = _rows(tape, f"select * from connections where role = 'server' and server_ip = '{srv.ip}'")
    assert len(clients) == conversations
    assert len(servers) == conversations - 1  # the refused one never reached a server socket
    assert len({c["conn_id"] for c in clients + servers}) == len(clients) + len(servers)


def test_bytes_each_way_match_tshark(recording):
    r = recording
    truth = _tcp_bytes(r["pcaps"][r["cli"].host_if])
    rows = _rows(r["tape"], f"select * from connections where server_ip = '{r['srv'].ip}' and close_state = 'closed'")
    assert len(rows) == 2 * 22  # 12 curl + 10 python, both ends
    for role in ("client", "server"):
        # each endpoint's (client->server, server->client) payload bytes equal one of tshark's
        # streams on that client port, one stream per endpoint (ports may be reused)
        left = {port: [t[:2] for t in v] for port, v in truth.items()}
        for row in (x for x in rows if x["role"] == role):
            got = (row["bytes_sent"], row["bytes_received"]) if role == "client" else (row["bytes_received"], row["bytes_sent"])
            assert got in left.get(row["client_port"], []), (row, truth.get(row["client_port"]))
            left[row["client_port"]].remove(got)
    for row in rows:
        assert row["ts_end"] is not None and row["segs_sent"] > 0
        got = (row["bytes_sent"], row["bytes_received"]) if row["role"] == "client" else (row["bytes_received"], row["bytes_sent"])
        stream = next(t for t in truth[row["client_port"]] if t[:2] == got)
        # every segment the kernel counts as retransmitted crossed the capture point after a copy
        # or a later segment did: tshark marks it a retransmission or out-of-order (the kernel
        # does not count tail loss probes, so fewer is possible)
        marked = stream[2] if row["role"] == "client" else stream[3]
        assert row["retransmits"] <= marked, (row, stream)
    # the payloads are the ones we asked for (response = headers + body of known size)
    bodies = sorted(r2["bytes_received"] for r2 in rows if r2["role"] == "client" and r2["pid"] in r["curl_pids"])
    assert all(b >= n for b, n in zip(bodies, sorted(r["curl_pids"].values())))


def test_pid_and_comm_are_the_real_processes(recording):
    r = recording
    rows = _rows(r["tape"], f"select * from connections where server_ip = '{r['srv'].ip}'")
    curl_rows = [x for x in rows if x["role"] == "client" and x["comm"] == "curl"]
    assert sorted(x["pid"] for x in curl_rows) == sorted(list(r["curl_pids"]) + [r["refused_pid"]])
    py_rows = [x for x in rows if x["role"] == "client" and x["comm"] == "ftclient"]
    assert len(py_rows) == 11 and {x["pid"] for x in py_rows} == {r["py_pid"]}
    servers = [x for x in rows if x["role"] == "server"]
    assert {(x["pid"], x["comm"]) for x in servers} == {(r["nginx_worker"], "nginx")}
    assert all(x["cgroup_id"] for x in rows)


def test_refused_connect_is_recorded_as_failed(recording):
    r = recording
    rows = _rows(r["tape"], "select * from connections where server_port = 81")
    assert len(rows) == 1
    (row,) = rows
    assert (row["role"], row["close_state"], row["pid"], row["comm"]) == ("client", "refused", r["refused_pid"], "curl")
    assert row["bytes_sent"] == 0 and row["bytes_received"] == 0 and row["connect_latency_ns"] is None


def test_connection_open_at_stop_has_null_end(recording):
    r = recording
    rows = _rows(r["tape"], f"select * from connections where client_port = {r['held_port']}")
    assert sorted(x["role"] for x in rows) == ["client", "server"]
    for x in rows:
        assert x["ts_end"] is None and x["close_state"] == "open"
    manifest = json.loads((r["tape_path"] / "manifest.json").read_text())
    assert manifest["complete"] is True


def _tshark_flows(pcap: Path) -> dict[tuple, list[int]]:
    flows: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    fields = ["ip.src", "ip.dst", "ip.proto", "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport", "ip.len"]
    for src, dst, proto, ts, td, us, ud, length in tshark_fields(pcap, fields):
        sport, dport = (ts, td) if proto == "6" else (us, ud) if proto == "17" else ("", "")
        key = (src, dst, int(proto), int(sport) if sport else None, int(dport) if dport else None)
        flows[key][0] += 1
        flows[key][1] += int(length)
    return dict(flows)


def _tape_flows(tape, ip: str) -> dict[tuple, list[int]]:
    rows = _rows(tape, f"select src_ip, dst_ip, ip_proto, src_port, dst_port, sum(packets)::bigint p, sum(bytes)::bigint b, count(distinct iface) n "
                       f"from flows where src_ip = '{ip}' or dst_ip = '{ip}' group by all")
    assert all(x["n"] == 1 for x in rows), "a flow direction was counted on two interfaces"
    return {(x["src_ip"], x["dst_ip"], x["ip_proto"], x["src_port"], x["dst_port"]): [x["p"], x["b"]] for x in rows}


def test_flows_packets_and_bytes_match_tshark(recording):
    r = recording
    for host in (r["cli"], r["srv"]):
        truth = _tshark_flows(r["pcaps"][host.host_if])
        got = _tape_flows(r["tape"], host.ip)
        # cli: 24 TCP connections x 2 directions + UDP with srv and with the root namespace (2 x 2);
        # srv: 23 + the refused SYN/RST pair, x 2 directions... i.e. 2 x 24, + UDP with cli (2).
        assert len(truth) == {r["cli"].ip: 52, r["srv"].ip: 50}[host.ip]
        assert got == truth


def test_each_packet_counted_once_per_node(recording):
    r = recording
    # cli <-> srv packets cross two bridge ports (both pcaps show them); the tape counts them once.
    cli, srv = r["cli"], r["srv"]
    on_cli = _tshark_flows(r["pcaps"][cli.host_if])
    between = {k: v for k, v in on_cli.items() if {k[0], k[1]} == {cli.ip, srv.ip}}
    rows = _rows(r["tape"], f"select iface, direction, sum(packets)::bigint p from flows where src_ip = '{cli.ip}' and dst_ip = '{srv.ip}' group by all")
    assert [(x["iface"], x["direction"]) for x in rows] == [(cli.host_if, "ingress")]
    assert rows[0]["p"] == sum(v[0] for k, v in between.items() if k[0] == cli.ip)
    # root namespace -> cli across the bridge: counted once, at the bridge's egress (no port
    # runs an egress program)
    rows = _rows(r["tape"], f"select iface, direction from flows where src_ip = '{r['lab'].gateway_ip}' group by all")
    assert rows == [{"iface": r["lab"].bridge, "direction": "egress"}]
    macs = _rows(r["tape"], f"select distinct src_mac from flows where src_ip = '{cli.ip}'")
    assert len(macs) == 1 and macs[0]["src_mac"].count(":") == 5
