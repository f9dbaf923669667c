"""The simulated cluster: nodes over zones/regions, workloads, Services, and every pod's life.

The whole pod timeline (initial pods, rollouts that replace them, IP allocation) is decided
up front: it is small (pods, not packets) and the traffic model asks it questions by time
("which endpoints of Service S are ready in zone Z at t?").

Modelled behaviour, chosen to match what a real recording shows:
- Deployments -> ReplicaSets (name `<deploy>-<pod-template-hash>`) -> pods `<rs>-<5 chars>`;
  StatefulSets -> `<name>-<ordinal>`; DaemonSets -> `<name>-<5 chars>` on every node.
- App Deployments run one pod per zone; a rollout replaces them one at a time with maxSurge=1,
  maxUnavailable=0: the new pod goes to the least-loaded node of the old pod's zone, and the
  old pod starts terminating when the new one is ready, then is deleted after its grace period.
- Pod IPs come from the node's pod CIDR, lowest free address first, so a deleted pod's IP is
  handed to the next pod created on that node: IPs are reused by other pods within minutes.
- Services use `trafficDistribution: PreferClose`: clients reach a ready endpoint in their own
  zone when there is one, any ready endpoint otherwise.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import numpy as np

from . import names
from .params import Params

S = 1_000_000_000
DAY = 86_400 * S

# Pod lifecycle delays after creation (scheduling + sandbox + readiness probe).
RUNNING_AFTER = 1_500_000_000
READY_AFTER = 3_000_000_000
ROLLOUT_STEP = 12 * S  # next pod replaced this long after the previous step started


@dataclass
class Node:
    idx: int
    name: str
    zone: str
    region: str
    ip: str
    pod_cidr: str
    mac: str
    uid: str
    free: list[int] = field(default_factory=list)  # free host numbers of the pod CIDR, sorted

    def alloc_ip(self) -> str:
        host = self.free.pop(0)
        return names.ip_add(self.pod_cidr.split("/")[0], host)

    def release_ip(self, ip: str) -> None:
        host = int(ipaddress.ip_address(ip)) - int(ipaddress.ip_network(self.pod_cidr).network_address)
        self.free.append(host)
        self.free.sort()


@dataclass
class Service:
    namespace: str
    name: str
    cluster_ip: str
    port: int
    target_port: int
    protocol: str  # 'TCP' or 'UDP' (kube-dns has both)
    uid: str
    created: int
    port_name: str


@dataclass
class Workload:
    namespace: str
    name: str
    kind: str  # Deployment, StatefulSet, DaemonSet
    port: int  # container port the server listens on (None-like 0 for pure clients)
    comm: str  # process name of the main container (task comm, <= 15 chars)
    image: str
    zones: list[int]  # zone index of each replica (DaemonSet: unused)
    host_network: bool = False
    service: Service | None = None
    rs_hash: str = ""
    app: str = ""  # label app=...

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class Pod:
    uid: str
    name: str
    workload: Workload
    owner_kind: str | None
    owner_name: str | None
    node: Node
    zone_idx: int
    created: int
    running: int
    ready: int
    ip: str = ""
    terminating: int | None = None
    deleted: int | None = None
    pid: int = 0
    cgroup_id: int = 0
    container_id: str = ""
    ifname: str = ""  # host-side device of the pod (Cilium lxc*), 'eth0' for host-network pods
    ifindex: int = 0
    mac: str = ""
    if_mac: str = ""
    rs_hash: str = ""

    @property
    def namespace(self) -> str:
        return self.workload.namespace

    def serving(self, t: int) -> bool:
        """Ready endpoint at t (new connections may be routed to it)."""
        return self.ready <= t and (self.terminating is None or t < self.terminating)

    def alive(self, t: int) -> bool:
        """Running, not terminating (its own clients keep their connections)."""
        return self.running <= t and (self.terminating is None or t < self.terminating)


@dataclass
class Rollout:
    workload: Workload
    start: int
    end: int
    old_rs: str
    new_rs: str
    target_zone: int | None  # cross-zone incident: all new pods forced into this zone


def _zone_layout(p: Params) -> tuple[list[str], list[str]]:
    regions = ["eu-west-1", "eu-central-1"][: p.regions]
    zones, zone_region = [], []
    for z in range(p.zones):
        r = z % p.regions
        k = z // p.regions
        zones.append(f"{regions[r]}{'abcdefghijkl'[k]}")
        zone_region.append(regions[r])
    return zones, zone_region


class Cluster:
    """Build with Cluster(params, rng, bad_rollout=...); then query by time."""

    def __init__(self, p: Params, rng: np.random.Generator, bad_rollout: tuple[str, int, int] | None = None):
        self.p = p
        self.rng = rng
        self.start, self.end = p.start_ns, p.end_ns
        self.zones, self.zone_region = _zone_layout(p)
        self.nodes: list[Node] = []
        for i in range(p.nodes):
            z = i % p.zones
            r = z % p.regions
            k = i // p.zones
            self.nodes.append(
                Node(
                    i, f"node-{i + 1:02d}", self.zones[z], self.zone_region[z],
                    f"10.{r}.{z // p.regions + 1}.{10 + k}", f"10.{244 + r}.{i}.0/24",
                    names.mac(rng), names.uid(rng), list(range(2, 255)),
                )
            )
        self.node_zone = [i % p.zones for i in range(p.nodes)]
        self.services: list[Service] = []
        self.workloads: dict[str, Workload] = {}
        self.pods: list[Pod] = []
        self.rollouts: list[Rollout] = []
        self._pid_used: set[tuple[int, int]] = set()
        self._ifindex = [10] * p.nodes
        self._cluster_ips: set[str] = set()
        self._define_workloads()
        self._initial_pods()
        self._schedule_rollouts(bad_rollout)
        self.by_workload: dict[str, list[Pod]] = {}
        for pod in self.pods:
            self.by_workload.setdefault(pod.workload.key, []).append(pod)

    # --- definitions -------------------------------------------------------------------

    def _service(self, ns: str, name: str, port: int, target: int, proto: str = "TCP", ip: str | None = None, port_name: str = "http") -> Service:
        if ip is None:
            while True:
                ip = f"10.96.{int(self.rng.integers(1, 255))}.{int(self.rng.integers(1, 255))}"
                if ip not in self._cluster_ips:
                    break
        self._cluster_ips.add(ip)
        svc = Service(ns, name, ip, port, target, proto, names.uid(self.rng), self.start - int(self.rng.integers(30, 90)) * DAY, port_name)
        self.services.append(svc)
        return svc

    def _workload(self, w: Workload, service: tuple | None) -> Workload:
        w.app = w.name
        w.rs_hash = names.safe(self.rng, 10) if w.kind == "Deployment" else ""
        if service is not None:
            w.service = self._service(w.namespace, *service)
        self.workloads[w.key] = w
        return w

    def _define_workloads(self) -> None:
        p, every_zone = self.p, list(range(self.p.zones))
        self._service("default", "kubernetes", 443, 6443, ip="10.96.0.1", port_name="https")
        self._workload(Workload("kube-system", "coredns", "Deployment", 53, "coredns", "registry.k8s.io/coredns/coredns:v1.11.1", [0, 1 % p.zones]), ("kube-dns", 53, 53, "UDP", "10.96.0.10", "dns"))
        self._workload(Workload("monitoring", "node-exporter", "DaemonSet", 9100, "node_exporter", "quay.io/prometheus/node-exporter:v1.8.1", [], host_network=True), None)
        self._workload(Workload("monitoring", "prometheus", "StatefulSet", 9090, "prometheus", "quay.io/prometheus/prometheus:v2.53.0", [p.zones - 1]), ("prometheus", 9090, 9090))
        self._workload(Workload("shop", "loadgen", "Deployment", 0, "k6", "grafana/k6:0.52.0", every_zone), None)
        self._workload(Workload("shop", "frontend", "Deployment", 8080, "node", "shop/frontend:1.42.0", every_zone), ("frontend", 80, 8080))
        self._workload(Workload("shop", "api", "Deployment", 8080, "api", "shop/api:3.1.4", every_zone), ("api", 80, 8080))
        for i in range(p.services - 4):
            name = names.backend_name(i)
            self._workload(Workload("shop", name, "Deployment", 8080, name[:15], f"shop/{name}:2.{i}.0", every_zone), (name, 80, 8080))
        self._workload(Workload("data", "postgres", "StatefulSet", 5432, "postgres", "postgres:16.3", [0]), ("postgres", 5432, 5432, "TCP", None, "postgres"))
        self._workload(Workload("data", "redis", "Deployment", 6379, "redis-server", "redis:7.2.5", every_zone), ("redis", 6379, 6379, "TCP", None, "redis"))

    # --- pods --------------------------------------------------------------------------

    def _place(self, zone: int, t: int) -> Node:
        load = [sum(1 for q in self.pods if q.node is n and (q.deleted is None or q.deleted > t)) for n in self.nodes]
        candidates = [n for n in self.nodes if self.node_zone[n.idx] == zone]
        return min(candidates, key=lambda n: (load[n.idx], n.idx))

    def _new_pod(self, w: Workload, zone: int, created: int, node: Node | None = None, ordinal: int | None = None, rs_hash: str | None = None) -> Pod:
        rng = self.rng
        node = node or self._place(zone, created)
        if w.kind == "Deployment":
            rs = f"{w.name}-{rs_hash or w.rs_hash}"
            name, owner_kind, owner_name = f"{rs}-{names.safe(rng, 5)}", "ReplicaSet", rs
        elif w.kind == "StatefulSet":
            name, owner_kind, owner_name = f"{w.name}-{ordinal}", "StatefulSet", w.name
        else:
            name, owner_kind, owner_name = f"{w.name}-{names.safe(rng, 5)}", "DaemonSet", w.name
        while True:  # host pids are unique per node
            pid = int(rng.integers(1_000, 4_000_000))
            if (node.idx, pid) not in self._pid_used:
                self._pid_used.add((node.idx, pid))
                break
        pod = Pod(
            names.uid(rng), name, w, owner_kind, owner_name, node, zone, created,
            created + RUNNING_AFTER, created + READY_AFTER,
            pid=pid, cgroup_id=int(rng.integers(1 << 12, 1 << 40)), container_id=names.hex_id(rng, 64),
            rs_hash=rs_hash or w.rs_hash,
        )
        if w.host_network:
            pod.ip, pod.ifname, pod.ifindex, pod.mac, pod.if_mac = node.ip, "eth0", 2, node.mac, node.mac
        else:
            # the IP is assigned when the sandbox is created; lowest free address of the node
            pod.ip = node.alloc_ip()
            self._ifindex[node.idx] += 1
            pod.ifindex = self._ifindex[node.idx]
            pod.ifname = f"lxc{names.hex_id(rng, 12)}"
            pod.mac, pod.if_mac = names.mac(rng, 0x0A), names.mac(rng, 0x0E)
        self.pods.append(pod)
        return pod

    def _initial_pods(self) -> None:
        for w in self.workloads.values():
            created = self.start - int(self.rng.integers(1, 20)) * DAY - int(self.rng.integers(0, DAY))
            if w.kind == "DaemonSet":
                for n in self.nodes:
                    self._new_pod(w, self.node_zone[n.idx], created, node=n)
            else:
                for i, z in enumerate(w.zones):
                    self._new_pod(w, z, created + i * 20 * S, ordinal=i)

    def _delete(self, pod: Pod, terminating: int, grace: int) -> None:
        pod.terminating, pod.deleted = terminating, terminating + grace
        if not pod.workload.host_network:
            pod.node.release_ip(pod.ip)

    def _rollout(self, w: Workload, start: int, target_zone: int | None = None) -> Rollout:
        old = [q for q in self.pods if q.workload is w and q.deleted is None]
        old.sort(key=lambda q: (q.zone_idx, q.name))
        new_hash = names.safe(self.rng, 10)
        t = start
        for q in old:
            zone = q.zone_idx if target_zone is None else target_zone
            new = self._new_pod(w, zone, t, rs_hash=new_hash)
            self._delete(q, new.ready, int(self.rng.integers(2, 7)) * S)
            t += ROLLOUT_STEP
        r = Rollout(w, start, t, f"{w.name}-{w.rs_hash}", f"{w.name}-{new_hash}", target_zone)
        w.rs_hash = new_hash
        self.rollouts.append(r)
        return r

    def _schedule_rollouts(self, bad: tuple[str, int, int] | None) -> None:
        """Rollouts never overlap: IP release and reuse then follow one clear order."""
        deployments = [w for w in self.workloads.values() if w.kind == "Deployment" and w.namespace == "shop"]
        n = self.p.n_rollouts
        span = self.end - self.start
        plan: list[tuple[int, Workload, int | None]] = []
        for i in range(n):
            t = self.start + span * (i + 1) // (n + 1)
            t -= (t - self.start) % S
            plan.append((t, deployments[int(self.rng.integers(0, len(deployments)))], None))
        if bad is not None:
            key, t, zone = bad
            if key not in self.workloads or self.workloads[key].kind != "Deployment":
                from ...errors import UsageError

                raise UsageError(f"--incident cross-zone: no Deployment named {key!r} (e.g. shop/api)")
            plan = [x for x in plan if abs(x[0] - t) > 5 * ROLLOUT_STEP]  # keep rollouts apart
            plan.append((t, self.workloads[key], zone))
        plan.sort(key=lambda x: x[0])
        last_end = self.start
        for t, w, zone in plan:
            t = max(t, last_end + S)
            if t >= self.end:
                continue
            last_end = self._rollout(w, t, zone).end + 10 * S

    # --- queries -----------------------------------------------------------------------

    def pods_of(self, key: str) -> list[Pod]:
        return self.by_workload.get(key, [])

    def endpoint_for(self, w: Workload, zone: int, t: int, rng: np.random.Generator) -> Pod | None:
        """The backend a connect() at t from `zone` lands on (PreferClose routing)."""
        ready = [q for q in self.pods_of(w.key) if q.serving(t)]
        local = [q for q in ready if q.zone_idx == zone]
        pool = local or ready
        if not pool:
            return None
        return pool[int(rng.integers(0, len(pool)))]

    def lifecycle_times(self) -> list[int]:
        """Times at which some pod changes readiness (traffic reacts to these)."""
        out = set()
        for q in self.pods:
            for t in (q.running, q.ready, q.terminating):
                if t is not None and self.start <= t < self.end:
                    out.add(t)
        return sorted(out)
