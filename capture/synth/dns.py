"""DNS lookups as a pod's resolver makes them, through kube-dns.

resolv.conf in a pod: `search <ns>.svc.cluster.local svc.cluster.local cluster.local
<region>.compute.internal`, `options ndots:5`. A name with fewer than five dots is tried with
each search suffix first, A and AAAA in parallel (Go's resolver), until one answers NOERROR with
an address: `api` resolves at the first try, `postgres.data` after one NXDOMAIN, and
`golang.org` after four NXDOMAINs per record type. Cluster answers have TTL 30; external answers
carry their CNAME chain and TTLs. The query goes to a kube-dns pod chosen per socket (the
socket-level load balancer translates the ClusterIP 10.96.0.10 at sendmsg), so rows carry the
CoreDNS pod's IP. A row is written on the client's node (with pid/comm) and, when CoreDNS runs
elsewhere, on CoreDNS's node too (pid null: the sender is not local there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .cluster import Cluster, Pod
from .traffic import External

MS = 1_000_000
US = 1_000
CLUSTER_TTL = 30


@dataclass
class DnsBatch:
    """Rows and UDP packets of one slice, appended to by lookups (plain lists: few per slice)."""

    rows: dict[str, list] = field(default_factory=lambda: {k: [] for k in (
        "node", "ts_query", "ts_answer", "latency_ns", "client_ip", "client_port", "server_ip", "server_port",
        "transport", "pid", "comm", "txid", "qname", "qtype", "qtype_name", "rcode", "rcode_name", "answers")})
    # one UDP packet each: (sender pod, receiver pod, sport, dport, t, ip_bytes)
    packets: list[tuple[Pod, Pod, int, int, int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows["ts_query"])


RCODES = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN"}


class Resolver:
    def __init__(self, cluster: Cluster, externals: dict[str, External], rng: np.random.Generator):
        self.cluster = cluster
        self.rng = rng
        self.externals = externals
        self.services = {f"{s.name}.{s.namespace}.svc.cluster.local": s for s in cluster.services}
        self.coredns = cluster.workloads["kube-system/coredns"]
        self._ports: dict[str, int] = {}

    def _port(self, pod: Pod) -> int:
        # a new UDP socket per query; the kernel hands out ports without reusing one that was
        # just used, so a 5-tuple is never seen twice within a flow interval
        last = self._ports.get(pod.uid)
        if last is None:
            last = int(self.rng.integers(32768, 61000))
        port = 32768 + (last - 32768 + 1 + int(self.rng.integers(0, 50))) % (61000 - 32768)
        self._ports[pod.uid] = port
        return port

    def candidates(self, pod: Pod, name: str) -> list[str]:
        if name.count(".") >= 5:
            return [name]
        search = [f"{pod.namespace}.svc.cluster.local", "svc.cluster.local", "cluster.local", f"{pod.node.region}.compute.internal"]
        return [f"{name}.{s}" for s in search] + [name]

    def _answer(self, qname: str, qtype: int) -> tuple[int, list[dict], bool, int]:
        """(rcode, answers, has_address, upstream latency scale) for a query."""
        svc = self.services.get(qname)
        if svc is not None:
            if qtype == 1:
                return 0, [{"name": qname, "type": "A", "ttl": CLUSTER_TTL, "data": svc.cluster_ip}], True, 0
            return 0, [], False, 0
        ext = self.externals.get(qname)
        if ext is not None:
            chain, name = [], qname
            for target in ext.chain:
                chain.append({"name": name, "type": "CNAME", "ttl": ext.ttl, "data": target})
                name = target
            if qtype == 1:
                chain += [{"name": name, "type": "A", "ttl": ext.ttl, "data": ip} for ip in ext.ips]
            return 0, chain, qtype == 1, 2
        upstream = 1 if qname.endswith(".compute.internal") or not qname.endswith("cluster.local") else 0
        return 3, [], False, upstream

    def lookup(self, pod: Pod, name: str, t: int, fail_rate: Callable[[int], float], out: DnsBatch) -> tuple[int, str | None]:
        """Resolve `name` from `pod` starting at t. Returns (time done, first A address or None)."""
        rng = self.rng
        servers = [q for q in self.cluster.pods_of(self.coredns.key) if q.serving(t)]
        for qname in self.candidates(pod, name):
            done, address, failed = t, None, False
            for qtype in (1, 28):
                server = servers[int(rng.integers(0, len(servers)))] if servers else None
                rcode, answers, has_addr, upstream = self._answer(qname, qtype)
                lat = int(rng.lognormal(np.log(0.35 * MS), 0.35)) + upstream * int(rng.lognormal(np.log(6 * MS), 0.5))
                p_fail = fail_rate(t)
                if p_fail and rng.random() < p_fail:
                    rcode, answers, has_addr = 2, [], False
                    lat = int(rng.lognormal(np.log(4 * MS), 0.3))
                if server is None:  # no CoreDNS: the query times out unanswered
                    rcode, lat = None, None
                sport = self._port(pod)
                self._row(out, pod, server, t, lat, sport, int(rng.integers(0, 65536)), qname, qtype, rcode, answers)
                failed |= rcode in (2, None)
                if has_addr:
                    address = next(a["data"] for a in answers if a["type"] == "A")
                done = max(done, t + (lat if lat is not None else 5_000 * MS))
            if failed:
                return done, None
            if address is not None:
                return done + 50 * US, address
            t = done + 30 * US
        return t, None

    def _row(self, out: DnsBatch, pod: Pod, server: Pod | None, t: int, lat: int | None, sport: int, txid: int, qname: str, qtype: int, rcode: int | None, answers: list[dict]) -> None:
        server_ip = server.ip if server is not None else "10.96.0.10"
        qlen = 12 + len(qname) + 2 + 4 + 11  # header, name, type/class, EDNS0 OPT
        alen = qlen + sum(12 + (4 if a["type"] == "A" else len(a["data"]) + 2) for a in answers)
        nodes = [pod.node] + ([server.node] if server is not None and server.node is not pod.node else [])
        for node in nodes:
            local = node is pod.node
            r = out.rows
            r["node"].append(node.name)
            r["ts_query"].append(t)
            r["ts_answer"].append(None if lat is None else t + lat)
            r["latency_ns"].append(lat)
            r["client_ip"].append(pod.ip)
            r["client_port"].append(sport)
            r["server_ip"].append(server_ip)
            r["server_port"].append(53)
            r["transport"].append("udp")
            r["pid"].append(pod.pid if local else None)
            r["comm"].append(pod.workload.comm if local else None)
            r["txid"].append(txid)
            r["qname"].append(qname)
            r["qtype"].append(qtype)
            r["qtype_name"].append("A" if qtype == 1 else "AAAA")
            r["rcode"].append(rcode)
            r["rcode_name"].append(None if rcode is None else RCODES[rcode])
            r["answers"].append(None if lat is None else answers)
        if server is not None:
            out.packets.append((pod, server, sport, 53, t, 28 + qlen))
            if lat is not None:
                out.packets.append((server, pod, 53, sport, t + lat, 28 + alen))
