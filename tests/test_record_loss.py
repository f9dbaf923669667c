"""The recorder under packet loss (root + bcc): retransmissions neither inflate nor lose bytes.

An SRE opens a tape because something went wrong, and lossy links are the usual suspect. Here
TC programs drop about one in 40 data packets from nginx to curl (the kernel has no netem), in
two places: on the server's bridge port, after tcpdump there and the recorder's own programs
saw the packet but before the client's bridge port (so the client's capture has gaps), and on
the client's eth0 ingress, after every capture point (so the client's capture holds both
copies). A drop on a sender's own egress would not do: TCP takes it as local congestion and
sends the segment again as if for the first time.

And, as on a node running Cilium, another tool's TC programs sit on the bridge ports' hooks
before the recorder starts, each ending the chain with TCX_PASS (the dropper is one of them):
the recorder's programs must run anyway (they attach at the front).

Oracles: tshark, counting payload in sequence space (a byte range sent twice is one range) and
the copies it marks as retransmitted or out of order; nginx's access log for the http rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import defaultdict
from pathlib import Path

import pytest
from ebpf_support import ebpf_host, require_ebpf  # noqa: F401  (fixture)
from netlab import Lab, access_log, recorder, start_nginx_l7, tc_program, tshark_fields

import flowtape

pytestmark = [pytest.mark.ebpf, pytest.mark.slow, require_ebpf()]

SIZES = {"f300k": 300_000, "f1m": 1 << 20, "f7": 7}


@pytest.fixture(scope="module")
def recording(ebpf_host, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("loss")
    with Lab() as lab:
        srv, cli = lab.add_host("srv"), lab.add_host("cli")
        www = lab.www({name: os.urandom(n) for name, n in SIZES.items()})
        master, _ = start_nginx_l7(srv, www)
        foreign = contextlib.ExitStack()
        srv_dropped = foreign.enter_context(tc_program([], srv.host_if, False, one_in=40))
        for ifname, egress in ((srv.host_if, True), (cli.host_if, False), (cli.host_if, True)):
            foreign.enter_context(tc_program([], ifname, egress, one_in=0))
        tape = work / "loss.tape"
        try:
            with recorder(["-o", str(tape), "--interfaces", lab.bridge, "--probes", "flows,connections,l7", "--no-k8s", "--flow-interval", "1"]):
                base = f"http://{srv.ip}"
                with lab.capture([cli.host_if, srv.host_if]) as pcaps, cli.random_drops(40, egress=False) as cli_dropped:
                    before = srv_dropped()
                    for _ in range(4):  # keep-alive: three downloads and a small one per connection
                        urls = [f"{base}/f1m", f"{base}/f7", f"{base}/f300k", f"{base}/f1m"]
                        cli.run(["curl", "-sf", *(["-o", "/dev/null"] * len(urls)), *urls], timeout=120)
                    dropped = (srv_dropped() - before, cli_dropped())
                    time.sleep(1.0)  # the last FIN/ACKs are in the capture
                time.sleep(1.5)  # past the recorder's grace period for rows
        finally:
            master.terminate()
            master.wait()
            foreign.close()
        yield {"tape": flowtape.open(str(tape)), "manifest": json.loads((tape / "manifest.json").read_text()), "log": access_log(lab.workdir),
               "pcap": pcaps[cli.host_if], "srv_pcap": pcaps[srv.host_if], "srv": srv, "dropped": dropped}


def _streams(pcap: Path) -> dict[int, dict[str, int]]:
    """client port -> payload bytes each way (highest relative seq + len - 1, data packets only)
    and the packets tshark marked as retransmitted or out of order each way."""
    out: dict[int, dict[str, int]] = defaultdict(lambda: {"c2s": 0, "s2c": 0, "marked_c2s": 0, "marked_s2c": 0})
    fields = ["tcp.srcport", "tcp.dstport", "tcp.seq", "tcp.len", "tcp.analysis.retransmission", "tcp.analysis.out_of_order"]
    for src, dst, seq, length, retrans, ooo in tshark_fields(pcap, fields, "tcp"):
        to_server = dst == "80"
        st = out[int(src) if to_server else int(dst)]
        d = "c2s" if to_server else "s2c"
        if int(length):
            st[d] = max(st[d], int(seq) + int(length) - 1)
        if retrans or ooo:
            st["marked_" + d] += 1
    return dict(out)


def test_packets_were_dropped_on_both_sides(recording):
    srv_dropped, cli_dropped = recording["dropped"]
    assert srv_dropped > 10 and cli_dropped > 10, recording["dropped"]


def test_connection_bytes_are_payload_not_retransmissions(recording):
    truth = _streams(recording["pcap"])
    rows = recording["tape"].sql(f"select * from connections where server_ip = '{recording['srv'].ip}' and server_port = 80").pl().to_dicts()
    assert len(rows) == 8 and {r["close_state"] for r in rows} == {"closed"}
    for r in rows:
        t = truth[r["client_port"]]
        sent, received = (t["c2s"], t["s2c"]) if r["role"] == "client" else (t["s2c"], t["c2s"])
        assert (r["bytes_sent"], r["bytes_received"]) == (sent, received), (r, t)
    # every downloaded byte: the heads plus 2 x 1 MiB + 300 kB + 7 per connection
    servers = [r for r in rows if r["role"] == "server"]
    assert all(r["bytes_sent"] > 2 * (1 << 20) + 300_007 for r in servers)
    # the server resent what was dropped. Every segment it counts as resent crossed its own
    # bridge port (whose capture is before the drop there) after a copy or a later segment
    # did, where tshark marks it; the kernel does not count tail loss probes, so fewer is
    # possible, but not none
    at_server = _streams(recording["srv_pcap"])
    for r in servers:
        assert 0 < r["retransmits"] <= at_server[r["client_port"]]["marked_s2c"], (r, at_server[r["client_port"]])


def test_http_rows_equal_the_access_log(recording):
    log = sorted(recording["log"], key=lambda x: (x["connection"], x["connection_requests"]))
    assert len(log) == 16
    want = sorted((x["remote_port"], x["request_uri"], x["status"], x["bytes_sent"]) for x in log)
    for side in ("client", "server"):
        rows = recording["tape"].sql(f"select client_port, path, status, response_bytes from http where side = '{side}'").pl().rows()
        assert sorted(rows) == want, side
    lost = recording["manifest"]["lost"]
    lost = lost[next(iter(lost))]
    assert lost["l7.ringbuf_full"] == 0 and lost["http_desync"] == 0 and lost["http_orphan_responses"] == 0, lost


def test_flows_count_every_copy_that_entered_the_node(recording):
    """The flows table counts packets as they enter the node, retransmissions included, and
    those lost after: per direction it equals tshark's packet and byte counts on the server's
    bridge port (where the server's packets enter, and whose capture comes before the drops)."""
    srv_ip = recording["srv"].ip
    wire: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for src, length in tshark_fields(recording["srv_pcap"], ["ip.src", "ip.len"], "tcp"):
        wire[src][0] += 1
        wire[src][1] += int(length)
    rows = recording["tape"].sql(f"select src_ip, sum(packets)::bigint p, sum(bytes)::bigint b from flows where ip_proto = 6 and "
                                 f"(src_ip = '{srv_ip}' or dst_ip = '{srv_ip}') group by src_ip").pl().rows()
    assert {src: [p, b] for src, p, b in rows} == dict(wire)
