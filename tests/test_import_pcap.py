"""`flowtape import pcap` against tshark on the committed real captures, and on captures made in
code (formats, link types, TCP lives, damage). The compiled packet loop (_pcap.c) and its Python
reference (packet_loop.py) must write the same tape for every capture here.

The netns-lab test (real nginx, curl, dnsmasq, dig, tcpdump on the bridge) is
tests/test_import_pcap_lab.py.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest

import flowtape
from conftest import require_tool, run_cli
from flowtape.capture.decode.http_pairing import redact_query
from flowtape.capture.importers import pcap as pcap_import
from pcap_build import (ACK, RST, SYN, Conversation, bsd_loopback, cooked_v1, cooked_v2, dns_answer, dns_query, ethernet,
                        http_exchange_frames, ip_packet, tcp_segment, udp_datagram, write_pcap, write_pcapng)

DATA = Path(__file__).parent / "data"
TABLES = ("flows", "connections", "dns", "http", "tls")
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


@pytest.fixture(scope="module")
def tshark() -> str:
    return require_tool(("tshark",), "apt-get install tshark")


def fields(pcap: Path, names: list[str], flt: str, *extra: str) -> list[list[str]]:
    argv = ["tshark", "-n", "-r", str(pcap), *extra, "-Y", flt, "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=,"]
    for n in names:
        argv += ["-e", n]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def do_import(tmp: Path, files: list[Path], *args: str, loop: str = "c", monkeypatch=None, name: str = "t.tape") -> tuple[Path, str]:
    out = tmp / name
    if monkeypatch is not None:
        monkeypatch.setenv("FLOWTAPE_PCAP_LOOP", loop)
    r = run_cli("import", "pcap", *files, "-o", out, *args)
    assert r.code == 0, r.err
    return out, r.err


def rows(tape: Path, table: str, order: str = "") -> list[dict]:
    t = flowtape.open(tape)
    try:
        return t.sql(f"select * from {table} {order}").pl().to_dicts()
    finally:
        t.close()


def tape_content(tape: Path) -> dict[str, list]:
    """Every table's rows, sorted (the compiled loop may end connections in another order)."""
    t = flowtape.open(tape)
    try:
        return {n: sorted(map(repr, t.table(n).fetchall())) for n in TABLES}
    finally:
        t.close()


def both_loops(tmp: Path, files: list[Path], monkeypatch, *args: str) -> dict[str, list]:
    """Import with the compiled loop and with the Python reference; the tapes must be equal."""
    if pcap_import.loop_in_use() != "c" and pcap_import._pcap is None:
        pytest.fail("capture/importers/_pcap.c was not built (gcc and python3-dev are needed)")
    tmp = Path(tempfile.mkdtemp(dir=tmp))
    a, _ = do_import(tmp, files, *args, loop="c", monkeypatch=monkeypatch, name="c.tape")
    b, _ = do_import(tmp, files, *args, loop="python", monkeypatch=monkeypatch, name="py.tape")
    ca, cb = tape_content(a), tape_content(b)
    for n in TABLES:
        assert ca[n] == cb[n], f"{n}: the compiled and the Python loop disagree"
    ma, mb = (json.loads((x / "manifest.json").read_text()) for x in (a, b))
    assert ma["lost"] == mb["lost"] and ma["extra"]["import"]["problems"] == mb["extra"]["import"]["problems"]
    return ca


# --- the real seed captures against tshark ----------------------------------------------------------


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("seeds")
    out = tmp / "seeds.tape"
    r = run_cli("import", "pcap", DATA / "http.pcap", DATA / "tls.pcap", DATA / "dns.pcap", "--dns-port", "5353", "-o", out, "--node", "seed")
    assert r.code == 0, r.err
    return out


def tshark_streams(pcap: Path) -> dict[tuple, dict]:
    """Per TCP connection (client ip, client port): frames and payload bytes each way (sequence
    space: the highest relative sequence number a payload reaches, SYN and FIN not counted), initial RTT."""
    out: dict[tuple, dict] = {}
    for stream, src, sport, dst, dport, flags, seq, tlen, rtt in fields(
            pcap, ["tcp.stream", "ip.src", "tcp.srcport", "ip.dst", "tcp.dstport", "tcp.flags", "tcp.seq", "tcp.len", "tcp.analysis.initial_rtt"], "tcp"):
        flags = int(flags, 16)
        s = out.setdefault(stream, {"frames": [0, 0], "high": [0, 0], "rtt": None, "client": None})
        if s["client"] is None:
            s["client"] = (src, int(sport)) if flags & SYN and not flags & ACK else (dst, int(dport))
        d = 0 if (src, int(sport)) == s["client"] else 1
        s["frames"][d] += 1
        if int(tlen):
            # relative: data starts at 1 (not tcp.nxtseq, which also counts a FIN riding on the data)
            s["high"][d] = max(s["high"][d], int(seq) + int(tlen) - 1)
        if rtt:
            s["rtt"] = float(rtt)
    return {v["client"]: v for v in out.values()}


@pytest.mark.parametrize("name", ["http", "tls"])
def test_connections_match_tshark(seeds, tshark, name):
    truth = tshark_streams(DATA / f"{name}.pcap")
    port = 8080 if name == "http" else 8443
    got = [r for r in rows(seeds, "connections") if r["server_port"] == port]
    clients = [r for r in got if r["role"] == "client"]
    servers = {(r["client_ip"], r["client_port"]): r for r in got if r["role"] == "server"}
    assert sorted((r["client_ip"], r["client_port"]) for r in clients) == sorted(truth)
    for c in clients:
        t = truth[(c["client_ip"], c["client_port"])]
        s = servers[(c["client_ip"], c["client_port"])]
        assert (c["bytes_sent"], c["bytes_received"]) == tuple(t["high"])
        assert (s["bytes_sent"], s["bytes_received"]) == (t["high"][1], t["high"][0])
        assert (c["segs_sent"], c["segs_received"]) == tuple(t["frames"])
        assert c["srtt_us"] == int(t["rtt"] * 1e6) and s["srtt_us"] == c["srtt_us"]
        assert c["retransmits"] == s["retransmits"] == 0
        assert c["close_state"] == s["close_state"] == "closed"
        assert c["pid"] is None and c["comm"] is None and c["container_id"] is None
        assert c["conn_id"].startswith("seed-i") and c["ts_end"] is not None


def test_flows_match_tshark(seeds, tshark):
    truth: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for pcap in ("http", "tls", "dns"):
        for src, dst, sp, dp, length in fields(DATA / f"{pcap}.pcap", ["ip.src", "ip.dst", "tcp.srcport", "tcp.dstport", "ip.len"], "tcp"):
            truth[(src, dst, int(sp), int(dp))][0] += 1
            truth[(src, dst, int(sp), int(dp))][1] += int(length)
    got: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows(seeds, "flows"):
        if r["l4"] == "tcp":
            got[(r["src_ip"], r["dst_ip"], r["src_port"], r["dst_port"])][0] += r["packets"]
            got[(r["src_ip"], r["dst_ip"], r["src_port"], r["dst_port"])][1] += r["bytes"]
    assert dict(got) == dict(truth)


def test_http_matches_tshark(seeds, tshark):
    pcap = DATA / "http.pcap"
    reqs = fields(pcap, ["tcp.srcport", "http.request.method", "http.request.uri", "frame.time_epoch"], "http.request")
    by_port: dict[int, list] = defaultdict(list)
    for port, method, uri, _ts in reqs:  # pipelined requests share a frame: tshark joins their fields with ','
        by_port[int(port)] += [(m, redact_query(u)) for m, u in zip(method.split(","), uri.split(","))]
    codes: dict[int, list] = defaultdict(list)
    for port, code in fields(pcap, ["tcp.dstport", "http.response.code"], "http.response"):
        codes[int(port)] += [int(c) for c in code.split(",") if c != "100"]
    got = rows(seeds, "http", "where server_port = 8080 order by ts_request")
    for side in ("client", "server"):
        mine: dict[int, list] = defaultdict(list)
        mine_codes: dict[int, list] = defaultdict(list)
        for r in got:
            if r["side"] == side:
                mine[r["client_port"]].append((r["method"], r["path"]))
                mine_codes[r["client_port"]].append(r["status"])
        assert dict(mine) == dict(by_port)
        assert dict(mine_codes) == dict(codes)
    conn_ids = {r["conn_id"] for r in rows(seeds, "connections")}
    assert all(r["conn_id"] in conn_ids for r in got)


def test_tls_matches_tshark(seeds, tshark):
    truth = [(int(p), sni or None, alpn or None) for p, sni, alpn in
             fields(DATA / "tls.pcap", ["tcp.srcport", "tls.handshake.extensions_server_name", "tls.handshake.extensions_alpn_str"], "tls.handshake.type == 1")]
    got = [(r["client_port"], r["sni"], ",".join(r["alpn"]) if r["alpn"] else None) for r in rows(seeds, "tls", "order by ts")]
    assert got == truth and len(got) == 4


def test_dns_matches_tshark(seeds, tshark):
    decode = ("-d", "udp.port==5353,dns", "-d", "tcp.port==5353,dns")
    q = fields(DATA / "dns.pcap", ["dns.id", "dns.qry.name", "dns.qry.type", "dns.flags.response", "dns.flags.rcode", "dns.count.answers"], "dns", *decode)
    queries = [(int(i, 16), n.lower(), int(t)) for i, n, t, resp, _rc, _na in q if resp in ("0", "False")]
    answers = {(int(i, 16), n.lower()): (int(rc), int(na)) for i, n, _t, resp, rc, na in q if resp in ("1", "True")}
    got = rows(seeds, "dns", "order by ts_query")
    assert sorted((r["txid"], r["qname"], r["qtype"]) for r in got) == sorted(queries)
    for r in got:
        rc, na = answers[(r["txid"], r["qname"])]
        assert (r["rcode"], len(r["answers"])) == (rc, na)
    assert {r["transport"] for r in got} == {"udp", "tcp"}


def test_manifest_names_the_sources(seeds, tmp_path):
    import hashlib

    m = json.loads((seeds / "manifest.json").read_text())
    files = m["extra"]["import"]["files"]
    assert [Path(f["path"]).name for f in files] == ["http.pcap", "tls.pcap", "dns.pcap"]
    for f in files:
        assert f["sha256"] == hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest()
        assert f["format"] == "pcap" and f["link_types"] == ["Ethernet"] and f["problems"] == {}
    assert m["complete"] and m["window"]["start_ns"] is not None
    assert m["nodes"]["seed"]["clock"]["source"] == "capture timestamps"
    t = flowtape.open(seeds)
    assert "imported from pcap: http.pcap, tls.pcap, dns.pcap" in t.origin
    assert not t.problems
    r = run_cli("info", seeds)
    assert r.code == 0 and "imported from pcap: http.pcap, tls.pcap, dns.pcap" in r.out
    r = run_cli("report", "latency", seeds)
    assert r.code == 0 and "imported from pcap" in r.err


def test_seeds_both_loops_agree(tmp_path, monkeypatch):
    both_loops(tmp_path, [DATA / "http.pcap", DATA / "tls.pcap", DATA / "dns.pcap"], monkeypatch, "--dns-port", "5353")


# --- formats and link types --------------------------------------------------------------------------


def sample_frames(wrap=ethernet, v6: bool = False) -> list[tuple[int, bytes]]:
    """An HTTP exchange on a full TCP connection, a DNS exchange over UDP, an ICMP packet."""
    c, s = ("2001:db8::1", "2001:db8::2") if v6 else ("198.18.0.1", "198.18.0.2")
    conv = Conversation(c, 40000, s, 80, wrap=wrap)
    frames = conv.handshake(T0) + http_exchange_frames(T0 + 1_000_000, conv, "/a?x=1", b"x" * 3000) + conv.close(T0 + 9_000_000)
    q, a = dns_query(7, "a.lab.test"), dns_answer(7, "a.lab.test", "198.18.0.9")
    frames += [(T0 + 10_000_000, wrap(ip_packet(c, s, 17, udp_datagram(41000, 53, q)))),
               (T0 + 10_500_000, wrap(ip_packet(s, c, 17, udp_datagram(53, 41000, a)))),
               (T0 + 11_000_000, wrap(ip_packet(c, s, 58 if v6 else 1, b"\x08\0\0\0\0\1\0\1" + b"p" * 56)))]
    return frames


def summary(tape: Path) -> dict:
    """What must not depend on the file format or the link type."""
    t = flowtape.open(tape)
    try:
        q = lambda sql: t.sql(sql).fetchall()  # noqa: E731
        return {
            "flows": q("select src_ip, dst_ip, l4, src_port, dst_port, sum(packets)::int, sum(bytes)::int, bit_or(tcp_flags) from flows group by all order by all"),
            "conns": q("select role, client_ip, client_port, server_port, bytes_sent, bytes_received, segs_sent, segs_received, srtt_us, close_state from connections order by all"),
            "http": q("select side, method, path, status, request_bytes, response_bytes, latency_ns, user_agent, content_type from http order by all"),
            "dns": q("select qname, qtype_name, rcode_name, answers, latency_ns from dns"),
            "window": tuple(t.window),
        }
    finally:
        t.close()


def test_sample_is_decoded(tmp_path):
    tape, _ = do_import(tmp_path, [write_pcap(tmp_path / "s.pcap", sample_frames())])
    s = summary(tape)
    req = len(b"GET /a?x=1 HTTP/1.1\r\nHost: lab\r\nUser-Agent: build/1\r\n\r\n")
    resp = len(b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\nContent-Type: text/plain\r\n\r\n") + 3000
    assert s["http"] == [("client", "GET", "/a?x=", 200, req, resp, 1_000_000, "build/1", "text/plain"),
                         ("server", "GET", "/a?x=", 200, req, resp, 1_000_000, "build/1", "text/plain")]
    assert s["conns"][0][4:] == (req, resp, 8, 6, 200, "closed")  # SYN, ACK, request, 3 ACKs, FIN, ACK; SYN-ACK, ACK, 3 segments, FIN
    assert s["dns"][0][:3] == ("a.lab.test", "A", "NOERROR") and s["dns"][0][4] == 500_000
    assert ("198.18.0.1", "198.18.0.2", "icmp", None, None, 1, 84, None) in s["flows"]


@pytest.mark.parametrize("fmt", ["pcap-ns", "pcap-be", "pcapng", "pcapng-ns", "pcap-gz", "pcapng-gz"])
def test_formats_give_the_same_tape(tmp_path, fmt):
    frames = sample_frames()
    ref = summary(do_import(tmp_path, [write_pcap(tmp_path / "ref.pcap", frames)], name="ref.tape")[0])
    path = tmp_path / f"x.{fmt}"
    if fmt == "pcap-ns":
        write_pcap(path, frames, nano=True)
    elif fmt == "pcap-be":
        write_pcap(path, frames, big=True)
    elif fmt == "pcap-gz":
        write_pcap(path, frames, compress=True)
    else:
        write_pcapng(path, frames, tsresol=9 if fmt == "pcapng-ns" else 6, compress=fmt.endswith("gz"))
    tape, err = do_import(tmp_path, [path])
    assert summary(tape) == ref and "warning" not in err
    f = json.loads((tape / "manifest.json").read_text())["extra"]["import"]["files"][0]
    assert f["format"] == fmt.split("-")[0] and f["compressed"] == ("gzip" if fmt.endswith("gz") else None)


@pytest.mark.parametrize("link, wrap", [
    (1, lambda ip: ethernet(ip, vlans=(10,))),
    (1, lambda ip: ethernet(ip, vlans=(100, 10), qinq=True)),
    (113, cooked_v1),
    (276, cooked_v2),
    (101, lambda ip: ip),
    (228, lambda ip: ip),
    (0, bsd_loopback),
])
def test_link_types_give_the_same_rows(tmp_path, link, wrap):
    ref = summary(do_import(tmp_path, [write_pcap(tmp_path / "ref.pcap", sample_frames())], name="ref.tape")[0])
    tape, _ = do_import(tmp_path, [write_pcap(tmp_path / "x.pcap", sample_frames(wrap), link=link)])
    got = summary(tape)
    assert got == ref
    macs = rows(tape, "flows")[0]
    assert (macs["src_mac"] is None) == (link != 1)
    if link == 276:
        assert {r["ifindex"] for r in rows(tape, "flows")} == {3} and {r["direction"] for r in rows(tape, "flows")} == {"ingress"}


def test_ipv6(tmp_path, monkeypatch):
    ref = summary(do_import(tmp_path, [write_pcap(tmp_path / "v4.pcap", sample_frames())], name="v4.tape")[0])
    got = summary(do_import(tmp_path, [write_pcap(tmp_path / "v6.pcap", sample_frames(v6=True))], name="v6.tape")[0])
    assert [r[4:] for r in got["conns"]] == [r[4:] for r in ref["conns"]]
    assert [r[1:] for r in got["http"]] == [r[1:] for r in ref["http"]]
    assert got["flows"][0][0].startswith("2001:db8::") and len(got["flows"]) == len(ref["flows"])
    # IPv6 extension headers are walked to the transport header
    hop = b"\x06\0" + b"\0" * 6  # hop-by-hop options: next header TCP, 8 bytes
    seg = tcp_segment(40000, 80, 1, 0, SYN)
    ip = ip_packet("2001:db8::1", "2001:db8::2", 0, hop + seg)
    tape, _ = do_import(tmp_path, [write_pcap(tmp_path / "ext.pcap", [(T0, ethernet(ip))])], name="ext.tape")
    assert [(r["l4"], r["dst_port"], r["bytes"]) for r in rows(tape, "flows")] == [("tcp", 80, 68)]
    both_loops(tmp_path, [tmp_path / "v6.pcap", tmp_path / "ext.pcap"], monkeypatch)


def test_pcapng_interfaces_names_and_directions(tmp_path, monkeypatch):
    frames = [(ts, fr, 1 if i % 2 else 0) for i, (ts, fr) in enumerate(sample_frames())]
    path = write_pcapng(tmp_path / "x.pcapng", frames, links=(1, 1), names=("eth0", "cni0"), flags={0: 1, 1: 2})
    tape, err = do_import(tmp_path, [path])
    got = rows(tape, "flows", "order by ts_start")
    assert {r["iface"] for r in got} == {"eth0", "cni0"}
    assert got[0]["direction"] == "ingress" and got[1]["direction"] == "egress"
    both_loops(tmp_path, [path], monkeypatch)


def test_a_packet_seen_on_several_interfaces_counts_once(tmp_path, monkeypatch):
    """tcpdump -i any sees a packet on the pod's veth, on the bridge and on the other veth; the
    recorder counts it once per node, so does the import (a retransmission is not a duplicate)."""
    ref_frames = sample_frames(cooked_v2)
    ref = summary(do_import(tmp_path, [write_pcap(tmp_path / "one.pcap", ref_frames, link=276)], name="one.tape")[0])
    frames = []
    for ts, fr in sample_frames(lambda ip: ip):
        frames += [(ts, cooked_v2(fr, 3)), (ts + 20_000, cooked_v2(fr, 4)), (ts + 40_000, cooked_v2(fr, 5, outgoing=True))]
    frames.sort(key=lambda x: x[0])
    path = write_pcap(tmp_path / "any.pcap", frames, link=276)
    tape, _ = do_import(tmp_path, [path])
    got = summary(tape)
    assert got["conns"] == ref["conns"] and got["http"] == ref["http"] and got["dns"] == ref["dns"]
    assert got["flows"] == ref["flows"]
    notes = json.loads((tape / "manifest.json").read_text())["extra"]["import"]["notes"]
    assert notes["duplicate_sightings"] == 2 * len(ref_frames)
    # the same segment again on the same interface is a retransmission, not a sighting
    conv = Conversation("198.18.0.1", 40010, "198.18.0.2", 80, wrap=cooked_v2)
    f2 = conv.handshake(T0) + conv.send(T0 + 1_000_000, True, b"r" * 100)
    f2.append((f2[-2][0] + 500_000, f2[-2][1]))
    got = conns(do_import(tmp_path, [write_pcap(tmp_path / "re.pcap", f2, link=276)], name="re.tape")[0])
    assert got["client"]["retransmits"] == 1 and got["client"]["segs_sent"] == 4
    both_loops(tmp_path, [path], monkeypatch)
    both_loops(tmp_path, [write_pcap(tmp_path / "v1.pcap", [(t, cooked_v1(fr[20:])) for t, fr in frames], link=113)], monkeypatch)


# --- TCP lives -------------------------------------------------------------------------------------


def conns(tape: Path) -> dict[str, dict]:
    return {r["role"]: r for r in rows(tape, "connections")}


def test_refused_connection(tmp_path):
    conv = Conversation("198.18.0.1", 40001, "198.18.0.2", 81)
    frames = [(T0, conv.frame(True, 1000, 0, SYN)), (T0 + 50_000, conv.frame(False, 0, 1001, RST | ACK))]
    got = rows(do_import(tmp_path, [write_pcap(tmp_path / "r.pcap", frames)])[0], "connections")
    assert [(r["role"], r["close_state"], r["ts_end"] is not None, r["connect_latency_ns"], r["srtt_us"]) for r in got] == [("client", "refused", True, None, None)]


def test_unanswered_syns_time_out_and_recent_ones_stay_open(tmp_path):
    a = Conversation("198.18.0.1", 40002, "198.18.0.2", 80)
    b = Conversation("198.18.0.1", 40003, "198.18.0.2", 80)
    frames = [(T0, a.frame(True, 1000, 0, SYN)), (T0 + 1_000_000_000, a.frame(True, 1000, 0, SYN)),
              (T0 + 5_500_000_000, b.frame(True, 7, 0, SYN)),
              (T0 + 6_000_000_000, ethernet(ip_packet("198.18.0.3", "198.18.0.4", 17, udp_datagram(1, 2, b"x"))))]
    got = {r["client_port"]: r for r in rows(do_import(tmp_path, [write_pcap(tmp_path / "t.pcap", frames)])[0], "connections")}
    assert got[40002]["close_state"] == "timeout" and got[40002]["retransmits"] == 1 and got[40002]["segs_sent"] == 2
    assert got[40002]["ts_end"].timestamp() * 1e9 == pytest.approx(T0 + 1e9, abs=1000)
    assert got[40003]["close_state"] == "open" and got[40003]["ts_end"] is None
    assert len(got) == 2  # no server rows: no handshake


def test_reset_after_data(tmp_path):
    conv = Conversation("198.18.0.1", 40004, "198.18.0.2", 80)
    frames = conv.handshake(T0) + conv.send(T0 + 1_000_000, True, b"x" * 100) + conv.reset(T0 + 2_000_000, False)
    got = conns(do_import(tmp_path, [write_pcap(tmp_path / "r.pcap", frames)])[0])
    assert got["client"]["close_state"] == got["server"]["close_state"] == "reset"
    assert got["client"]["bytes_sent"] == 100 and got["server"]["bytes_received"] == 100


def test_retransmissions_count_once_in_bytes(tmp_path, monkeypatch):
    conv = Conversation("198.18.0.1", 40005, "198.18.0.2", 80)
    frames = conv.handshake(T0)
    data = bytes(range(256)) * 20  # 5120 bytes in 4 segments
    seg = conv.send(T0 + 1_000_000, True, data)
    # the second segment again (a retransmission), and the third before the second (out of order)
    frames += [seg[0], seg[4], seg[2], seg[2], seg[6]] + [(T0 + 3_000_000, seg[2][1])]
    frames += conv.close(T0 + 4_000_000)
    path = write_pcap(tmp_path / "r.pcap", frames)
    got = conns(do_import(tmp_path, [path])[0])
    assert got["client"]["bytes_sent"] == 5120  # every byte once
    assert got["client"]["retransmits"] == 3  # the second segment after the third, and twice again
    truth = tshark_streams(path)
    assert got["client"]["bytes_sent"] == truth[("198.18.0.1", 40005)]["high"][0]
    both_loops(tmp_path, [path], monkeypatch)


def test_joined_mid_way_and_port_reuse(tmp_path, monkeypatch):
    conv = Conversation("198.18.0.1", 40006, "198.18.0.2", 8080)
    frames = conv.send(T0, True, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n") + conv.send(T0 + 1_000_000, False, b"HTTP/1.1 204 No Content\r\n\r\n")
    frames += conv.close(T0 + 2_000_000)
    again = Conversation("198.18.0.1", 40006, "198.18.0.2", 8080, isn_c=90_000)
    frames += again.handshake(T0 + 10_000_000_000) + again.close(T0 + 10_100_000_000)
    path = write_pcap(tmp_path / "m.pcap", frames)
    tape, _ = do_import(tmp_path, [path])
    got = rows(tape, "connections", "order by ts_start, role")
    assert [(r["role"], r["close_state"], r["srtt_us"] is None) for r in got] == [
        ("client", "closed", True), ("server", "closed", True), ("client", "closed", False), ("server", "closed", False)]
    assert got[0]["bytes_sent"] == 28 and got[0]["bytes_received"] == 27
    m = json.loads((tape / "manifest.json").read_text())
    assert m["extra"]["import"]["notes"]["connections_started_before_capture"] == 1
    assert [r["status"] for r in rows(tape, "http")] == [204, 204]
    both_loops(tmp_path, [path], monkeypatch)


def test_sequence_numbers_wrap(tmp_path):
    conv = Conversation("198.18.0.1", 40007, "198.18.0.2", 80, isn_c=(1 << 32) - 3000)
    frames = conv.handshake(T0) + conv.send(T0 + 1_000_000, True, b"y" * 10_000) + conv.close(T0 + 9_000_000)
    got = conns(do_import(tmp_path, [write_pcap(tmp_path / "w.pcap", frames)])[0])
    assert got["client"]["bytes_sent"] == 10_000 and got["client"]["retransmits"] == 0


def test_tso_super_packets_count_as_their_segments(tmp_path, monkeypatch):
    """A 4344-byte segment where the peer announced MSS 1460 (options: none) is three wire packets,
    each with its own 40 bytes of headers, as the recorder counts gso_segs."""
    conv = Conversation("198.18.0.1", 40008, "198.18.0.2", 80)
    frames = conv.handshake(T0) + conv.send(T0 + 1_000_000, False, b"z" * 4380, mss=4380) + conv.close(T0 + 3_000_000)
    path = write_pcap(tmp_path / "g.pcap", frames)
    tape, _ = do_import(tmp_path, [path])
    f = [r for r in rows(tape, "flows") if r["src_port"] == 80]
    assert sum(r["packets"] for r in f) == 1 + 3 + 1  # SYN-ACK, 3 segments, FIN
    assert sum(r["bytes"] for r in f) == 44 + 4380 + 3 * 40 + 40
    assert conns(tape)["server"]["bytes_sent"] == 4380
    both_loops(tmp_path, [path], monkeypatch)


def test_long_body_is_skipped_but_sized(tmp_path, monkeypatch):
    conv = Conversation("198.18.0.1", 40009, "198.18.0.2", 80)
    body = b"b" * 1_000_000
    frames = conv.handshake(T0) + http_exchange_frames(T0 + 1_000_000, conv, "/big", body)
    frames += http_exchange_frames(T0 + 900_000_000, conv, "/after", b"ok")
    frames += conv.close(T0 + 990_000_000)
    path = write_pcap(tmp_path / "b.pcap", frames)
    got = rows(do_import(tmp_path, [path])[0], "http", "where side = 'client' order by ts_request")
    head = len(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\nContent-Type: text/plain\r\n\r\n")
    assert [(r["path"], r["status"], r["response_bytes"]) for r in got] == [
        ("/big", 200, head + 1_000_000), ("/after", 200, head - 6 + 2)]
    both_loops(tmp_path, [path], monkeypatch)


# --- damage ----------------------------------------------------------------------------------------------


def test_not_a_capture_is_one_line_exit_3_nothing_written(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello, not a capture\n")
    good = write_pcap(tmp_path / "ok.pcap", sample_frames())
    for files in ([bad], [good, bad], [tmp_path / "missing.pcap"]):
        r = run_cli("import", "pcap", *files, "-o", tmp_path / "x.tape")
        assert r.code == 3, r.err
        assert r.err.count("\n") == 1 and "flowtape: error:" in r.err and "Traceback" not in r.err
        assert not (tmp_path / "x.tape").exists()
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    gz = tmp_path / "text.gz"
    gz.write_bytes(gzip.compress(b"plain text, compressed"))
    for f in (empty, gz):
        r = run_cli("import", "pcap", f, "-o", tmp_path / "x.tape")
        assert r.code == 3 and "not a pcap or pcapng capture" in r.err and not (tmp_path / "x.tape").exists()


def problems_of(tape: Path) -> dict[str, int]:
    return json.loads((tape / "manifest.json").read_text())["extra"]["import"]["problems"]


def test_truncated_capture_keeps_what_was_read(tmp_path, monkeypatch):
    full = write_pcap(tmp_path / "full.pcap", sample_frames())
    data = full.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) - 40])  # the last record (an ICMP packet of 98 bytes) loses 40
    tape, err = do_import(tmp_path, [cut])
    assert err.count("warning") == 2 and "ends inside a record" in err and "cut by the snaplen" in err
    assert problems_of(tape) == {"truncated_record": 1, "snaplen_cut": 1}
    icmp = [r for r in rows(tape, "flows") if r["l4"] == "icmp"]
    assert [(r["packets"], r["bytes"]) for r in icmp] == [(1, 84)]  # its size from the IP header
    assert summary(tape)["http"] == summary(do_import(tmp_path, [full], name="f.tape")[0])["http"]
    t = flowtape.open(tape)
    assert any("damaged" in str(p) for p in t.problems) and t.manifest["lost"][t.nodes[0]]["pcap.truncated_record"] == 1
    both_loops(tmp_path, [cut], monkeypatch)


@pytest.mark.parametrize("where", ["after_header", "middle"])
def test_garbage_is_skipped_to_the_next_record(tmp_path, monkeypatch, where):
    frames = sample_frames()
    data = write_pcap(tmp_path / "ok.pcap", frames).read_bytes()
    junk = bytes([0xFF, 0xEE, 0xDD] * 67)
    if where == "after_header":
        bad = data[:24] + junk + data[24:]
    else:
        pos = 24
        for _ts, fr in frames[:5]:
            pos += 16 + len(fr)
        bad = data[:pos] + junk + data[pos:]
    path = tmp_path / "g.pcap"
    path.write_bytes(bad)
    tape, err = do_import(tmp_path, [path])
    assert "no record where one should start" in err and err.count("warning") == 1
    p = problems_of(tape)
    assert p["garbage"] == 1 and p["garbage_bytes"] == len(junk)
    assert summary(tape)["flows"] == summary(do_import(tmp_path, [tmp_path / "ok.pcap"], name="ok.tape")[0])["flows"]
    both_loops(tmp_path, [path], monkeypatch)


def test_pcapng_garbage_and_cut_block(tmp_path):
    data = write_pcapng(tmp_path / "ok.pcapng", sample_frames()).read_bytes()
    path = tmp_path / "g.pcapng"
    path.write_bytes(data[:200] + b"\x01\x02\x03\x04" * 9 + data[200:-10])
    tape, err = do_import(tmp_path, [path])
    p = problems_of(tape)
    assert p["truncated_record"] == 1 and p["garbage"] >= 1
    assert len(rows(tape, "flows")) >= 3


def test_snaplen_cut_packets_keep_their_wire_size(tmp_path, monkeypatch):
    frames = sample_frames()
    path = write_pcap(tmp_path / "s.pcap", frames, snaplen=96, cut_at=96)
    tape, err = do_import(tmp_path, [path])
    full = summary(do_import(tmp_path, [write_pcap(tmp_path / "full.pcap", frames)], name="full.tape")[0])
    got = summary(tape)
    assert got["flows"] == full["flows"] and got["conns"] == full["conns"]
    assert "cut by the snaplen" in err and problems_of(tape)["snaplen_cut"] == sum(len(f) > 96 for _, f in frames)
    h = rows(tape, "http", "where side = 'client'")
    assert [(r["method"], r["path"], r["status"]) for r in h] == [("GET", "/a?x=", 200)]
    both_loops(tmp_path, [path], monkeypatch)


def test_unknown_link_type_and_several_link_types(tmp_path, monkeypatch):
    path = write_pcap(tmp_path / "wifi.pcap", [(T0, b"\x00" * 40)], link=105)
    tape, err = do_import(tmp_path, [path])
    assert "link type flowtape does not decode" in err and "105" in err
    assert problems_of(tape)["unknown_link_type"] == 1 and not rows(tape, "flows")
    frames = [(ts, fr, 0) for ts, fr in sample_frames()] + [(T0 + 12_000_000, cooked_v2(ip_packet("198.18.0.5", "198.18.0.6", 17, udp_datagram(5, 6, b"q"))), 1)]
    mixed = write_pcapng(tmp_path / "mixed.pcapng", frames, links=(1, 276))
    tape, err = do_import(tmp_path, [mixed], name="m.tape")
    assert "several link types" in err and "Ethernet, Linux cooked v2" in err
    assert problems_of(tape)["several_link_types"] == 1
    assert any(r["src_ip"] == "198.18.0.5" for r in rows(tape, "flows"))
    both_loops(tmp_path, [mixed], monkeypatch)


def test_non_ip_frames_are_counted_not_flowed(tmp_path):
    arp_frame = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\0" * 28
    path = write_pcap(tmp_path / "arp.pcap", sample_frames() + [(T0 + 20_000_000, arp_frame)] * 3)
    tape, err = do_import(tmp_path, [path])
    assert problems_of(tape) == {"not_ip": 3} and "not IP" in err
    assert "pcap.not_ip" not in json.loads((tape / "manifest.json").read_text())["lost"][rows(tape, "flows")[0]["node"]]


def test_cli_help_has_an_example():
    r = run_cli("import", "pcap", "--help")
    assert r.code == 0 and "Example: flowtape import pcap" in r.out
