"""The OpenTelemetry resource of an endpoint, as the tape named it at that time.

A span's or a data point's resource is the local endpoint that recorded it: its names (the
NAME_FIELDS of analyze.enrich), its process (pid, comm), the recorder's node and its IP. Many
spans share one, so resources are made here in Python, once per distinct endpoint, not per row.
"""

from __future__ import annotations

import json
from typing import Any

from ..enrich import NAME_FIELDS
from .semconv import WORKLOAD_KEYS

EXPORTER_RESOURCE = (("service.name", "flowtape"),)
"""The resource of metrics that belong to no one endpoint (flows between two, the service graph):
flowtape is what computed them, as Tempo's metrics generator is for its service graph."""


def resource_attributes(names: tuple | None, pid: int | None, comm: str | None, node: str | None, ip: str | None) -> tuple[tuple[str, Any], ...]:
    """The resource attributes of a local endpoint: service.name is the workload for a pod, the
    Service for a ClusterIP, else (DESIGN.md, names without Kubernetes) the process name, a DNS
    name the tape saw, the node, the IP; k8s.* and cloud.* as the tape named them."""
    n = dict(zip(NAME_FIELDS, names or (None,) * len(NAME_FIELDS)))
    kind = n["kind"]
    if kind == "pod":
        service = n["workload"]
    elif kind == "service":
        service = n["service"]
    else:
        service = comm or n["dns"] or n["node"] or ip or "unknown"
    attrs: list[tuple[str, Any]] = [("service.name", service)]
    if kind in ("pod", "service") and n["namespace"]:
        attrs += [("service.namespace", n["namespace"]), ("k8s.namespace.name", n["namespace"])]
    if n["pod"]:
        attrs.append(("k8s.pod.name", n["pod"]))
    if kind == "pod" and n["workload_kind"] in WORKLOAD_KEYS and n["workload"]:
        attrs.append((WORKLOAD_KEYS[n["workload_kind"]], n["workload"]))
    node_name = n["node"] or node
    if node_name:
        attrs.append(("k8s.node.name", node_name))
    if n["zone"]:
        attrs.append(("cloud.availability_zone", n["zone"]))
    if n["region"]:
        attrs.append(("cloud.region", n["region"]))
    if pid is not None:
        attrs.append(("process.pid", int(pid)))
    if comm:
        attrs.append(("process.executable.name", comm))
    return tuple(attrs)


def attributes_json(attrs: tuple[tuple[str, Any], ...] | list[tuple[str, Any]]) -> str:
    """OTLP JSON of key/value pairs (str -> stringValue, int -> intValue as a decimal string)."""
    out = []
    for k, v in attrs:
        if isinstance(v, bool):
            val = {"boolValue": v}
        elif isinstance(v, int):
            val = {"intValue": str(v)}
        elif isinstance(v, float):
            val = {"doubleValue": v}
        else:
            val = {"stringValue": str(v)}
        out.append({"key": k, "value": val})
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)


class Resources:
    """Resource JSON by endpoint key, made once per distinct key."""

    def __init__(self) -> None:
        self._json: dict[tuple, str] = {}

    def json(self, key: tuple) -> str:
        """`key` = (names tuple, pid, comm, node, ip) -> the Resource's OTLP JSON."""
        s = self._json.get(key)
        if s is None:
            s = self._json[key] = '{"attributes":' + attributes_json(resource_attributes(*key)) + "}"
        return s
