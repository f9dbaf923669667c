"""Kubernetes state as the watcher would record it: versions over [valid_from, valid_to).

Objects that existed when recording started have observed_at_start=True and valid_from = their
creationTimestamp. A pod goes Pending (no IP) -> Running (IP) -> Running with a
deletionTimestamp (terminating) -> deleted; its EndpointSlice entry goes not-ready -> ready ->
not-ready (terminating) -> deleted. All k8s_* rows are written once, under the partition of the
first node (`extra.synth.k8s_node`): one watcher per cluster is enough, and one copy avoids
analysis having to de-duplicate state.
"""

from __future__ import annotations

from typing import Iterator

from .cluster import Cluster, Pod

_rv = [1_000_000]


def _resource_version() -> str:
    _rv[0] += 1
    return str(_rv[0])


def _versions(start: int, end: int, spans: list[tuple[int, int | None, dict]], final_deleted: bool) -> Iterator[dict]:
    """Clip a list of (from, to, fields) to the tape: versions ending before it are not seen."""
    for i, (a, b, fields) in enumerate(spans):
        if b is not None and b <= start:
            continue
        if a >= end:
            continue
        last = i == len(spans) - 1
        yield dict(
            fields,
            valid_from=a,
            valid_to=None if b is None or b > end else b,
            observed_at_start=a < start,
            deleted=bool(last and final_deleted and b is not None and b <= end),
            resource_version=_resource_version(),
        )


def _labels(d: dict[str, str]) -> list[tuple[str, str]]:
    return sorted(d.items())


def pod_rows(c: Cluster, pod: Pod) -> Iterator[dict]:
    w = pod.workload
    labels = {"app": w.app}
    if w.kind == "Deployment":
        labels["pod-template-hash"] = pod.rs_hash
    elif w.kind == "StatefulSet":
        labels["statefulset.kubernetes.io/pod-name"] = pod.name
    base = {
        "uid": pod.uid, "namespace": w.namespace, "name": pod.name, "node_name": pod.node.name, "host_network": w.host_network,
        "labels": _labels(labels), "owner_kind": pod.owner_kind, "owner_name": pod.owner_name,
        "workload_kind": w.kind, "workload_name": w.name,
    }
    container = {"name": w.name.split("-")[0], "image": w.image, "container_id": pod.container_id}
    spans = [
        (pod.created, pod.running, dict(base, ips=[], phase="Pending", containers=[dict(container, container_id=None)])),
        (pod.running, pod.terminating, dict(base, ips=[pod.ip], phase="Running", containers=[container])),
    ]
    if pod.terminating is not None:
        spans.append((pod.terminating, pod.deleted, dict(base, ips=[pod.ip], phase="Running", containers=[container])))
    yield from _versions(c.start, c.end, spans, pod.deleted is not None)


def endpoint_rows(c: Cluster, pod: Pod) -> Iterator[dict]:
    svc = pod.workload.service
    if svc is None:
        return
    ports = [(svc.target_port, svc.protocol, svc.port_name)]
    if svc.name == "kube-dns":
        ports.append((53, "TCP", "dns-tcp"))
    for port, proto, port_name in ports:
        base = {
            "namespace": svc.namespace, "service": svc.name, "slice": f"{svc.name}-{pod.rs_hash or 'x'}{pod.zone_idx}"[:63],
            "ip": pod.ip, "port": port, "protocol": proto, "port_name": port_name, "pod": pod.name,
            "node_name": pod.node.name, "zone": pod.node.zone,
        }
        spans = [(pod.running, pod.ready, dict(base, ready=False)), (pod.ready, pod.terminating, dict(base, ready=True))]
        if pod.terminating is not None:
            spans.append((pod.terminating, pod.deleted, dict(base, ready=False)))
        yield from _versions(c.start, c.end, spans, pod.deleted is not None)


def service_rows(c: Cluster) -> Iterator[dict]:
    for s in c.services:
        w = next((w for w in c.workloads.values() if w.service is s), None)
        ports = [{"name": s.port_name, "protocol": s.protocol, "port": s.port, "target_port": str(s.target_port), "node_port": None}]
        if s.name == "kube-dns":
            ports.append({"name": "dns-tcp", "protocol": "TCP", "port": 53, "target_port": "53", "node_port": None})
        fields = {
            "uid": s.uid, "namespace": s.namespace, "name": s.name, "type": "ClusterIP", "cluster_ips": [s.cluster_ip],
            "external_ips": [], "ports": ports, "selector": _labels({"app": w.app} if w else {}),
            "labels": _labels({"app": w.app} if w else {"component": "apiserver"}), "external_name": None,
        }
        yield from _versions(c.start, c.end, [(s.created, None, fields)], False)


def node_rows(c: Cluster) -> Iterator[dict]:
    for n in c.nodes:
        labels = {"kubernetes.io/hostname": n.name, "topology.kubernetes.io/zone": n.zone, "topology.kubernetes.io/region": n.region,
                  "node.kubernetes.io/instance-type": "m6i.xlarge"}
        fields = {"uid": n.uid, "name": n.name, "internal_ips": [n.ip], "external_ips": [], "pod_cidrs": [n.pod_cidr],
                  "zone": n.zone, "region": n.region, "labels": _labels(labels)}
        yield from _versions(c.start, c.end, [(c.start - 40 * 86_400 * 1_000_000_000 + n.idx * 60_000_000_000, None, fields)], False)


def all_rows(c: Cluster) -> dict[str, list[dict]]:
    _rv[0] = 1_000_000  # resource versions restart per tape: deterministic output
    return {
        "k8s_nodes": list(node_rows(c)),
        "k8s_services": list(service_rows(c)),
        "k8s_pods": [r for p in c.pods for r in pod_rows(c, p)],
        "k8s_endpoints": [r for p in c.pods for r in endpoint_rows(c, p)],
    }
