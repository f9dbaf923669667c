"""The simulation loop: 5 s slices of traffic over the precomputed cluster, as Arrow batches.

Per slice: open the connections pools are missing (DNS lookup first), generate the requests
of every open connection (requests.py), close connections whose time has come and reopen
them, then drain the slice's packets into flow rows. Only open connections, pools and packets
not yet drained are held, so memory stays flat however long the tape is.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from . import k8s
from .cluster import Cluster, Pod
from .conns import Conn, Endpoint, Messages, Pool, connection_rows, handshake, rtt_between, teardown
from .dns import DnsBatch, Resolver
from .flows import FlowAggregator
from .incidents import Incident
from .params import SLICE_NS, Params
from .requests import PathTable, generate, http_tables
from .traffic import EXTERNALS, UNEXPECTED, Edge, add_unexpected_egress, build_edges

MS = 1_000_000
S = 1_000_000_000
PER_CONN_RPS = 20.0  # a keep-alive connection is reused until it carries about this rate
NEVER = np.iinfo(np.int64).max // 4

Batch = list[tuple[str, str, object]]  # (table, node, Arrow table or list of row dicts)


class Simulation:
    def __init__(self, p: Params, incidents: list[Incident]):
        self.p = p
        self.start, self.end = p.start_ns, p.end_ns
        self.incidents = {i.kind: i for i in incidents}
        rngs = [np.random.default_rng([p.seed, k]) for k in range(5)]
        self.rng, self.dns_rng = rngs[3], rngs[4]
        cz = self.incidents.get("cross-zone")
        bad = None
        if cz is not None:
            name = cz.target or "api"
            key = name if "/" in name else f"shop/{name}"
            zone = int(cz.knob)
            if not 0 <= zone < p.zones:
                from ...errors import UsageError

                raise UsageError(f"--incident cross-zone: zone must be 0..{p.zones - 1}, got {zone}")
            bad = (key, cz.start, zone)
            self._cz_key = key
        self.cluster = Cluster(p, rngs[1], bad_rollout=bad)
        self.edges: list[Edge] = build_edges(self.cluster, rngs[2], p.rps)
        self._setup_incidents()
        self._size_pools()
        self.paths = PathTable.build(self.edges)
        ext = {e.name: e for e in EXTERNALS + (UNEXPECTED,)}
        self.resolver = Resolver(self.cluster, ext, self.dns_rng)
        self.node_names = [n.name for n in self.cluster.nodes]
        self.pools: dict[tuple[int, str, str], Pool] = {}
        self.conns: dict[int, Conn] = {}
        self.next_conn = 0
        self.cookies = [int(x) for x in rngs[0].integers(1 << 12, 1 << 20, len(self.cluster.nodes))]
        self.ports: dict[str, int] = {}
        self.msgs = Messages()
        self.flows = FlowAggregator(self.node_names)
        self.rows_emitted = 0

    # --- incidents -----------------------------------------------------------------------

    def _setup_incidents(self) -> None:
        from ...errors import UsageError

        W = self.cluster.workloads
        backends = [w.name for k, w in W.items() if w.namespace == "shop" and w.name not in ("loadgen", "frontend", "api")]
        inc = self.incidents
        if "cross-zone" in inc:
            i = inc["cross-zone"]
            if self._cz_key not in W:
                raise UsageError(f"--incident cross-zone: no workload named {i.target!r}")
            w = W[self._cz_key]
            zone = int(i.knob)
            ro = next(r for r in self.cluster.rollouts if r.target_zone is not None)
            old = [q for q in self.cluster.pods_of(w.key) if q.terminating is not None and ro.start <= q.terminating and q.zone_idx != zone and q.created < ro.start]
            i.start = min(q.terminating for q in old)
            i.details = {"target": {"workload": w.key, "zone": self.cluster.zones[zone]},
                         "rollout": {"start_ns": ro.start, "end_ns": ro.end, "old_replicaset": ro.old_rs, "new_replicaset": ro.new_rs},
                         "effect": {"metric": "cross-zone share of requests and bytes into the workload", "baseline": 0.0, "expected": "> 0.5 for clients outside the zone"},
                         "detect": f"http rows whose server pod ({w.name}) is in another zone than the client pod: none before start_ns, most after"}
        if "latency" in inc:
            i = inc["latency"]
            target = i.target or (f"api->{backends[0]}" if backends else "frontend->api")
            a, _, b = target.partition("->")
            match = [e for e in self.edges if e.client.name == a and e.server is not None and e.server.name == b]
            if not match:
                raise UsageError(f"--incident latency: no edge {target!r} (edges: {', '.join(e.name for e in self.edges if e.server)})")
            i.details = {"target": {"edge": target, "client": match[0].client.key, "server": match[0].server.key},
                         "effect": {"metric": "server time to first response byte on the edge", "factor": i.knob, "p50_ms": math.exp(match[0].lat_mu) / MS * i.knob},
                         "detect": "p50/p99 of http latency_ns on this edge rise by the factor inside the window only"}
            self._lat_edges = {e.idx for e in match}
        if "errors" in inc:
            i = inc["errors"]
            name = i.target or (backends[0] if backends else "api")
            key = next((k for k, w in W.items() if w.name == name or k == name), None)
            if key is None or W[key].service is None:
                raise UsageError(f"--incident errors: no served workload named {name!r}")
            i.details = {"target": {"workload": key}, "effect": {"metric": "share of responses with status 503", "rate": i.knob, "baseline_5xx": 0.001},
                         "detect": "5xx share of http rows served by the workload jumps inside the window"}
            self._err_key = key
        if "dns" in inc:
            i = inc["dns"]
            i.details = {"target": {"service": "kube-system/kube-dns"}, "effect": {"metric": "share of DNS queries answered SERVFAIL", "rate": i.knob, "baseline": 0.0},
                         "detect": "dns rows with rcode_name SERVFAIL: none outside the window; failed lookups delay new connections"}
        if "egress" in inc:
            i = inc["egress"]
            name = i.target or (backends[-1] if backends else "api")
            key = next((k for k, w in W.items() if w.name == name or k == name), None)
            if key is None:
                raise UsageError(f"--incident egress: no workload named {name!r}")
            add_unexpected_egress(self.edges, self.cluster, key, (i.start, i.end), i.knob)
            i.details = {"target": {"workload": key, "host": UNEXPECTED.name, "ips": list(UNEXPECTED.ips), "port": 443},
                         "effect": {"metric": "connections, TLS SNI and DNS lookups for a host never contacted otherwise", "rate_rps": i.knob},
                         "detect": f"dns qname / tls sni {UNEXPECTED.name} and connections to {UNEXPECTED.ips[0]} only inside the window"}

    def latency_factor(self, c: Conn, t0: int) -> float:
        i = self.incidents.get("latency")
        return i.knob if i is not None and c.edge.idx in self._lat_edges and i.active(t0) else 1.0

    def error_rate(self, c: Conn, t0: int) -> float:
        i = self.incidents.get("errors")
        if i is not None and c.server_pod is not None and c.server_pod.workload.key == self._err_key and i.active(t0):
            return i.knob
        return 0.0

    def dns_fail(self, t: int) -> float:
        i = self.incidents.get("dns")
        return i.knob if i is not None and i.active(t) else 0.0

    # --- pools -----------------------------------------------------------------------------

    def _size_pools(self) -> None:
        for e in self.edges:
            n_clients = max(1, len(e.client.zones) if e.client.kind != "DaemonSet" else len(self.cluster.nodes))
            if e.periodic_ns:
                e.pool = 1
                continue
            e.pool = max(1, math.ceil(e.rate / PER_CONN_RPS / n_clients))
            per_conn = e.rate / (n_clients * e.pool)
            e.gap_ns = max(200_000.0, S / per_conn - e.mean_latency_ns() - 500_000)

    def _refresh_pools(self, t0: int, t1: int) -> None:
        c = self.cluster
        for e in self.edges:
            if e.active is not None and not (e.active[0] < t1 and t0 < e.active[1]):
                continue
            for pod in c.pods_of(e.client.key):
                if pod.running >= t1 or (pod.terminating is not None and pod.terminating <= t0):
                    continue
                targets = [q for q in c.pods_of(e.server.key) if q.running < t1 and (q.terminating is None or q.terminating > t0)] if e.direct else [None]
                for target in targets:
                    key = (e.idx, pod.uid, target.uid if target else "")
                    if key not in self.pools:
                        first = max(pod.ready, self.start, e.active[0] if e.active else 0, target.ready if target else 0)
                        jitter = int(self.rng.uniform(0, 2 * S if first == self.start else 0.5 * S))
                        self.pools[key] = Pool(e, pod, target, first + jitter)
        for key in [k for k, p in self.pools.items() if not p.conns and p.client.terminating is not None and p.client.terminating <= t0]:
            del self.pools[key]

    def _client_port(self, pod: Pod) -> int:
        port = self.ports.get(pod.uid)
        if port is None:
            port = int(self.rng.integers(32768, 60000))
        port = 32768 + (port - 32768 + 1 + int(self.rng.integers(0, 3))) % (61000 - 32768)
        self.ports[pod.uid] = port
        return port

    def _open(self, pool: Pool, t1: int, dns: DnsBatch, tls_rows: list) -> list[Conn]:
        e, pod, rng = pool.edge, pool.client, self.rng
        opened: list[Conn] = []
        while len(pool.conns) < e.pool and pool.due < t1:
            t = pool.due
            stop = min(x for x in (pod.terminating, e.active[1] if e.active else None, self.end) if x is not None)
            if t < pod.running or t >= stop - S:
                pool.due = NEVER
                break
            if pool.target is not None and not pool.target.serving(t):
                pool.due = NEVER if pool.target.terminating is not None and t >= pool.target.terminating else t + S
                continue
            addr = None
            if e.dns_name is not None:
                t, addr = self.resolver.lookup(pod, e.dns_name, t, self.dns_fail, dns)
                if addr is None:
                    pool.due = t + S  # the client retries its dial after a second
                    continue
            if e.external is not None:
                server = Endpoint(addr, 443, None)
            else:
                target = pool.target or self.cluster.endpoint_for(e.server, pod.zone_idx, t, rng)
                if target is None:
                    pool.due = t + S
                    continue
                server = Endpoint(target.ip, e.port, target)
            rtt = rtt_between(pod, server.pod, 12 * MS if e.external else 0, rng)
            if t + 4 * rtt >= stop:
                pool.due = NEVER
                break
            life = max(2 * S, int(rng.exponential(e.lifetime_ns))) if e.lifetime_ns < 1e17 else NEVER
            t_close, closer = t + life, "client"
            if e.active is not None and e.active[1] - 100 * MS < t_close:
                t_close = e.active[1] - 100 * MS
            if pod.terminating is not None and pod.terminating < t_close:
                t_close, closer = pod.terminating + int(rng.uniform(1, 30) * MS), "client"
            sp = server.pod
            if sp is not None and sp.terminating is not None and sp.terminating < t_close:
                t_close, closer = sp.terminating + int(rng.uniform(1, 30) * MS), "server"
            client = Endpoint(pod.ip, self._client_port(pod), pod)
            tls = e.protocol == "https"
            c = Conn(self.next_conn, e, client, server, t, t_close, closer, rtt, t + (3 if tls else 1) * rtt + 100_000,
                     self._cookie(pod.node.idx), self._cookie(sp.node.idx) if sp is not None else None,
                     e.external.name if e.external else (f"{e.server.name}:{server.port}" if e.dns_name else f"{server.ip}:{server.port}"))
            self.next_conn += 1
            handshake(c, self.msgs, tls)
            if tls:
                tls_rows.append((pod.node.name, {"ts": t + rtt, "client_ip": client.ip, "client_port": client.port, "server_ip": server.ip, "server_port": 443,
                                                 "pid": pod.pid, "comm": pod.workload.comm, "sni": e.external.name, "version": "TLS 1.3", "alpn": ["http/1.1"]}))
            pool.conns.append(c)
            self.conns[c.idx] = c
            opened.append(c)
            pool.due = t + int(rng.uniform(0.05, 2) * MS)
        return opened

    def _cookie(self, node_idx: int) -> str:
        self.cookies[node_idx] += 1 + int(self.rng.integers(0, 4))
        return f"{self.node_names[node_idx]}-{self.cookies[node_idx]}"

    # --- the loop --------------------------------------------------------------------------

    def k8s_batch(self) -> Batch:
        node = self.node_names[0]
        return [(table, node, rows) for table, rows in k8s.all_rows(self.cluster).items()]

    def slices(self) -> Iterator[Batch]:
        t0 = self.start
        while t0 < self.end:
            t1 = t0 + SLICE_NS
            yield self._slice(t0, t1)
            t0 = t1
        yield self._finish()

    def _slice(self, t0: int, t1: int) -> Batch:
        out: Batch = []
        dns, tls_rows, conn_rows = DnsBatch(), [], []
        self._refresh_pools(t0, t1)
        todo: list[Conn] = []
        for pool in self.pools.values():
            todo += self._open(pool, t1, dns, tls_rows)
        todo = [c for p in self.pools.values() for c in p.conns]
        lf = lambda c: self.latency_factor(c, t0)  # noqa: E731
        er = lambda c: self.error_rate(c, t0)  # noqa: E731
        while todo:
            rq = generate(todo, t1, self.end, self.rng, self.msgs, lf, er, self.paths)
            if rq is not None:
                out += [("http", n, t) for n, t in http_tables(todo, rq, self.paths, self.node_names)]
            for c in todo:
                if c.t_close < t1 and c.t_close + c.rtt < self.end:
                    teardown(c, self.msgs)
                    conn_rows += connection_rows(c, False)
                    pool = self.pools[(c.edge.idx, c.client_pod.uid, c.server_pod.uid if c.edge.direct else "")]
                    pool.conns.remove(c)
                    pool.due = c.t_close + int(self.rng.uniform(0.2, 5) * MS)
            todo = []
            for pool in self.pools.values():
                todo += self._open(pool, t1, dns, tls_rows)
        out += [("flows", n, t) for n, t in self.flows.drain(self.msgs, t1, self.conns)]
        out += [("flows", n, t) for n, t in self.flows.datagrams(dns.packets)]
        for ci in [ci for ci, c in self.conns.items() if c.purge_at is not None and c.purge_at < t1]:
            del self.conns[ci]
        out += self._row_batches("dns", [(n, {k: v[i] for k, v in dns.rows.items() if k != "node"}) for i, n in enumerate(dns.rows["node"])])
        out += self._row_batches("tls", tls_rows)
        out += self._row_batches("connections", conn_rows)
        return out

    def _finish(self) -> Batch:
        rows = []
        for c in sorted(self.conns.values(), key=lambda c: c.idx):
            if c.ts_end is None:
                rows += connection_rows(c, True)
        out = self._row_batches("connections", rows)
        out += [("flows", n, t) for n, t in self.flows.drain(self.msgs, self.end + SLICE_NS, self.conns)]
        return out

    @staticmethod
    def _row_batches(table: str, rows: list[tuple[str, dict]]) -> Batch:
        by_node: dict[str, list[dict]] = {}
        for node, row in rows:
            by_node.setdefault(node, []).append(row)
        return [(table, node, r) for node, r in sorted(by_node.items())]


def slice_count(p: Params) -> int:
    return (p.end_ns - p.start_ns) // SLICE_NS
