"""Request journeys: nested call trees with their ground truth (`flowtape synth --journeys R`).

A journey starts at a client of the call graph that nobody calls (the load generator) and
follows the HTTP edges down: each server handles its request on a thread of its own (a
thread-per-request server: the `tid` of its server row is the `tid` of the client rows of the
calls it makes while handling it), calls one to three of its HTTP backends one after another,
then answers. Every call is a connection of its own (ports 61000-65535, which the regular
traffic never uses) with both sides' `connections` and `http` rows; the request carries a W3C
`traceparent` (unless `journeys_traceparent` is off) and both sides share the TCP sequence
numbers of the request's and response's first bytes. Journey connections have no `flows` rows.

The truth (truth.json `journeys`): every span as the key of its row
(`node|side|ts_request_ns|client_ip|client_port`), its parent's key (null for a root), the
application's span id of client spans and the trace id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .cluster import Pod
from .conns import rtt_between
from .sim import Simulation

MS = 1_000_000
S = 1_000_000_000
PORTS = (61000, 65535)


@dataclass
class _State:
    rng: np.random.Generator
    traceparent: bool
    http: list[tuple[str, dict]] = field(default_factory=list)
    conns: list[tuple[str, dict]] = field(default_factory=list)
    truth: list[dict] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    threads: dict[str, list[int]] = field(default_factory=dict)  # pod uid -> busy-until per thread
    n_conn: int = 0

    def port(self, pod: Pod) -> int:
        p = self.ports.get(pod.uid, PORTS[0] + int(self.rng.integers(0, 2000)))
        p = PORTS[0] + (p - PORTS[0] + 1) % (PORTS[1] - PORTS[0])
        self.ports[pod.uid] = p
        return p

    def thread(self, pod: Pod, start: int, end: int) -> int:
        """A thread of `pod`'s pool free over [start, end] (a new one if none is)."""
        busy = self.threads.setdefault(pod.uid, [])
        for i, until in enumerate(busy):
            if until < start:
                busy[i] = end
                return pod.pid + 1 + i
        busy.append(end)
        return pod.pid + len(busy)


def _key(node: str, side: str, t: int, ip: str, port: int) -> str:
    return f"{node}|{side}|{t}|{ip}|{port}"


def generate(sim: Simulation, rate: float, traceparent: bool, seed: int) -> tuple[list, dict]:
    """(batches for the writer, the truth) of journeys entering at `rate` per second."""
    st = _State(np.random.default_rng([seed, 77]), traceparent)
    edges = [e for e in sim.edges if e.protocol == "http" and e.server is not None and not e.direct and e.paths]
    called = {e.server.key for e in edges}
    children: dict[str, list] = {}
    for e in edges:
        children.setdefault(e.client.key, []).append(e)
    roots = [e for e in edges if e.client.key not in called]
    if not roots or rate <= 0:
        return [], {"count": 0, "traceparent": traceparent, "spans": []}
    n = int((sim.end - sim.start) / S * rate)
    count = 0
    for i in range(n):
        t = sim.start + int((i + st.rng.random()) * S / rate)
        e = roots[int(st.rng.integers(0, len(roots)))]
        callers = [q for q in sim.cluster.pods_of(e.client.key) if q.alive(t) and q.alive(t + 10 * S)]
        if not callers or t + 10 * S > sim.end:
            continue
        caller = callers[int(st.rng.integers(0, len(callers)))]
        trace = "%016x%016x" % (int(st.rng.integers(1, 1 << 62)), int(st.rng.integers(0, 1 << 62))) if traceparent else None
        spans: list[dict] = []
        if _call(sim, st, e, caller, caller.pid, t, trace, None, children, spans, 0) is None:  # the load generator's main thread
            continue
        st.truth.append({"trace_id": trace, "spans": spans})
        count += 1
    batches = Simulation._row_batches("http", st.http) + Simulation._row_batches("connections", st.conns)  # noqa: SLF001
    return batches, {"count": count, "traceparent": traceparent, "spans_total": sum(len(j["spans"]) for j in st.truth), "journeys": st.truth}


def _call(sim: Simulation, st: _State, e, caller: Pod, tid: int, t: int, trace: str | None, parent_key: str | None,
          children: dict, spans: list, depth: int) -> tuple[int, dict] | None:
    """Make the call of edge `e` from `caller` (thread `tid`) at `t`; returns when the caller saw
    the response and the client row, or None when no backend was serving."""
    rng = st.rng
    server = sim.cluster.endpoint_for(e.server, caller.zone_idx, t, rng)
    if server is None:
        return None
    rtt = rtt_between(caller, server, 0, rng)
    t_srv = t + rtt // 2
    # the handler: a little work, its own calls one after another, a little more, the answer
    now = t_srv + int(rng.uniform(0.05, 0.5) * MS)
    kids = children.get(e.server.key, []) if depth < 4 else []
    k = min(len(kids), int(rng.integers(1, 4))) if kids else 0
    picked = [kids[j] for j in rng.choice(len(kids), size=k, replace=False)] if k else []
    client_port = st.port(caller)
    span = "%016x" % int(rng.integers(1, 1 << 62)) if trace else None
    c_key = _key(caller.node.name, "client", t, caller.ip, client_port)
    s_key = _key(server.node.name, "server", t_srv, caller.ip, client_port)
    spans.append({"key": c_key, "parent": parent_key, "span_id": span})
    spans.append({"key": s_key, "parent": c_key, "span_id": None})
    made = []  # the client rows of the handler's calls: they get its thread once its end is known
    for child in picked:
        r = _call(sim, st, child, server, 0, now, trace, s_key, children, spans, depth + 1)
        if r is not None:
            now = r[0] + int(rng.uniform(0.02, 0.3) * MS)
            made.append(r[1])
    self_ns = int(np.exp(e.lat_mu + e.lat_sigma * rng.standard_normal())) if not picked else int(rng.uniform(0.1, 1.0) * MS)
    t_resp_srv = max(now, t_srv) + self_ns
    t_resp_cli = t_resp_srv + rtt // 2
    path = e.paths[int(rng.choice(len(e.paths), p=e.path_p))] if e.path_p is not None else e.paths[0]
    method, p = path
    status = 201 if method == "POST" else 200
    tp = f"00-{trace}-{span}-01" if trace else None
    seq_q, seq_r = int(rng.integers(0, 1 << 32)), int(rng.integers(0, 1 << 32))
    st.n_conn += 1
    cid_c, cid_s = f"{caller.node.name}-j{st.n_conn}", f"{server.node.name}-j{st.n_conn}"
    req_b, resp_b = int(rng.integers(200, 600)), int(rng.integers(300, 9000))
    common = {"client_ip": caller.ip, "client_port": client_port, "server_ip": server.ip, "server_port": e.port, "tls": False,
              "http_version": "HTTP/1.1", "method": method, "host": f"{e.server.name}:{e.port}", "path": p, "status": status,
              "request_bytes": req_b, "response_bytes": resp_b, "traceparent": tp if st.traceparent else None,
              "user_agent": "python-requests/2.31", "content_type": "application/json", "request_seq": seq_q, "response_seq": seq_r}
    srv_tid = st.thread(server, t_srv, t_resp_srv)
    for row in made:
        row["tid"] = srv_tid
    client_row = dict(common, ts_request=t, ts_response=t_resp_cli, latency_ns=t_resp_cli - t, conn_id=cid_c,
                      pid=caller.pid, comm=caller.workload.comm, side="client", tid=tid)
    st.http.append((caller.node.name, client_row))
    st.http.append((server.node.name, dict(common, ts_request=t_srv, ts_response=t_resp_srv, latency_ns=t_resp_srv - t_srv, conn_id=cid_s,
                                           pid=server.pid, comm=server.workload.comm, side="server", tid=srv_tid)))
    conn = {"client_ip": caller.ip, "client_port": client_port, "server_ip": server.ip, "server_port": e.port, "srtt_us": rtt // 1000,
            "retransmits": 0, "close_state": "closed", "segs_sent": 4, "segs_received": 4}
    t_open, t_close = t - rtt - 100_000, t_resp_cli + 200_000
    st.conns.append((caller.node.name, dict(conn, conn_id=cid_c, ts_start=t_open, ts_end=t_close + rtt, role="client", pid=caller.pid,
                                            comm=caller.workload.comm, cgroup_id=caller.cgroup_id, container_id=caller.container_id,
                                            bytes_sent=req_b, bytes_received=resp_b, connect_latency_ns=rtt)))
    st.conns.append((server.node.name, dict(conn, conn_id=cid_s, ts_start=t_open + rtt, ts_end=t_close + rtt // 2, role="server", pid=server.pid,
                                            comm=server.workload.comm, cgroup_id=server.cgroup_id, container_id=server.container_id,
                                            bytes_sent=resp_b, bytes_received=req_b, connect_latency_ns=None)))
    return t_resp_cli, client_row
