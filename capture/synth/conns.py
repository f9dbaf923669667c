"""TCP connections: keep-alive pools per client pod and edge, their lives and counters.

A client pod keeps `edge.pool` connections to an edge's Service. Opening one costs a DNS lookup
(see dns.py) and picks a backend pod at connect() time (PreferClose). A connection lives until
the client recycles it (exponential lifetime), or the server pod starts terminating (the server
closes it), or the client pod does; the pool then reconnects after a few milliseconds. Requests
on one connection never overlap (HTTP/1.1 without pipelining): see requests.py.

IPs in rows: socket-level load balancing (Cilium kube-proxy replacement, GKE Dataplane V2)
translates the ClusterIP at connect(), so the client's socket, the server's socket and the
packets all carry the backend pod's IP and target port. Both rows of a connection therefore
have the same 4-tuple; ClusterIPs only appear in k8s_services and DNS answers. `conn_id` is
`<node>-<socket cookie>` (per node, increasing): the two rows of a connection have different ids
and join through the 4-tuple, as they would in a merged real tape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import wire
from .cluster import Pod
from .traffic import Edge

US = 1_000
MS = 1_000_000
ROUTER_MAC = "02:00:5e:00:00:01"


@dataclass
class Endpoint:
    """One side of a connection as the flow rows need it."""

    ip: str
    port: int
    pod: Pod | None  # None: outside the cluster

    def observer(self, sending: bool) -> tuple[int, str, int, str, str, str] | None:
        """(node idx, iface, ifindex, direction, src_mac, dst_mac) where this side's node counts a packet."""
        p = self.pod
        if p is None:
            return None
        if p.workload.host_network:
            return (p.node.idx, "eth0", 2, "egress", p.node.mac, ROUTER_MAC) if sending else (p.node.idx, "eth0", 2, "ingress", ROUTER_MAC, p.node.mac)
        return (p.node.idx, p.ifname, p.ifindex, "ingress", p.mac, p.if_mac) if sending else (p.node.idx, p.ifname, p.ifindex, "egress", p.if_mac, p.mac)


@dataclass
class Conn:
    idx: int
    edge: Edge
    client: Endpoint
    server: Endpoint
    t_open: int
    t_close: int
    closer: str  # 'client' or 'server'
    rtt: int
    next_t: int
    cid_client: str
    cid_server: str | None
    host: str
    c_bytes: int = 0
    s_bytes: int = 0
    c_segs: int = 0
    s_segs: int = 0
    ts_end: int | None = None
    purge_at: int | None = None  # after this time no packet of it is pending

    @property
    def client_pod(self) -> Pod:
        return self.client.pod  # type: ignore[return-value]

    @property
    def server_pod(self) -> Pod | None:
        return self.server.pod


@dataclass
class Pool:
    edge: Edge
    client: Pod
    target: Pod | None  # direct edges: the one pod this pool connects to
    due: int
    conns: list[Conn] = field(default_factory=list)


def rtt_between(a: Pod, b: Pod | None, external_rtt: int, rng: np.random.Generator) -> int:
    if b is None:
        base = external_rtt
    elif a.node is b.node:
        base = 40 * US
    elif a.node.zone == b.node.zone:
        base = 250 * US
    elif a.node.region == b.node.region:
        base = 900 * US
    else:
        base = 24 * MS
    return int(base * (0.9 + 0.2 * rng.random()))


class Messages:
    """TCP segments of a slice, one entry per (connection, direction, time), before aggregation."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, conn: np.ndarray, direction: np.ndarray | int, t: np.ndarray, pkts: np.ndarray, nbytes: np.ndarray, flags: int) -> None:
        n = len(t)
        if n == 0:
            return
        d = np.full(n, direction, np.int8) if np.isscalar(direction) else direction.astype(np.int8)
        self.parts.append((conn.astype(np.int64), d, t.astype(np.int64), pkts.astype(np.int64), nbytes.astype(np.int64), np.full(n, flags, np.int64)))

    def take(self) -> tuple[np.ndarray, ...] | None:
        if not self.parts:
            return None
        cols = tuple(np.concatenate([p[i] for p in self.parts]) for i in range(6))
        self.parts = []
        return cols


def handshake(c: Conn, msgs: Messages, tls: bool) -> None:
    """SYN / SYN-ACK / ACK (and the TLS handshake) into packets and counters."""
    one = np.array([c.idx])
    t, r = c.t_open, c.rtt
    msgs.add(one, 0, np.array([t]), np.array([1]), np.array([wire.HDR + wire.SYN_EXTRA]), wire.SYN)
    msgs.add(one, 1, np.array([t + r // 2]), np.array([1]), np.array([wire.HDR + wire.SYN_EXTRA]), wire.SYN | wire.ACK)
    msgs.add(one, 0, np.array([t + r]), np.array([1]), np.array([wire.HDR]), wire.ACK)
    c.c_segs += 2
    c.s_segs += 1
    if tls:
        for k, (side, payload) in enumerate(((0, wire.TLS_CLIENT_HELLO), (1, wire.TLS_SERVER_FLIGHT), (0, wire.TLS_CLIENT_FINISHED))):
            message(c, msgs, side, t + r + k * (r // 2), payload)


def message(c: Conn, msgs: Messages, side: int, t: int, payload: int) -> None:
    """One application message from `side` (0 client, 1 server) and its ACKs."""
    segs = int(wire.data_segments(np.array([payload]))[0])
    acks = int(wire.acks_for(np.array([segs]))[0])
    one = np.array([c.idx])
    msgs.add(one, side, np.array([t]), np.array([segs]), np.array([payload + wire.HDR * segs]), wire.PSH | wire.ACK)
    msgs.add(one, 1 - side, np.array([t + c.rtt // 2]), np.array([acks]), np.array([wire.HDR * acks]), wire.ACK)
    if side == 0:
        c.c_bytes += payload
        c.c_segs += segs
        c.s_segs += acks
    else:
        c.s_bytes += payload
        c.s_segs += segs
        c.c_segs += acks


def teardown(c: Conn, msgs: Messages) -> None:
    """FIN from the closer, FIN from the peer, last ACK from the closer."""
    one = np.array([c.idx])
    a = 0 if c.closer == "client" else 1
    t, r = c.t_close, c.rtt
    msgs.add(one, a, np.array([t]), np.array([1]), np.array([wire.HDR]), wire.FIN | wire.ACK)
    msgs.add(one, 1 - a, np.array([t + r // 2]), np.array([1]), np.array([wire.HDR]), wire.FIN | wire.ACK)
    msgs.add(one, a, np.array([t + r]), np.array([1]), np.array([wire.HDR]), wire.ACK)
    if a == 0:
        c.c_segs += 2
        c.s_segs += 1
    else:
        c.s_segs += 2
        c.c_segs += 1
    c.ts_end = t + r
    c.purge_at = t + r


def connection_rows(c: Conn, open_at_end: bool) -> list[tuple[str, dict]]:
    """(node name, row) for each local endpoint of a connection."""
    cp, sp = c.client_pod, c.server_pod
    common = {
        "ts_end": None if open_at_end else c.ts_end,
        "client_ip": c.client.ip, "client_port": c.client.port, "server_ip": c.server.ip, "server_port": c.server.port,
        "srtt_us": c.rtt // US, "retransmits": 0, "close_state": "open" if open_at_end else "closed",
    }
    rows = [(cp.node.name, dict(common, conn_id=c.cid_client, ts_start=c.t_open, role="client", pid=cp.pid, comm=cp.workload.comm,
                                cgroup_id=cp.cgroup_id, container_id=cp.container_id, bytes_sent=c.c_bytes, bytes_received=c.s_bytes,
                                segs_sent=c.c_segs, segs_received=c.s_segs, connect_latency_ns=c.rtt))]
    if sp is not None:
        rows.append((sp.node.name, dict(common, conn_id=c.cid_server, ts_start=c.t_open + c.rtt, role="server", pid=sp.pid, comm=sp.workload.comm,
                                        cgroup_id=sp.cgroup_id, container_id=sp.container_id, bytes_sent=c.s_bytes, bytes_received=c.c_bytes,
                                        segs_sent=c.s_segs, segs_received=c.c_segs, connect_latency_ns=None)))
    return rows
