"""The call graph: who calls whom, how often, how slowly, with what requests.

loadgen -> frontend -> api -> backends; backends -> postgres / redis (in namespace `data`) and a
few external HTTPS hosts; prometheus scrapes every node's host-network node-exporter. Each edge
has its own log-normal server-time distribution, size distributions and paths, drawn from the
seed. Rates are relative to `--rps` (requests per second entering at the frontend).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .cluster import Cluster, Workload

MS = 1_000_000
S = 1_000_000_000


@dataclass(frozen=True)
class External:
    """A host outside the cluster, as public DNS answers for it."""

    name: str
    chain: tuple[str, ...]  # CNAME targets in order (empty: A records directly)
    ips: tuple[str, ...]
    ttl: int


# Documentation address ranges (RFC 5737) stand in for public IPs.
EXTERNALS = (
    External("golang.org", (), ("203.0.113.21", "203.0.113.22"), 300),
    External("api.github.com", (), ("203.0.113.40",), 60),
    External("storage.googleapis.com", ("storage.l.googleusercontent.com",), ("203.0.113.80", "203.0.113.81"), 300),
    External("hooks.slack.com", ("hooks-slack-com.edge.example.net", "e1234.a.cdn.example.net"), ("198.51.100.14",), 20),
)
UNEXPECTED = External("telemetry.collect-metrics.io", ("ingest.collect-metrics.io",), ("198.51.100.201",), 60)


@dataclass
class Edge:
    idx: int
    client: Workload
    server: Workload | None  # None: external host
    protocol: str  # 'http', 'https' (TLS to an external host), 'postgres', 'redis', 'metrics'
    rate: float  # requests per second over the whole edge
    lat_mu: float  # log-normal of the server's time to first response byte, ln(ns)
    lat_sigma: float
    req_mu: float
    resp_mu: float
    size_sigma: float
    dns_name: str | None  # name the client resolves before connecting (None: IPs from the API)
    external: External | None = None
    direct: bool = False  # connects to every pod of `server` (scrapes), not through the Service
    periodic_ns: int = 0  # fixed interval between requests on a connection (scrapes)
    pool: int = 1  # connections per client pod (per target pod when direct)
    paths: list[tuple[str, str]] = field(default_factory=list)
    path_p: np.ndarray | None = None
    lifetime_ns: float = 120 * S  # mean connection lifetime before the client recycles it
    active: tuple[int, int] | None = None  # only in this window (unexpected egress)
    port: int = 0
    gap_ns: float = 0.0  # mean think time between requests on one connection (set by the engine)

    @property
    def http(self) -> bool:
        return self.protocol in ("http", "https", "metrics")

    @property
    def name(self) -> str:
        return f"{self.client.name}->{self.server.name if self.server else self.external.name}"

    def mean_latency_ns(self) -> float:
        return math.exp(self.lat_mu + self.lat_sigma**2 / 2)


def _paths(rng: np.random.Generator, service: str, n_ids: int) -> tuple[list[tuple[str, str]], np.ndarray]:
    base = [("GET", f"/v1/{service}"), ("GET", f"/v1/{service}/{{id}}"), ("POST", f"/v1/{service}"), ("GET", "/healthz")]
    out: list[tuple[str, str]] = []
    weights: list[float] = []
    for method, path in base:
        if "{id}" in path:
            for k in range(n_ids):  # Zipf-like popularity of item ids
                out.append((method, path.replace("{id}", str(1000 + int(rng.integers(0, 90000))))))
                weights.append(2.0 / (k + 1))
        else:
            out.append((method, path))
            weights.append({"GET": 3.0, "POST": 1.0}[method] if path != "/healthz" else 0.2)
    w = np.array(weights)
    return out, w / w.sum()


def build_edges(cluster: Cluster, rng: np.random.Generator, rps: float) -> list[Edge]:
    W = cluster.workloads
    edges: list[Edge] = []

    def add(client: str, server: str | None, protocol: str, rate: float, median_ms: float, sigma: float, req: float, resp: float, **kw) -> Edge:
        e = Edge(len(edges), W[client], W[server] if server else None, protocol, rate,
                 math.log(median_ms * MS), sigma, math.log(req), math.log(resp), 0.6, **kw)
        if e.server is not None:
            e.port = e.server.port
        if e.http and not e.paths:
            e.paths, e.path_p = _paths(rng, (e.server.name if e.server else "hooks"), 20)
        edges.append(e)
        return e

    add("shop/loadgen", "shop/frontend", "http", rps, 25 + 10 * rng.random(), 0.5, 600, 9000, dns_name="frontend")
    add("shop/frontend", "shop/api", "http", 1.5 * rps, 12 + 6 * rng.random(), 0.45, 500, 2500, dns_name="api")
    backends = [w for k, w in W.items() if w.namespace == "shop" and k not in ("shop/loadgen", "shop/frontend", "shop/api")]
    for b in backends:
        add("shop/api", b.key, "http", rps * (0.2 + 0.8 * rng.random()), 2 + 10 * rng.random(), 0.3 + 0.4 * rng.random(), 350, 1500 + 4000 * rng.random(), dns_name=b.name)
    for i, b in enumerate(backends):
        if i % 3 != 2:
            add(b.key, "data/postgres", "postgres", rps * (0.3 + rng.random()), 0.8 + 3 * rng.random(), 0.6, 180, 900, dns_name="postgres.data", lifetime_ns=600 * S)
        if i % 2 == 0:
            add(b.key, "data/redis", "redis", rps * (0.5 + 2 * rng.random()), 0.15 + 0.2 * rng.random(), 0.4, 60, 300, dns_name="redis.data", lifetime_ns=600 * S)
    if not backends:  # the smallest cluster: api talks to the stores itself
        add("shop/api", "data/postgres", "postgres", rps, 2.0, 0.6, 180, 900, dns_name="postgres.data", lifetime_ns=600 * S)
        add("shop/api", "data/redis", "redis", 2 * rps, 0.2, 0.4, 60, 300, dns_name="redis.data", lifetime_ns=600 * S)
    callers = backends or [W["shop/api"]]
    for j, ext in enumerate(EXTERNALS):
        c = callers[(j * 2 + 1) % len(callers)]
        e = add(c.key, None, "https", max(0.05, 0.02 * rps), 40 + 80 * rng.random(), 0.5, 700, 3000, dns_name=ext.name, external=ext, lifetime_ns=90 * S)
        e.port = 443
        e.paths, e.path_p = _paths(rng, ext.name.split(".")[0], 5)
    add("monitoring/prometheus", "monitoring/node-exporter", "metrics", 0.0, 8.0, 0.3, 220, 60000, dns_name=None, direct=True, periodic_ns=15 * S, lifetime_ns=1e18, paths=[("GET", "/metrics")], path_p=np.array([1.0]))
    return edges


def add_unexpected_egress(edges: list[Edge], cluster: Cluster, client_key: str, window: tuple[int, int], rate: float) -> Edge:
    """The egress incident: `client_key` starts calling a host nobody calls otherwise."""
    e = Edge(len(edges), cluster.workloads[client_key], None, "https", rate, math.log(60 * MS), 0.4, math.log(2500), math.log(400), 0.4,
             dns_name=UNEXPECTED.name, external=UNEXPECTED, lifetime_ns=30 * S, active=window, port=443)
    e.paths, e.path_p = [("POST", "/v2/ingest")], np.array([1.0])
    edges.append(e)
    return e
