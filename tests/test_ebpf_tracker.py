"""The recorder's pure parts, fed synthetic kernel events: no root, no kernel needed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from flowtape.capture.live import connections as c
from flowtape.capture.live.flows import flow_rows
from flowtape.capture.live.interfaces import plan_interfaces
from flowtape.errors import UsageError

CLI, SRV = "198.18.0.3", "198.18.0.2"


def ev(kind=c.EV_STATE, ts=0, sk=0xA, old=0, new=0, saddr=CLI, sport=40000, daddr=SRV, dport=80, stats=None, **kw):
    e = {"kind": kind, "ts_ns": ts, "skaddr": sk, "cookie": 0, "cgroup_id": 0, "bytes_acked": 0, "bytes_received": 0,
         "segs_out": 0, "segs_in": 0, "srtt_us": 0, "total_retrans": 0, "snd_una": 0, "snd_nxt": 0, "pid": 0,
         "error": 0, "family": 4, "saddr": saddr, "daddr": daddr, "sport": sport, "dport": dport, "oldstate": old,
         "newstate": new, "has_stats": 0, "in_task": 0, "comm": "", "flags": 0, "ts_start_ns": 0, "rx_at_fin_wait2_b": 0}
    if stats:
        e.update(stats, has_stats=1)
    e.update(kw)
    return e


def st(acked, received, una=100, nxt=100, cookie=7):
    return {"bytes_acked": acked, "bytes_received": received, "snd_una": una, "snd_nxt": nxt, "cookie": cookie, "segs_out": 5, "segs_in": 4, "srtt_us": 30}


def tracker():
    return c.ConnectionTracker("n1", lambda t: t + 1000)


OWNER = dict(in_task=1, pid=42, comm="curl", cgroup_id=9)
CL = c.F_CLIENT


def client_lifecycle(t, active_close: bool):
    """A client sending 77 bytes and receiving 5000, closing first or second (the kernel sends
    ESTABLISHED and CLOSE; the steps between are folded into `flags`)."""
    t.feed(ev(ts=20, old=c.SYN_SENT, new=c.ESTABLISHED, stats=st(1, 0), ts_start_ns=10, flags=CL, **OWNER))
    if active_close:  # FIN_WAIT1 -> FIN_WAIT2 (5000 received) -> peer FIN -> CLOSE
        t.feed(ev(ts=32, old=c.FIN_WAIT2, new=c.CLOSE, stats=st(79, 5001), ts_start_ns=10, flags=CL | c.F_FIN_SENT | c.F_FIN_WAIT2, rx_at_fin_wait2_b=5000, **OWNER))
    else:  # peer FIN first: CLOSE_WAIT -> LAST_ACK -> CLOSE
        t.feed(ev(ts=32, old=c.LAST_ACK, new=c.CLOSE, stats=st(79, 5001), ts_start_ns=10, flags=CL | c.F_FIN_SENT | c.F_FIN_IN, **OWNER))


@pytest.mark.parametrize("active_close", [True, False])
def test_client_payload_bytes_remove_syn_and_fins(active_close):
    t = tracker()
    client_lifecycle(t, active_close)
    (row,) = t.take_rows(final=True)
    assert (row["bytes_sent"], row["bytes_received"]) == (77, 5000)
    assert (row["role"], row["pid"], row["comm"], row["cgroup_id"]) == ("client", 42, "curl", 9)
    assert (row["client_ip"], row["client_port"], row["server_ip"], row["server_port"]) == (CLI, 40000, SRV, 80)
    assert (row["ts_start"], row["ts_end"], row["connect_latency_ns"], row["close_state"]) == (1010, 1032, 10, "closed")
    assert row["conn_id"] == "n1-c7"


def test_orphaned_fin_wait2_close_keeps_received_bytes():
    # close() before the peer's FIN: the socket leaves FIN_WAIT2 for a timewait socket at once,
    # bytes_received has not grown, so no FIN is removed from it.
    t = tracker()
    t.feed(ev(ts=20, old=c.SYN_SENT, new=c.ESTABLISHED, stats=st(1, 0), ts_start_ns=10, flags=CL, **OWNER))
    t.feed(ev(ts=31, old=c.FIN_WAIT2, new=c.CLOSE, stats=st(12, 300), ts_start_ns=10, flags=CL | c.F_FIN_SENT | c.F_FIN_WAIT2, rx_at_fin_wait2_b=300))
    (row,) = t.take_rows(final=True)
    assert (row["bytes_sent"], row["bytes_received"]) == (10, 300)


def test_unacked_fin_is_not_removed():
    t = tracker()
    t.feed(ev(ts=20, old=c.SYN_SENT, new=c.ESTABLISHED, stats=st(1, 0), ts_start_ns=10, flags=CL))
    t.feed(ev(ts=31, old=c.FIN_WAIT1, new=c.CLOSE, stats=st(11, 0, una=90, nxt=100), ts_start_ns=10, flags=CL | c.F_FIN_SENT))
    (row,) = t.take_rows(final=True)
    assert (row["bytes_sent"], row["close_state"]) == (10, "reset")


def test_server_owner_comes_from_accept_not_softirq():
    t = tracker()
    srv = dict(saddr=SRV, sport=80, daddr=CLI, dport=40000, sk=0xB, ts_start_ns=10)
    t.feed(ev(ts=10, old=c.SYN_RECV, new=c.ESTABLISHED, stats=st(0, 0), **srv))
    t.feed(ev(kind=c.EV_ACCEPT, ts=11, daddr=CLI, dport=40000, pid=7, comm="nginx", cgroup_id=3, in_task=1, saddr=""))
    t.feed(ev(kind=c.EV_OWNER, ts=12, sk=0xB, pid=8, comm="other"))
    t.feed(ev(ts=22, old=c.LAST_ACK, new=c.CLOSE, stats=st(5001, 101), flags=c.F_FIN_SENT | c.F_FIN_IN, **srv))
    (row,) = t.take_rows(final=True)
    assert (row["role"], row["pid"], row["comm"]) == ("server", 7, "nginx")
    assert (row["client_ip"], row["client_port"], row["server_port"]) == (CLI, 40000, 80)
    assert (row["bytes_sent"], row["bytes_received"]) == (5000, 100)
    assert row["connect_latency_ns"] is None


def test_first_io_owns_a_server_socket_accepted_without_address():
    t = tracker()
    t.feed(ev(ts=10, sk=0xB, old=c.SYN_RECV, new=c.ESTABLISHED, saddr=SRV, sport=80, daddr=CLI, dport=40000, ts_start_ns=10))
    t.feed(ev(kind=c.EV_OWNER, ts=12, sk=0xB, pid=8, comm="srv"))
    (row,) = t.take_rows(final=True)
    assert (row["pid"], row["comm"], row["close_state"], row["ts_end"], row["bytes_sent"]) == (8, "srv", "open", None, None)


@pytest.mark.parametrize("errno_, state", [(111, "refused"), (110, "timeout"), (113, "failed"), (0, "failed")])
def test_failed_connects(errno_, state):
    t = tracker()
    t.feed(ev(ts=11, old=c.SYN_SENT, new=c.CLOSE, dport=81, stats=st(0, 0, una=1, nxt=2), ts_start_ns=10, flags=CL, in_task=1, pid=5, comm="curl"))
    t.feed(ev(kind=c.EV_ERROR, ts=11, dport=81, error=errno_))
    assert t.take_rows(now_ns=12) == []  # waits for late events
    (row,) = t.take_rows(now_ns=11 + c.GRACE_NS)
    assert (row["close_state"], row["bytes_sent"], row["bytes_received"], row["pid"]) == (state, 0, 0, 5)
    assert row["ts_start"] == 1010 and row["connect_latency_ns"] is None


def test_reset():
    t = tracker()
    t.feed(ev(ts=11, old=c.SYN_SENT, new=c.ESTABLISHED, stats=st(1, 0), ts_start_ns=10, flags=CL))
    t.feed(ev(ts=12, old=c.ESTABLISHED, new=c.CLOSE, stats=st(1, 0, una=1, nxt=1), ts_start_ns=10, flags=CL))
    assert [r["close_state"] for r in t.take_rows(final=True)] == ["reset"]


def test_decoder_reads_the_c_layout():
    import ctypes

    class Ev(ctypes.Structure):  # what bcc builds from `struct conn_event`, abridged
        _fields_ = [("ts_ns", ctypes.c_ulonglong), ("error", ctypes.c_int), ("saddr", ctypes.c_ubyte * 16), ("daddr", ctypes.c_ubyte * 16),
                    ("family", ctypes.c_ushort), ("kind", ctypes.c_ubyte), ("comm", ctypes.c_char * 16)]

    e = Ev(ts_ns=5, error=-3, family=2, kind=1, comm=b"curl")
    e.saddr[:4] = [198, 18, 0, 3]
    e.daddr[:4] = [198, 18, 0, 2]
    d = c.EventDecoder(Ev)(bytes(e))
    assert (d["ts_ns"], d["error"], d["saddr"], d["daddr"], d["family"], d["kind"], d["comm"]) == (5, -3, CLI, SRV, 4, 1, "curl")


def key(**kw):
    d = dict(ifindex=3, direction=0, family=4, ip_proto=6, src_mac=bytes([2, 0, 0, 0, 0, 1]), dst_mac=bytes([2, 0, 0, 0, 0, 2]),
             src_ip=bytes([198, 18, 0, 3]) + bytes(12), dst_ip=bytes([198, 18, 0, 2]) + bytes(12), src_port=40000, dst_port=80)
    d.update(kw)
    return SimpleNamespace(**d)


def val(**kw):
    d = dict(packets=3, bytes=180, first_ns=5, last_ns=9, tcp_flags=0x12)
    d.update(kw)
    return SimpleNamespace(**d)


def test_flow_rows_decode_every_column():
    cols = flow_rows([(key(), val()), (key(ip_proto=1, src_port=0, dst_port=0, direction=1, src_mac=bytes(6), dst_mac=bytes(6)), val(tcp_flags=0)),
                      (key(), val(packets=0))], {3: "eth0"}, lambda t: t + 100)
    assert cols["ts_start"] == [105, 105] and cols["ts_end"] == [109, 109]
    assert cols["iface"] == ["eth0", "eth0"] and cols["direction"] == ["ingress", "egress"]
    assert cols["src_mac"] == ["02:00:00:00:00:01", None]
    assert cols["src_ip"] == ["198.18.0.3", "198.18.0.3"] and cols["dst_ip"] == ["198.18.0.2", "198.18.0.2"]
    assert cols["src_port"] == [40000, None] and cols["l4"] == ["tcp", "icmp"] and cols["tcp_flags"] == [0x12, None]
    assert cols["packets"] == [3, 3] and cols["bytes"] == [180, 180]


def test_flow_rows_ipv6():
    cols = flow_rows([(key(family=6, src_ip=bytes.fromhex("20010db8" + "0" * 23 + "1"), dst_ip=bytes.fromhex("20010db8" + "0" * 23 + "2"), ip_proto=17), val())], {}, lambda t: t)
    assert cols["src_ip"] == ["2001:db8::1"] and cols["l4"] == ["udp"] and cols["iface"] == [None]


def _fake_net(tmp_path, spec):
    for name, (ifindex, hwtype, bridge_ports) in spec.items():
        d = tmp_path / name
        d.mkdir()
        (d / "ifindex").write_text(f"{ifindex}\n")
        (d / "type").write_text(f"{hwtype}\n")
        if bridge_ports is not None:
            (d / "bridge").mkdir()
            (d / "brif").mkdir()
            for p in bridge_ports:
                (d / "brif" / p).mkdir()
    return tmp_path


def test_plan_counts_bridges_on_their_ports_and_egress_and_loopback_on_egress(tmp_path):
    net = _fake_net(tmp_path, {"lo": (1, 772, None), "eth0": (2, 1, None), "br0": (3, 1, ["veth1"]), "veth1": (4, 1, None), "wg0": (5, 65534, None)})
    plan = {i.name: i for i in plan_interfaces(None, net)}
    assert (plan["lo"].count_ingress, plan["lo"].count_egress) == (False, True)
    # the bridge counts what the host sends into it, its ports what enters them
    assert (plan["br0"].count_ingress, plan["br0"].count_egress) == (False, True)
    assert (plan["veth1"].count_ingress, plan["veth1"].count_egress) == (True, False)
    assert (plan["eth0"].count_ingress, plan["eth0"].count_egress) == (True, True)
    # a port selected without its bridge counts both ways
    assert [(i.name, i.count_ingress, i.count_egress) for i in plan_interfaces(["veth1"], net)] == [("veth1", True, True)]
    assert plan["wg0"].l2_len == 0 and plan["eth0"].l2_len == 14
    assert [i.name for i in plan_interfaces(["br0"], net)] == ["br0", "veth1"]
    with pytest.raises(UsageError, match="no interface named 'nope'"):
        plan_interfaces(["nope"], net)
