"""What the exported telemetry is called: OpenTelemetry semantic-convention names, and the SQL that
writes an attribute list as OTLP JSON.

Each span, resource or data point is described once, as a list of `Attr` (key, value type, SQL
expression); spans.py and metrics.py turn that list into the OTLP JSON text of the attributes
(`attributes_json_sql`), and encode.py turns that JSON into protobuf. A NULL value leaves the
attribute out, as the conventions ask ("if and only if ...").
"""

from __future__ import annotations

from dataclasses import dataclass

SCOPE_NAME = "flowtape"
"""InstrumentationScope.name of every span and metric (the tape is the instrumentation)."""

HTTP_METHODS = ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
"""The methods the HTTP conventions call known (RFC 9110 and PATCH); others are `_OTHER`."""

DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
"""Explicit bucket boundaries (seconds) the conventions give http.server.request.duration,
http.client.request.duration and dns.lookup.duration; the service graph histograms use them too."""

SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3
STATUS_ERROR = 2

# Resource attributes naming a pod's workload, by the kind at the top of its owner chain (analyze.enrich).
WORKLOAD_KEYS = {
    "Deployment": "k8s.deployment.name",
    "StatefulSet": "k8s.statefulset.name",
    "DaemonSet": "k8s.daemonset.name",
    "ReplicaSet": "k8s.replicaset.name",
    "Job": "k8s.job.name",
    "CronJob": "k8s.cronjob.name",
}


@dataclass(frozen=True)
class Attr:
    """One attribute: its key, its OTLP value type ("s" string, "S" string that needs no JSON
    escaping, "i" int, "as" list of strings) and the SQL giving its value (NULL: not set)."""

    key: str
    kind: str
    sql: str


def _attr_json(a: Attr) -> str:
    """SQL giving one attribute's OTLP JSON, NULL when its value is NULL (or an empty list)."""
    key = a.key.replace("'", "''")
    head = f"'{{\"key\":\"{key}\",\"value\":"
    x = a.sql
    # one concat() per attribute: a chain of || allocates a string per step (5x slower on 3.7M spans)
    if a.kind == "s":
        return f"CASE WHEN ({x}) IS NOT NULL THEN concat({head}{{\"stringValue\":', to_json({x}), '}}}}') END"
    if a.kind == "S":  # a string that needs no escaping (an IP, a known method, a constant): to_json costs
        return f"CASE WHEN ({x}) IS NOT NULL THEN concat({head}{{\"stringValue\":\"', {x}, '\"}}}}') END"
    if a.kind == "i":  # OTLP JSON writes 64-bit integers as decimal strings
        return f"CASE WHEN ({x}) IS NOT NULL THEN concat({head}{{\"intValue\":\"', ({x})::BIGINT, '\"}}}}') END"
    if a.kind == "as":
        values = f"array_to_string(list_transform({x}, lambda v: concat('{{\"stringValue\":', to_json(v), '}}')), ',')"
        return f"CASE WHEN len({x}) > 0 THEN concat({head}{{\"arrayValue\":{{\"values\":[', {values}, ']}}}}}}') END"
    raise ValueError(f"attribute kind {a.kind!r}")


def attribute_items_sql(attrs: list[Attr] | tuple[Attr, ...]) -> str:
    """SQL giving the comma-separated JSON of `attrs` (no brackets), NULL values left out; NULL
    when every value is NULL."""
    # concat_ws skips NULL arguments: an absent attribute leaves no empty slot
    return "nullif(concat_ws(',', " + ", ".join(_attr_json(a) for a in attrs) + "), '')"


def attributes_json_sql(attrs: list[Attr] | tuple[Attr, ...]) -> str:
    """SQL giving the JSON array of `attrs` (`[{"key":..,"value":{..}},..]`), NULL values left out."""
    return f"concat('[', {attribute_items_sql(attrs)}, ']')"


def endpoint_service_sql(p: str, ip: str) -> str:
    """The service name of an endpoint named by columns `{p}_*` (analyze.enrich) when only the
    tape's naming is known (a peer, the service graph): a pod's workload, a Service's name, a
    node's name, else the DNS name the tape saw, else the IP."""
    return (f"CASE {p}_kind WHEN 'pod' THEN {p}_workload WHEN 'service' THEN {p}_service WHEN 'node' THEN {p}_node "
            f"ELSE coalesce({p}_dns, {ip}) END")
