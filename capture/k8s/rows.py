"""Kubernetes objects (raw API JSON) -> the content of one version row of a `k8s_*` table.

Only what analysis needs is kept: names, namespaces, IPs, ports, node, zone/region, labels,
owner chain, containers with ids and images, phase, hostNetwork. Annotations, env, volumes,
managedFields and status conditions are dropped here, so they never reach a tape; Secrets and
ConfigMaps are never read at all. The watcher and the kubectl importer share these functions.

A converter returns `{subkey: content}`: one entry for pods, services and nodes (subkey ""), one
per (address, port) for an EndpointSlice. Content holds no validity columns; two contents that
compare equal are the same version (a status heartbeat that changes nothing stored is not a
new version).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Any, Callable

ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")
REGION_LABELS = ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region")

Owners = Callable[[str, str, str], "tuple[str, str] | None"]
"""(kind, namespace, name) of a ReplicaSet or Job -> its own controller (kind, name), or None."""


def parse_time_ns(text: str | None) -> int | None:
    """RFC 3339 time as Kubernetes writes it ('2024-05-01T12:03:07Z') -> ns since the epoch."""
    if not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def canonical_ip(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _ips(values: list[str | None]) -> list[str]:
    out: list[str] = []
    for v in values:
        ip = canonical_ip(v)
        if ip is not None and ip not in out:
            out.append(ip)
    return out


def _labels(meta: dict) -> list[tuple[str, str]]:
    # Sorted items: a stable, comparable form that pyarrow writes as a map.
    return sorted((str(k), str(v)) for k, v in (meta.get("labels") or {}).items())


def controller_of(meta: dict) -> tuple[str, str] | None:
    """The controller ownerReference (kind, name), or the first owner if none is marked controller."""
    refs = meta.get("ownerReferences") or []
    for ref in refs:
        if ref.get("controller"):
            return ref.get("kind"), ref.get("name")
    return (refs[0].get("kind"), refs[0].get("name")) if refs else None


def workload(kind: str | None, name: str | None, namespace: str, pod: dict, owners: Owners) -> tuple[str, str]:
    """Top of a pod's owner chain: ReplicaSet -> Deployment, Job -> CronJob; the pod itself when bare."""
    if not kind or not name:
        return "Pod", pod["metadata"]["name"]
    if kind in ("ReplicaSet", "Job"):
        up = owners(kind, namespace, name)
        if up is not None:
            return up
        if kind == "ReplicaSet":
            # A Deployment names its ReplicaSets <deployment>-<pod-template-hash>; used only while
            # the ReplicaSet itself is not (yet) in the cache, e.g. its event is still in flight.
            h = (pod["metadata"].get("labels") or {}).get("pod-template-hash")
            if h and name.endswith("-" + h):
                return "Deployment", name[: -len(h) - 1]
    return kind, name


def _strip_runtime(cid: str | None) -> str | None:
    if not cid:
        return None
    return cid.split("://", 1)[-1]


def pod_content(obj: dict, owners: Owners) -> dict[str, dict[str, Any]]:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    ns = meta.get("namespace") or "default"
    ips = _ips([p.get("ip") for p in status.get("podIPs") or []] + [status.get("podIP")])
    ids = {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or []:
            ids[cs.get("name")] = _strip_runtime(cs.get("containerID"))
    containers = [
        {"name": c.get("name"), "image": c.get("image"), "container_id": ids.get(c.get("name"))}
        for key in ("initContainers", "containers")
        for c in spec.get(key) or []
    ]
    owner = controller_of(meta)
    okind, oname = owner if owner else (None, None)
    wkind, wname = workload(okind, oname, ns, obj, owners)
    return {
        "": {
            "uid": meta["uid"],
            "namespace": ns,
            "name": meta["name"],
            "node_name": spec.get("nodeName") or None,
            "ips": ips,
            "host_network": bool(spec.get("hostNetwork")),
            "phase": status.get("phase"),
            "labels": _labels(meta),
            "owner_kind": okind,
            "owner_name": oname,
            "workload_kind": wkind,
            "workload_name": wname,
            "containers": containers,
        }
    }


def _port(v: Any) -> int | None:
    try:
        p = int(v)
    except (TypeError, ValueError):
        return None
    return p if 0 < p < 65536 else None


def service_content(obj: dict, owners: Owners | None = None) -> dict[str, dict[str, Any]]:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    cluster = spec.get("clusterIPs") or [spec.get("clusterIP")]
    ingress = [i.get("ip") for i in ((status.get("loadBalancer") or {}).get("ingress") or [])]
    ports = [
        {
            "name": p.get("name"),
            "protocol": p.get("protocol") or "TCP",
            "port": _port(p.get("port")),
            "target_port": None if p.get("targetPort") is None else str(p.get("targetPort")),
            "node_port": _port(p.get("nodePort")),
        }
        for p in spec.get("ports") or []
    ]
    return {
        "": {
            "uid": meta["uid"],
            "namespace": meta.get("namespace") or "default",
            "name": meta["name"],
            "type": spec.get("type") or "ClusterIP",
            "cluster_ips": _ips(cluster),  # "None" (headless) is not an IP and drops out
            "external_ips": _ips(list(spec.get("externalIPs") or []) + ingress),
            "ports": ports,
            "selector": sorted((str(k), str(v)) for k, v in (spec.get("selector") or {}).items()),
            "labels": _labels(meta),
            "external_name": spec.get("externalName"),
        }
    }


def _first_label(labels: dict, keys: tuple[str, ...]) -> str | None:
    for k in keys:
        if labels.get(k):
            return labels[k]
    return None


def node_content(obj: dict, owners: Owners | None = None) -> dict[str, dict[str, Any]]:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    labels = meta.get("labels") or {}
    addrs = status.get("addresses") or []
    return {
        "": {
            "uid": meta["uid"],
            "name": meta["name"],
            "internal_ips": _ips([a.get("address") for a in addrs if a.get("type") == "InternalIP"]),
            "external_ips": _ips([a.get("address") for a in addrs if a.get("type") == "ExternalIP"]),
            "pod_cidrs": list(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])),
            "zone": _first_label(labels, ZONE_LABELS),
            "region": _first_label(labels, REGION_LABELS),
            "labels": _labels(meta),
        }
    }


def endpointslice_content(obj: dict, owners: Owners | None = None) -> dict[str, dict[str, Any]]:
    meta = obj["metadata"]
    ns = meta.get("namespace") or "default"
    service = (meta.get("labels") or {}).get("kubernetes.io/service-name") or meta["name"]
    ports = obj.get("ports") or [None]
    out: dict[str, dict[str, Any]] = {}
    for ep in obj.get("endpoints") or []:
        ref = ep.get("targetRef") or {}
        cond = ep.get("conditions") or {}
        for ip in _ips(ep.get("addresses") or []):
            for p in ports:
                p = p or {}
                port, proto, pname = _port(p.get("port")), p.get("protocol") or ("TCP" if p.get("port") else None), p.get("name") or None
                out[f"{ip}|{port}|{proto}|{pname}"] = {
                    "namespace": ns,
                    "service": service,
                    "slice": meta["name"],
                    "ip": ip,
                    "port": port,
                    "protocol": proto,
                    "port_name": pname,
                    "pod": ref.get("name") if ref.get("kind") == "Pod" else None,
                    "node_name": ep.get("nodeName"),
                    "zone": ep.get("zone"),
                    "ready": cond.get("ready"),
                }
    return out


CONVERTERS: dict[str, Callable[..., dict[str, dict[str, Any]]]] = {
    "k8s_pods": pod_content,
    "k8s_services": service_content,
    "k8s_nodes": node_content,
    "k8s_endpoints": endpointslice_content,
}
