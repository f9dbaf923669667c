"""`flowtape import pcap` on real traffic captured in the test, against tshark on the same files.

In a namespace lab (198.18.0.0/15): nginx (plain HTTP with keep-alive, a 2 MB download, a POST,
a 404; TLS with SNI), dnsmasq asked by dig over UDP and TCP, a connect to a closed port (refused)
and one whose SYN-ACKs are blackholed (timeout). tcpdump captures it twice at once: on the client's
bridge port (Ethernet) and on `any` (Linux cooked v2, which sees each packet on the client's veth,
the bridge and the server's veth). Oracles: tshark on the Ethernet capture (streams, payload bytes
in sequence space, frames, initial RTT, HTTP requests and responses, DNS, SNI, flows); the `any`
capture must give the same connections, exchanges and flows (a packet counts once per node).

Needs root (network namespaces) but no eBPF; under CI=true a skip is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import Counter, defaultdict

import pytest

from conftest import run_cli
from ebpf_support import skip_or_fail
from flowtape.capture.decode.http_pairing import redact_query
from netlab import Lab, make_cert, start_dnsmasq, start_nginx_l7
from test_import_pcap import fields, rows, tshark_streams

pytestmark = [pytest.mark.slow]
NAMES = ["a.lab.test"]


def lab_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "tcpdump", "tshark", "nginx", "curl", "dnsmasq", "dig", "openssl", "ethtool"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} is not installed (scripts/setup-host.sh installs it)"
    return None


@pytest.fixture(scope="module")
def lab_capture(tmp_path_factory):
    problem = lab_problem()
    if problem:
        skip_or_fail(problem)
    tmp = tmp_path_factory.mktemp("lab")
    with Lab() as lab:
        srv, cli = lab.add_host("srv"), lab.add_host("cli")
        www = lab.www({"f100": b"x" * 100, "big": os.urandom(2_000_000)})
        nginx, _ = start_nginx_l7(srv, www, tls=make_cert(lab.workdir, NAMES))
        dns = start_dnsmasq(srv, ["--local-ttl=300", "--local=/lab.test/", f"--host-record=a.lab.test,{srv.ip}", "--cname=c1.lab.test,a.lab.test"])
        lost_ip = f"{lab.net}.200"  # a second client address whose SYN-ACKs the server blackholes: a connect that times out
        cli.run(["ip", "addr", "add", f"{lost_ip}/24", "dev", "eth0"])
        srv.run(["ip", "route", "add", "blackhole", f"{lost_ip}/32"])
        body = tmp / "body"
        body.write_bytes(b"p" * 70_000)
        try:
            flt = ["host", srv.ip]
            with lab.capture([cli.host_if, "any"], snaplen=0, bpf_filter=flt) as pcaps:
                lost = cli.popen(["curl", "-s", "-o", "/dev/null", "--connect-timeout", "2", "--interface", lost_ip, f"http://{srv.ip}/f100"])
                started = time.monotonic()
                cli.run(["curl", "-s", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null", "-A", "lab/1",
                         f"http://{srv.ip}/f100", f"http://{srv.ip}/f100?token=secret", f"http://{srv.ip}/nope"])
                # (at a rate tcpdump -i any keeps up with on a busy 2-core machine: it sees each packet twice)
                cli.run(["curl", "-s", "-o", "/dev/null", "--limit-rate", "4M", f"http://{srv.ip}/big"])
                cli.run(["curl", "-s", "-o", "/dev/null", "--data-binary", f"@{body}", f"http://{srv.ip}/upload"])
                cli.run(["curl", "-sk", "-o", "/dev/null", "--resolve", f"a.lab.test:443:{srv.ip}", "https://a.lab.test/f100"])
                cli.run(["dig", "+tries=1", f"@{srv.ip}", "a.lab.test", "A"])
                cli.run(["dig", "+tries=1", "+tcp", f"@{srv.ip}", "c1.lab.test", "A"])
                cli.run(["curl", "-s", "-o", "/dev/null", f"http://{srv.ip}:81/"], check=False)
                lost.wait(timeout=30)
                # A capture has no end time of its own: its last packet is it. Traffic after the
                # timed-out connect's next retry would have been due shows that it gave up.
                time.sleep(max(0.0, 5.0 - (time.monotonic() - started)))
                cli.run(["dig", "+tries=1", f"@{srv.ip}", "nx.lab.test", "A"])
                time.sleep(1.5)  # tcpdump hands over a packet block when it fills or after a second
            keep = {}
            for name, p in pcaps.items():
                keep[name] = tmp / f"{'eth' if name != 'any' else 'any'}.pcap"
                shutil.copy(p, keep[name])
        finally:
            nginx.kill()
            dns.kill()
    eth, anyc = keep[cli.host_if], keep["any"]
    tapes = {}
    for name, path in (("eth", eth), ("any", anyc)):
        out = tmp / f"{name}.tape"
        r = run_cli("import", "pcap", path, "-o", out, "--node", "lab")
        assert r.code == 0, r.err
        tapes[name] = out
    return {"eth": eth, "any": anyc, "tapes": tapes, "srv": srv.ip, "cli": cli.ip, "lost": lost_ip, "link": subprocess.run(
        ["tcpdump", "-r", str(anyc), "-c", "1", "-n"], capture_output=True, text=True).stderr}


def test_the_any_capture_is_cooked_v2(lab_capture):
    assert "LINUX_SLL2" in lab_capture["link"]


def test_connections_match_tshark(lab_capture):
    r = lab_capture
    truth = tshark_streams(r["eth"])
    got = rows(r["tapes"]["eth"], "connections")
    clients = {(x["client_ip"], x["client_port"]): x for x in got if x["role"] == "client"}
    assert set(clients) == set(truth)
    for key, t in truth.items():
        c = clients[key]
        assert (c["bytes_sent"], c["bytes_received"]) == tuple(t["high"]), key
        assert (c["segs_sent"], c["segs_received"]) == tuple(t["frames"]), key
        if c["close_state"] != "refused":  # tshark's initial RTT of a refused connect is the RST's: no srtt here
            assert c["srtt_us"] == (int(t["rtt"] * 1e6) if t["rtt"] is not None else None), (key, c)
    states = {x["server_port"]: x["close_state"] for x in clients.values() if x["client_ip"] != r["lost"]}
    assert states[81] == "refused" and {states[p] for p in (80, 443, 53)} == {"closed"}
    lost = [x for x in clients.values() if x["client_ip"] == r["lost"]]
    assert [(x["close_state"], x["retransmits"] >= 1) for x in lost] == [("timeout", True)]
    servers = [x for x in got if x["role"] == "server"]
    assert len(servers) == len(clients) - 2  # no server socket for the refused and the timed-out connect
    big = max(clients.values(), key=lambda x: x["bytes_received"])
    assert big["bytes_received"] > 2_000_000 and big["retransmits"] == 0


def test_http_matches_tshark(lab_capture):
    r = lab_capture
    want: dict[int, list] = defaultdict(list)
    # Segments reach the capture point out of order now and then (the same microsecond, a later IP ID
    # first): tshark reassembles across that only when asked to; the importer always does.
    ooo = ("-o", "tcp.reassemble_out_of_order:TRUE")
    for port, method, uri in fields(r["eth"], ["tcp.srcport", "http.request.method", "http.request.uri"], "http.request", *ooo):
        want[int(port)] += [(m, redact_query(u)) for m, u in zip(method.split(","), uri.split(","))]
    codes: dict[int, list] = defaultdict(list)
    for port, code in fields(r["eth"], ["tcp.dstport", "http.response.code"], "http.response", *ooo):
        codes[int(port)] += [int(c) for c in code.split(",") if c != "100"]
    got = rows(r["tapes"]["eth"], "http", "where side = 'client' order by ts_request")
    mine: dict[int, list] = defaultdict(list)
    mine_codes: dict[int, list] = defaultdict(list)
    for x in got:
        mine[x["client_port"]].append((x["method"], x["path"]))
        mine_codes[x["client_port"]].append(x["status"])
    assert dict(mine) == dict(want) and dict(mine_codes) == dict(codes)
    assert sorted(x["status"] for x in got) == [200, 200, 200, 200, 404]
    big = [x for x in got if x["path"] == "/big"][0]
    assert big["response_bytes"] > 2_000_000 and big["request_bytes"] is not None
    assert [x for x in got if x["method"] == "POST"][0]["request_bytes"] > 70_000


def test_dns_and_tls_match_tshark(lab_capture):
    r = lab_capture
    q = fields(r["eth"], ["dns.id", "dns.qry.name", "dns.flags.response", "dns.flags.rcode", "dns.count.answers"], "dns")
    want = sorted((int(i, 16), n, int(rc), int(na)) for i, n, resp, rc, na in q if resp in ("1", "True"))
    got = sorted((x["txid"], x["qname"], x["rcode"], len(x["answers"])) for x in rows(r["tapes"]["eth"], "dns"))
    assert got == want and len(got) == 3
    sni = [s for (s,) in fields(r["eth"], ["tls.handshake.extensions_server_name"], "tls.handshake.type == 1")]
    assert [x["sni"] for x in rows(r["tapes"]["eth"], "tls")] == sni == ["a.lab.test"]


def test_flows_match_tshark(lab_capture):
    r = lab_capture
    want: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for src, dst, proto, ts, td, us, ud, length in fields(r["eth"], ["ip.src", "ip.dst", "ip.proto", "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport", "ip.len"], "ip"):
        sp, dp = (ts, td) if proto == "6" else (us, ud) if proto == "17" else ("", "")
        k = (src, dst, int(proto), int(sp) if sp else None, int(dp) if dp else None)
        want[k][0] += 1
        want[k][1] += int(length)
    got: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for x in rows(r["tapes"]["eth"], "flows"):
        k = (x["src_ip"], x["dst_ip"], x["ip_proto"], x["src_port"], x["dst_port"])
        got[k][0] += x["packets"]
        got[k][1] += x["bytes"]
    assert dict(got) == dict(want)


def late_sightings(pcap) -> Counter:
    """Per sender (ip, port): TCP payload segments first seen after one its sender sent later (a
    higher IP ID on the same connection), each packet counted at its first sighting."""
    seen: set = set()
    top: dict = {}
    late: Counter = Counter()
    for src, sport, dport, ipid, seq, n in fields(pcap, ["ip.src", "tcp.srcport", "tcp.dstport", "ip.id", "tcp.seq_raw", "tcp.len"], "tcp.len > 0"):
        if (src, ipid, seq) in seen:
            continue
        seen.add((src, ipid, seq))
        conn, i = (src, sport, dport), int(ipid, 16)
        if conn in top and 0 < (top[conn] - i) & 0xFFFF < 0x8000:  # (IP IDs wrap)
            late[(src, int(sport))] += 1
        elif conn not in top or (i - top[conn]) & 0xFFFF < 0x8000:
            top[conn] = i
    return late


def test_the_any_capture_gives_the_same_tape(lab_capture):
    """Each packet is in the `any` capture twice (the two veths; the bridge device sees only what is
    addressed to the host): counted once."""
    r = lab_capture
    same = {
        "connections": "select role, client_ip, client_port, server_ip, server_port, bytes_sent, bytes_received, segs_sent, segs_received, retransmits, close_state from connections",
        "http": "select side, client_port, method, path, status, request_bytes, response_bytes from http",
        "dns": "select txid, qname, rcode, answers from dns",
        "tls": "select client_port, sni, version, alpn from tls",
        "flows": "select src_ip, dst_ip, ip_proto, src_port, dst_port, sum(packets)::bigint, sum(bytes)::bigint from flows group by all",
    }
    import flowtape

    a, b = flowtape.open(r["tapes"]["eth"]), flowtape.open(r["tapes"]["any"])
    for name, sql in same.items():
        if name == "connections":
            # Retransmissions are judged from the order segments are first seen in. In `any` that order
            # is not always the order they were sent in (a burst's copies on two veths interleave): a
            # segment the server sent earlier (lower IP ID) seen after a later one is out of order there
            # and not on the bridge port. So the counts may differ by exactly that many segments, which
            # tshark's fields give; everything else is exact.
            ca, cb = sorted(a.sql(sql).fetchall()), sorted(b.sql(sql).fetchall())
            assert [x[:9] + x[10:] for x in ca] == [x[:9] + x[10:] for x in cb], name
            late = late_sightings(r["eth"]) + late_sightings(r["any"])
            for x, y in zip(ca, cb):
                side = (x[1], x[2]) if x[0] == "client" else (x[3], x[4])
                assert abs(x[9] - y[9]) <= late[side], (x, y, late[side])
            continue
        assert sorted(a.sql(sql).fetchall()) == sorted(b.sql(sql).fetchall()), name
    notes = b.manifest["extra"]["import"]["notes"]
    assert notes["duplicate_sightings"] >= sum(n for *_, n, _b in a.sql(same["flows"]).fetchall())
    assert {x["ifindex"] is not None for x in rows(r["tapes"]["any"], "flows")} == {True}
