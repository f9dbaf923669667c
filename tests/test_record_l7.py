"""The L7 recorder (dns, http, tls) against independent oracles on real traffic (root + bcc).

One recording, many assertions. In a namespace lab (198.18.0.0/15): nginx (plain and TLS, a
test certificate made by openssl, keep-alive) with a known mix of responses (200, 204, 301,
304, 404, 405, 500), driven by curl (several URLs per connection, --http1.1, HEAD, a chunked
POST), a Python client pipelining requests (plain and TLS, one head split across two
segments) and wrk (plain and TLS); dnsmasq with local records (A, AAAA, a CNAME chain,
NXDOMAIN) asked by dig over UDP and TCP; a burst of malformed DNS/HTTP/TLS packets sent with
raw sockets in the middle of it all.

Oracles: nginx's access log (every request, per connection, in order, with
$request_time), dig's printed answers and ids, curl's --resolve names, and the number of
packets we crafted. Every comparison is exact; latencies are checked against the bounds
nginx's own $request_time (millisecond resolution) gives.
"""

from __future__ import annotations

import ipaddress
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

import flowtape
from ebpf_support import ebpf_host, require_ebpf  # noqa: F401  (fixture)
from flowtape.capture.decode.http_pairing import redact_query
from netlab import H2_PORT, Lab, access_log, make_cert, start_dnsmasq, start_nginx_l7, wait_line

pytestmark = [pytest.mark.ebpf, pytest.mark.slow, require_ebpf()]

FLOWTAPE = str(Path(sys.executable).with_name("flowtape"))
NAMES = ["a.lab.test", "b.lab.test"]  # TLS names curl --resolve's (the certificate covers both)
N_BAD_DNS, N_BAD_HTTP, N_BAD_TLS = 7, 11, 5  # malformed packets sent with raw sockets

PIPELINE = r"""
import socket, ssl, sys, time
with open("/proc/self/comm", "w") as f:
    f.write("ftpipe")
host, use_tls = sys.argv[1], sys.argv[2] == "tls"
reqs = [("GET", "/f100"), ("HEAD", "/f100"), ("GET", "/nope"), ("GET", "/moved"), ("GET", "/empty"),
        ("GET", "/same"), ("GET", "/big"), ("GET", "/f100?q=secret&page=2"), ("GET", "/boom")]  # nginx closes after a 500
def conn():
    s = socket.create_connection((host, 443 if use_tls else 80))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if use_tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
        s = ctx.wrap_socket(s, server_hostname="b.lab.test")
    return s
def drain(s):
    while s.recv(65536):
        pass
    s.close()
# 1: every request in one write (pipelining); nginx closes after the last one (a 500)
s = conn()
s.sendall(b"".join(b"%s %s HTTP/1.1\r\nHost: lab\r\n\r\n" % (m.encode(), p.encode()) for m, p in reqs))
drain(s)
# 2: a request head split across two segments, then a closing request
s = conn()
s.sendall(b"GET /f100 HTTP/1.1\r\nHo")
time.sleep(0.2)
s.sendall(b"st: lab\r\nUser-Agent: split\r\n\r\n")
s.recv(65536)
s.sendall(b"GET /moved HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
drain(s)
"""

RAW = r"""
import socket, struct, sys
src, dst, n_dns, n_http, n_tls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
def ip(proto, payload):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, proto, 0, socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload
def udp(sport, dport, data):
    h = struct.pack("!HHHH", sport, dport, 8 + len(data), 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, 8 + len(data))
    c = csum(pseudo + h + data) or 0xFFFF
    return h[:6] + struct.pack("!H", c) + data
def tcp(sport, dport, data):
    h = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, 0x18, 65535, 0, 0)  # PSH|ACK
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, 20 + len(data))
    c = csum(pseudo + h + data)
    return h[:16] + struct.pack("!H", c) + h[18:] + data
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for i in range(n_dns):   # shorter than a DNS header (dnsmasq does not answer these)
    s.sendto(ip(17, udp(40000 + i, 53, bytes([i + 1]) * (3 + i % 8))), (dst, 0))
for i in range(n_http):  # a method, then bytes that are no request line
    s.sendto(ip(6, tcp(41000 + i, 80, b"GET \x00\x01\x02\xff junk\r\n\r\n")), (dst, 0))
for i in range(n_tls):   # a ClientHello whose lengths contradict each other
    s.sendto(ip(6, tcp(42000 + i, 443, bytes([0x16, 3, 1, 0, 8, 1, 0, 0, 4, 3, 3, 0, 0]))), (dst, 0))
print("sent", flush=True)
"""

DNS_QUERIES = [  # (name, type, transport)
    ("a.lab.test", "A", "udp"), ("a.lab.test", "AAAA", "udp"), ("c1.lab.test", "A", "udp"), ("nx.lab.test", "A", "udp"),
    ("a.lab.test", "A", "tcp"), ("a.lab.test", "AAAA", "tcp"), ("c1.lab.test", "A", "tcp"), ("nx.lab.test", "A", "tcp"),
    ("b.lab.test", "A", "udp"),
]


def parse_dig(out: str) -> dict:
    """id, status and answer records (name, type, ttl, data) from dig's default output."""
    head = re.search(r"status: (\w+), id: (\d+)", out)
    answers, in_answer = [], False
    for line in out.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            in_answer = True
            continue
        if in_answer:
            if not line.strip() or line.startswith(";;"):
                in_answer = False
                continue
            name, ttl, _cls, rtype, data = line.split(None, 4)
            answers.append((name.rstrip(".").lower(), rtype, int(ttl), _norm(rtype, data.strip())))
    return {"rcode_name": head.group(1), "txid": int(head.group(2)), "answers": answers}


def _norm(rtype: str, data: str) -> str:
    if rtype in ("A", "AAAA"):
        return str(ipaddress.ip_address(data))
    return data.rstrip(".").lower()


@pytest.fixture(scope="module")
def recording(ebpf_host, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("l7")
    with Lab() as lab:
        srv, cli = lab.add_host("srv"), lab.add_host("cli")
        www = lab.www({"f100": b"x" * 100, "big": b"y" * 100_000})  # big: a body of many segments
        cert = make_cert(lab.workdir, NAMES)
        master, workers = start_nginx_l7(srv, www, tls=cert)
        dns = start_dnsmasq(srv, ["--local-ttl=300", "--local=/lab.test/", f"--host-record=a.lab.test,{srv.ip},2001:db8::5",
                                  f"--host-record=b.lab.test,{srv.ip}", "--cname=c1.lab.test,c2.lab.test", "--cname=c2.lab.test,a.lab.test"])
        tape = work / "l7.tape"
        # the default probes (flows too): the TC programs of flows and l7 share each hook
        rec = subprocess.Popen([FLOWTAPE, "record", "-o", str(tape), "--interfaces", lab.bridge,
                                "--node", "lab-node", "--no-k8s"], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        status: list[str] = []
        try:
            wait_line(rec.stderr, "recording to", timeout=120)
            threading.Thread(target=lambda: status.extend(rec.stderr), daemon=True).start()
            base, tls_base = f"http://{srv.ip}", "https://a.lab.test"
            resolve = [a for n in NAMES for a in ("--resolve", f"{n}:443:{srv.ip}")]
            curl_runs = [
                [f"{base}/f100", f"{base}/moved", f"{base}/nope", f"{base}/boom", f"{base}/empty", f"{base}/big"],
                ["--http1.1", f"{base}/f100?token=secret", f"{base}/same", f"{base}/f100"],
                ["-I", f"{base}/f100", f"{base}/nope"],
                ["-H", "Transfer-Encoding: chunked", "--data-binary", "@" + str(www / "f100"), f"{base}/f100"],
                ["-k", *resolve, f"{tls_base}/f100", f"{tls_base}/moved", f"{tls_base}/nope", f"{tls_base}/boom", f"{tls_base}/big"],
                ["-k", "--http1.1", *resolve, "https://b.lab.test/f100?token=secret", "https://b.lab.test/empty", "https://b.lab.test/same"],
                ["-k", "-I", *resolve, f"{tls_base}/f100"],
                # HTTP/2 (ALPN h2): rows from both ends' plaintext
                ["-k", "--http2", "--resolve", f"{NAMES[0]}:{H2_PORT}:{srv.ip}", f"https://{NAMES[0]}:{H2_PORT}/f100", f"https://{NAMES[0]}:{H2_PORT}/nope"],
            ]
            curl_pids = []
            for args in curl_runs:
                p = cli.popen(["curl", "-s", "-o", "/dev/null", *args], stdout=subprocess.DEVNULL)
                curl_pids.append(p.pid)
                assert p.wait(timeout=60) == 0
            digs = []
            for name, qtype, transport in DNS_QUERIES:
                argv = ["dig", f"@{srv.ip}", name, qtype] + (["+tcp"] if transport == "tcp" else [])
                digs.append((name, qtype, transport, parse_dig(cli.run(argv, timeout=30).stdout.decode())))
            raw = cli.run([sys.executable, "-c", RAW, cli.ip, srv.ip, str(N_BAD_DNS), str(N_BAD_HTTP), str(N_BAD_TLS)], timeout=30)
            assert b"sent" in raw.stdout
            for mode in ("plain", "tls"):
                cli.run([sys.executable, "-c", PIPELINE, srv.ip, mode], timeout=60)
            wrk_plain = cli.run(["wrk", "-t1", "-c4", "-d1s", f"{base}/f100"], timeout=60).stdout.decode()
            wrk_tls = cli.run(["wrk", "-t1", "-c4", "-d1s", f"https://{srv.ip}/f100"], timeout=60).stdout.decode()
            # the last responses settle before the stop (the recorder also drains at stop)
            time.sleep(1.5)
            mapped = {Path(line.split()[-1]).name for line in open(f"/proc/{rec.pid}/maps") if "/" in line}
            rec.send_signal(signal.SIGINT)
            assert rec.wait(timeout=120) == 0, "".join(status)
        finally:
            if rec.poll() is None:
                rec.kill()
            dns.terminate()
            master.terminate()
            master.wait(timeout=10)
        yield {
            "tape": flowtape.open(str(tape)), "tape_path": tape, "srv": srv, "cli": cli, "workers": workers,
            "plain_log": access_log(lab.workdir), "tls_log": access_log(lab.workdir, tls=True), "digs": digs,
            "h2_log": access_log(lab.workdir, name="access-h2.log"),
            "curl_pids": curl_pids, "wrk": (wrk_plain, wrk_tls), "status": "".join(status), "mapped": mapped,
        }


def test_the_recorder_never_loads_the_analysis_libraries(recording):
    """After every kind of row was written (dns, http, tls, flows, connections): no Polars or DuckDB
    in the recorder's process (they would hold ~27 MiB of its memory; docs/recorder.md)."""
    mapped = recording["mapped"]
    assert any("arrow" in name for name in mapped)  # the map was read: pyarrow's libraries are there
    assert not [name for name in mapped if "polars" in name or "duckdb" in name]


def _rows(tape, query: str) -> list[dict]:
    return tape.sql(query).pl().to_dicts()


def _log_by_conn(log: list[dict]) -> dict[int, list[tuple]]:
    out: dict[int, list[tuple]] = defaultdict(list)
    for x in sorted(log, key=lambda x: (x["remote_port"], x["connection_requests"])):
        out[x["remote_port"]].append((x["request_method"], redact_query(x["request_uri"]), x["status"]))
    return dict(out)


def _tape_by_conn(rows: list[dict]) -> dict[int, list[tuple]]:
    out: dict[int, list[tuple]] = defaultdict(list)
    for x in sorted(rows, key=lambda x: (x["client_port"], x["ts_request"])):
        out[x["client_port"]].append((x["method"], x["path"], x["status"]))
    return dict(out)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_server_side_rows_equal_nginx_access_log(recording, tls):
    r = recording
    log = r["tls_log" if tls else "plain_log"]
    rows = _rows(r["tape"], f"select * from http where side = 'server' and tls = {str(tls).lower()} and server_ip = '{r['srv'].ip}' and server_port <> {H2_PORT}")
    assert len(log) > 1000, "wrk drove a real rate"
    assert Counter((x["method"], x["path"], x["status"]) for x in rows) == \
        Counter((x["request_method"], redact_query(x["request_uri"]), x["status"]) for x in log)
    assert _tape_by_conn(rows) == _log_by_conn(log)  # per connection, in order
    assert {x["pid"] for x in rows} <= set(r["workers"]) and {x["comm"] for x in rows} == {"nginx"}


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_client_side_rows_equal_the_log_for_each_client(recording, tls):
    r = recording
    log = _log_by_conn(r["tls_log" if tls else "plain_log"])
    rows = _rows(r["tape"], f"select * from http where side = 'client' and tls = {str(tls).lower()} and server_ip = '{r['srv'].ip}' and server_port <> {H2_PORT}")
    by_comm: dict[str, list[dict]] = defaultdict(list)
    for x in rows:
        by_comm[x["comm"]].append(x)
    assert set(by_comm) == {"curl", "ftpipe", "wrk"}
    assert {x["pid"] for x in by_comm["curl"]} <= set(r["curl_pids"])
    for comm in ("curl", "ftpipe"):
        got = _tape_by_conn(by_comm[comm])
        assert got == {port: log[port] for port in got}
    # wrk stops with requests in flight: those it sent and nginx answered are on both sides
    wrk = _tape_by_conn([x for x in by_comm["wrk"] if x["status"] is not None])
    assert all(wrk[port] == log[port][: len(wrk[port])] for port in wrk)
    assert sum(len(v) for v in wrk.values()) >= sum(len(log[p]) for p in wrk) - len(wrk)


def test_http_rows_join_connections_and_paths_are_redacted(recording):
    r = recording
    t = r["tape"]
    orphans = _rows(t, "select h.* from http h left join connections c on h.conn_id = c.conn_id and h.side = c.role "
                       "and h.client_port = c.client_port where c.conn_id is null")
    assert orphans == []
    mismatched = _rows(t, "select h.side, h.pid, c.pid cpid from http h join connections c using (conn_id) where h.pid <> c.pid")
    assert mismatched == []
    paths = {x["path"] for x in _rows(t, "select distinct path from http")}
    assert "/f100?token=" in paths and "/f100?q=&page=" in paths
    assert not any("secret" in p for p in paths)
    split = _rows(t, "select * from http where user_agent = 'split'")
    # a head split across two segments, plain and TLS, seen by both sides
    assert sorted((x["side"], x["tls"], x["path"]) for x in split) == [(side, tls, "/f100") for side in ("client", "server") for tls in (False, True)]
    heads = _rows(t, "select * from http where method = 'HEAD' and side = 'server'")
    assert heads and all(x["status"] in (200, 404) and x["response_bytes"] is not None for x in heads), [
        (x["tls"], x["client_port"], x["status"], x["response_bytes"], x["comm"]) for x in heads]
    post = _rows(t, "select * from http where method = 'POST' and tls = false")
    assert {(x["side"], x["status"]) for x in post} == {("client", 405), ("server", 405)}
    assert all(x["request_bytes"] > 100 for x in post)  # head + chunked body with its framing


MS = 1_000_000
SLACK = 5 * MS  # millisecond resolution + nginx's cached clock (see the test's docstring)


def test_latency_within_nginx_request_time(recording):
    """nginx logs each request at its end ($msec) with its duration ($request_time), both with
    millisecond resolution from nginx's cached clock (up to one more millisecond stale). The
    first byte of the response left inside that window; for TLS, where both instants are taken
    inside nginx (SSL_read and SSL_write returning), the whole latency lies inside it too. On the
    wire (plain) the latency also holds the time the request waited before nginx read it.
    nginx's clock is refreshed once per event-loop pass, so it lags by what that pass did before
    (a TLS handshake's RSA signature is ~1-2 ms here): SLACK covers that on the curl and Python
    connections; under wrk's load a pass can take longer, so wrk's rows are checked for a
    positive latency only."""
    r = recording
    for tls, log in ((False, r["plain_log"]), (True, r["tls_log"])):
        rows = _rows(r["tape"], f"select client_port, ts_request, epoch_ns(ts_request) tq, epoch_ns(ts_response) tr, latency_ns "
                                f"from http where side = 'server' and tls = {str(tls).lower()}")
        got = _group(rows)
        n = 0
        for port, lines in _group_log(log).items():
            assert len(got[port]) == len(lines)
            for row, line in zip(got[port], lines):
                n += 1
                if len(lines) > 100:  # a wrk connection
                    assert row["latency_ns"] > 0
                    continue
                end = int(round(float(line["msec"]) * 1000)) * MS
                start = end - int(round(line["request_time"] * 1000)) * MS
                assert row["latency_ns"] > 0 and start - SLACK <= row["tr"] <= end + SLACK, (tls, port, row, line)
                if tls:
                    assert row["latency_ns"] <= end - start + SLACK, (port, row, line)
        assert n == len(log)


def _group(rows):
    out = defaultdict(list)
    for x in sorted(rows, key=lambda x: (x["client_port"], x["ts_request"])):
        out[x["client_port"]].append(x)
    return out


def _group_log(log):
    out = defaultdict(list)
    for x in sorted(log, key=lambda x: (x["remote_port"], x["connection_requests"])):
        out[x["remote_port"]].append(x)
    return out


def test_every_dns_query_once_with_the_answers_dig_printed(recording):
    r = recording
    rows = _rows(r["tape"], f"select * from dns where server_ip = '{r['srv'].ip}' order by ts_query")
    assert len(rows) == len(DNS_QUERIES)
    for (name, qtype, transport, dig), row in zip(r["digs"], rows):
        assert (row["qname"], row["qtype_name"], row["transport"], row["txid"], row["rcode_name"]) == (name, qtype, transport, dig["txid"], dig["rcode_name"])
        got = [(a["name"], a["type"], a["ttl"], _norm(a["type"], a["data"])) for a in row["answers"]]
        assert got == dig["answers"], (name, qtype, transport)
        assert row["latency_ns"] > 0 and row["client_ip"] == r["cli"].ip
    chain = next(x for x in rows if x["qname"] == "c1.lab.test")
    assert [a["type"] for a in chain["answers"]] == ["CNAME", "CNAME", "A"]
    assert {x["rcode"] for x in rows if x["qname"] == "nx.lab.test"} == {3}


def test_tls_table_has_every_connection_and_its_sni(recording):
    r = recording
    rows = _rows(r["tape"], f"select * from tls where server_ip = '{r['srv'].ip}' and server_port = 443")
    conns = {x["remote_port"] for x in r["tls_log"]}
    assert {x["client_port"] for x in rows} == conns and len(rows) == len(conns)
    snis = {x["sni"] for x in rows}
    assert set(NAMES) <= snis
    assert all(x["version"] == "TLS 1.3" for x in rows)
    assert {x["comm"] for x in rows} == {"curl", "ftpipe", "wrk"}


def test_http2_over_tls_rows_equal_the_h2_access_log(recording):
    r = recording
    h2_log = r["h2_log"]
    assert [(x["request_uri"], x["status"]) for x in h2_log] == [("/f100", 200), ("/nope", 404)]
    # curl's and nginx's plaintext (OpenSSL uprobes): one row per stream on each end
    rows = _rows(r["tape"], f"select * from http where server_port = {H2_PORT} order by side, stream_id")
    assert [(x["side"], x["stream_id"], x["method"], x["path"], x["status"], x["http_version"], x["tls"]) for x in rows] == [
        (side, sid, "GET", path, status, "HTTP/2", True) for side in ("client", "server") for sid, path, status in ((1, "/f100", 200), (3, "/nope", 404))]
    assert {x["comm"] for x in rows} == {"curl", "nginx"}
    (hello,) = _rows(r["tape"], f"select * from tls where server_port = {H2_PORT}")
    assert hello["sni"] == NAMES[0] and "h2" in hello["alpn"] and hello["comm"] == "curl"
    m = json.loads((r["tape_path"] / "manifest.json").read_text())
    assert m["extra"]["l7_decode_notes"]["http2_connections"] == 2, m["extra"]["l7_decode_notes"]


def test_malformed_packets_are_counted_and_the_recorder_kept_going(recording):
    r = recording
    m = json.loads((r["tape_path"] / "manifest.json").read_text())
    lost = m["lost"]["lab-node"]
    assert (lost["dns_malformed"], lost["http_malformed"], lost["tls_malformed"]) == (N_BAD_DNS, N_BAD_HTTP, N_BAD_TLS)
    for name in ("l7.ringbuf_full", "l7.flow_map_full", "l7.truncated", "l7.tls_plaintext_no_connection", "l7.http_no_endpoint", "l7.ssl_no_socket",
                 "http_orphan_responses", "dns_unmatched_answers", "dns_tcp_desync"):
        assert lost[name] == 0, (name, lost)
    assert m["complete"] is True
    assert m["redaction"]["query_strings"] == "values removed" and "host" in m["redaction"]["header_allow_list"]
    assert "l7" in m["probes"] and m["probes"]["l7"]["ssl_libs"]
    # everything above was decoded by capture/decode/_http1.c (the CI host builds it); the Python twin is
    # held to the same output by test_http1_differential and test_l7_fast_path
    assert m["probes"]["l7"]["http_decoder"] == "c"
