"""Requests on connections, vectorised: a slice's requests for many connections at once.

Each connection is a closed loop: request at t, the server sees it at t + rtt/2 and answers
after its service time L (log-normal per edge), the client sees the response at t + rtt + L,
then waits a think time (exponential, or a fixed period for scrapes) before the next request.
So requests on a connection never overlap and a slower server means fewer requests, as in a
real keep-alive client. The client's http row has latency rtt + L, the server's L.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa

from . import wire
from .conns import Conn, Messages

TS = pa.timestamp("ns", tz="UTC")


@dataclass
class PathTable:
    """Every edge's (method, path) list in one dictionary, so rows take() from it."""

    methods: pa.Array
    paths: pa.Array
    offsets: dict[int, int]

    @classmethod
    def build(cls, edges) -> "PathTable":
        methods, paths, offsets = [], [], {}
        for e in edges:
            offsets[e.idx] = len(paths)
            for m, p in e.paths:
                methods.append(m)
                paths.append(p)
        return cls(pa.array(methods, pa.string()), pa.array(paths, pa.string()), offsets)


def generate(
    conns: list[Conn],
    t1: int,
    end: int,
    rng: np.random.Generator,
    msgs: Messages,
    latency_factor: Callable[[Conn], float],
    error_rate: Callable[[Conn], float],
    paths: PathTable,
) -> dict[str, np.ndarray] | None:
    """Requests starting before t1 on `conns`; updates counters and next_t. Returns request arrays."""
    if not conns:
        return None
    n = len(conns)
    next_t = np.array([c.next_t for c in conns], np.int64)
    limit = np.array([min(c.t_close, end) for c in conns], np.int64)
    mu = np.array([c.edge.lat_mu for c in conns]) + np.log([latency_factor(c) for c in conns])
    sigma = np.array([c.edge.lat_sigma for c in conns])
    rtt = np.array([c.rtt for c in conns], np.int64)
    period = np.array([c.edge.periodic_ns for c in conns], np.int64)
    mean_lat = np.exp(mu + sigma**2 / 2)
    gap_mean = np.array([c.edge.gap_ns for c in conns], np.float64)
    active = next_t < np.minimum(t1, limit)
    out_li, out_t, out_l = [], [], []
    while active.any():
        idx = np.nonzero(active)[0]
        cycle_mean = np.where(period[idx] > 0, period[idx], rtt[idx] + mean_lat[idx] + gap_mean[idx])
        m = int(min(4096, max(4, np.max((t1 - next_t[idx]) / cycle_mean) * 1.3 + 4)))
        k = len(idx)
        lat = np.exp(mu[idx, None] + sigma[idx, None] * rng.standard_normal((k, m))).astype(np.int64) + 20_000
        gaps = rng.exponential(1.0, (k, m)) * gap_mean[idx, None]
        cyc = np.where(period[idx, None] > 0, period[idx, None], rtt[idx, None] + lat + gaps.astype(np.int64))
        starts = next_t[idx, None] + np.concatenate([np.zeros((k, 1), np.int64), np.cumsum(cyc, axis=1)[:, :-1]], axis=1)
        ok = (starts < t1) & (starts + rtt[idx, None] + lat < limit[idx, None])
        ok = np.cumprod(ok, axis=1).astype(bool)
        cnt = ok.sum(axis=1)
        rows, cols = np.nonzero(ok)
        out_li.append(idx[rows])
        out_t.append(starts[rows, cols])
        out_l.append(lat[rows, cols])
        full = cnt == m
        last = np.arange(k)
        # where the prefix stopped: a start beyond the slice carries over; a request that would
        # outlive the connection ends it (no more requests on it)
        stop = np.minimum(cnt, m - 1)
        next_start = np.where(full, starts[last, m - 1] + cyc[last, m - 1], starts[last, stop])
        beyond_limit = (~full) & (starts[last, stop] + rtt[idx] + lat[last, stop] >= limit[idx]) & (starts[last, stop] < t1)
        next_t[idx] = np.where(beyond_limit, np.iinfo(np.int64).max // 4, next_start)
        active[:] = False
        active[idx[full]] = next_t[idx[full]] < np.minimum(t1, limit[idx[full]])
    for c, t in zip(conns, next_t.tolist()):
        c.next_t = t
    if not out_li or sum(len(x) for x in out_li) == 0:
        return None
    li = np.concatenate(out_li)
    order = np.lexsort((np.concatenate(out_t), li))
    li, t, lat = li[order], np.concatenate(out_t)[order], np.concatenate(out_l)[order]
    r = len(li)

    # sizes, paths and status per edge
    edge_of = np.array([c.edge.idx for c in conns])[li]
    req_mu = np.array([c.edge.req_mu for c in conns])[li]
    resp_mu = np.array([c.edge.resp_mu for c in conns])[li]
    ssig = np.array([c.edge.size_sigma for c in conns])[li]
    req = np.maximum(40, np.exp(req_mu + ssig * rng.standard_normal(r))).astype(np.int64)
    resp = np.maximum(60, np.exp(resp_mu + ssig * rng.standard_normal(r))).astype(np.int64)
    path = np.zeros(r, np.int64)
    is_http = np.array([c.edge.http for c in conns])[li]
    for e_idx in np.unique(edge_of[is_http]).tolist():
        sel = edge_of == e_idx
        e = next(c.edge for c in conns if c.edge.idx == e_idx)
        path[sel] = paths.offsets[e_idx] + rng.choice(len(e.paths), size=int(sel.sum()), p=e.path_p)
    methods = paths.methods.take(pa.array(path)).to_numpy(zero_copy_only=False)
    is_post = methods == "POST"
    u = rng.random(r)
    status = np.where(is_post, 201, 200)
    has_id = np.char.count(paths.paths.take(pa.array(path)).to_numpy(zero_copy_only=False).astype(str), "/") >= 3
    status = np.where(has_id & (u < 0.01), 404, status)
    status = np.where(u > 0.999, 500, status)
    err = np.array([error_rate(c) for c in conns])[li]
    if err.any():
        burst = rng.random(r) < err
        status = np.where(burst, 503, status)
        resp = np.where(burst, 150 + (resp % 50), resp)

    # TLS turns plaintext into record bytes on the wire
    tls = np.array([c.edge.protocol == "https" for c in conns])[li]
    wire_req = np.where(tls, wire.tls_payload(req), req)
    wire_resp = np.where(tls, wire.tls_payload(resp), resp)
    segs_q, segs_r = wire.data_segments(wire_req), wire.data_segments(wire_resp)
    acks_q, acks_r = wire.acks_for(segs_q), wire.acks_for(segs_r)
    gidx = np.array([c.idx for c in conns], np.int64)[li]
    rt = rtt[li]
    msgs.add(gidx, 0, t, segs_q, wire_req + wire.HDR * segs_q, wire.PSH | wire.ACK)
    msgs.add(gidx, 1, t + rt // 2, acks_q, wire.HDR * acks_q, wire.ACK)
    msgs.add(gidx, 1, t + rt // 2 + lat, segs_r, wire_resp + wire.HDR * segs_r, wire.PSH | wire.ACK)
    msgs.add(gidx, 0, t + rt + lat, acks_r, wire.HDR * acks_r, wire.ACK)
    c_bytes = np.bincount(li, wire_req, n).astype(np.int64)
    s_bytes = np.bincount(li, wire_resp, n).astype(np.int64)
    c_segs = np.bincount(li, segs_q + acks_r, n).astype(np.int64)
    s_segs = np.bincount(li, segs_r + acks_q, n).astype(np.int64)
    for i, c in enumerate(conns):
        c.c_bytes += int(c_bytes[i])
        c.s_bytes += int(s_bytes[i])
        c.c_segs += int(c_segs[i])
        c.s_segs += int(s_segs[i])
    return {"li": li, "t": t, "lat": lat, "rtt": rt, "req": req, "resp": resp, "status": status, "path": path, "http": is_http, "tls": tls}


def http_tables(conns: list[Conn], rq: dict[str, np.ndarray], paths: PathTable, node_names: list[str]) -> list[tuple[str, pa.Table]]:
    """The http rows of a request batch: client side, and server side for in-cluster servers."""
    keep = rq["http"]
    if not keep.any():
        return []
    li = rq["li"][keep]
    t, lat, rt = rq["t"][keep], rq["lat"][keep], rq["rtt"][keep]
    path = pa.array(rq["path"][keep])
    col = lambda f, typ=pa.string(): pa.array([f(c) for c in conns], typ)  # noqa: E731
    take = lambda arr: arr.take(pa.array(li))  # noqa: E731
    client_ip, server_ip = take(col(lambda c: c.client.ip)), take(col(lambda c: c.server.ip))
    client_port = take(col(lambda c: c.client.port, pa.uint16()))
    server_port = take(col(lambda c: c.server.port, pa.uint16()))
    host = take(col(lambda c: c.host))
    method, p = paths.methods.take(path), paths.paths.take(path)
    status = pa.array(rq["status"][keep].astype(np.uint16))
    req_b, resp_b = pa.array(rq["req"][keep]), pa.array(rq["resp"][keep])
    tls = pa.array(rq["tls"][keep])
    ctype = pa.array(np.where(np.array([c.edge.protocol == "metrics" for c in conns])[li], "text/plain; version=0.0.4", "application/json"))
    ua = take(col(lambda c: {"k6": "k6/0.52.0 (https://k6.io/)", "prometheus": "Prometheus/2.53.0", "node": "node-fetch/1.0"}.get(c.client_pod.workload.comm, "Go-http-client/1.1")))
    out = []
    sides = [("client", t, rt + lat, col(lambda c: c.client_pod.node.idx, pa.int64()), col(lambda c: c.cid_client), col(lambda c: c.client_pod.pid, pa.int32()), col(lambda c: c.client_pod.workload.comm))]
    has_server = np.array([c.server_pod is not None for c in conns])[li]
    if has_server.any():
        sides.append(("server", t + rt // 2, lat, col(lambda c: c.server_pod.node.idx if c.server_pod else -1, pa.int64()),
                      col(lambda c: c.cid_server), col(lambda c: c.server_pod.pid if c.server_pod else None, pa.int32()),
                      col(lambda c: c.server_pod.workload.comm if c.server_pod else None)))
    for side, ts, latency, node_idx, cid, pid, comm in sides:
        tbl = pa.table({
            "ts_request": pa.array(ts, TS), "ts_response": pa.array(ts + latency, TS), "latency_ns": pa.array(latency),
            "conn_id": take(cid), "client_ip": client_ip, "client_port": client_port, "server_ip": server_ip, "server_port": server_port,
            "pid": take(pid), "comm": take(comm), "side": pa.array(np.full(len(li), side)), "tls": tls,
            "http_version": pa.array(np.full(len(li), "HTTP/1.1")), "method": method, "host": host, "path": p, "status": status,
            "request_bytes": req_b, "response_bytes": resp_b, "traceparent": pa.nulls(len(li), pa.string()),
            "user_agent": ua, "content_type": ctype,
        })
        nodes = take(node_idx).to_numpy()
        if side == "server":
            tbl, nodes = tbl.filter(pa.array(has_server)), nodes[has_server]
        out += split_by_node(tbl, nodes, node_names)
    return out


def split_by_node(tbl: pa.Table, nodes: np.ndarray, node_names: list[str]) -> list[tuple[str, pa.Table]]:
    """One table per node, rows in their original order.

    Each node's rows are gathered with take() into buffers of their own: a zero-copy slice of
    the all-node table would keep every node's rows alive for as long as the writer buffers
    any one node's (until that node's row group fills), which made peak memory grow with the
    tape. Same rows, order and single-chunk columns as a slice: the parts are byte-identical.
    """
    order = np.argsort(nodes, kind="stable")
    uniq, first = np.unique(nodes[order], return_index=True)
    bounds = list(first) + [len(nodes)]
    return [(node_names[int(u)], tbl.take(pa.array(order[bounds[i]:bounds[i + 1]]))) for i, u in enumerate(uniq)]
