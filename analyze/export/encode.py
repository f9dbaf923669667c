"""One batch of spans or data points as an OTLP request: a JSON line (TracesData / MetricsData, as
the OpenTelemetry Collector's file exporter writes) or protobuf (opentelemetry-proto's classes).

Spans are written as OTLP JSON by SQL (spans.py); their protobuf is decoded from that JSON here,
so the two encodings cannot disagree. The decoder knows the subset of OTLP JSON that spans.py and
resources.py write (ids as hex, 64-bit integers as decimal strings) and is many times faster than
protobuf's generic json_format (which also reads ids as base64, not hex).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from ... import __version__
from .semconv import SCOPE_NAME

SCOPE_JSON = json.dumps({"name": SCOPE_NAME, "version": __version__}, separators=(",", ":"))
_SCOPE_OPEN = ',"scopeSpans":[{"scope":' + SCOPE_JSON + ',"spans":['
SCOPE_OPEN = _SCOPE_OPEN.encode()
"""What comes between a ResourceSpans' resource and its first span in the JSON (wire.py uses it too)."""

Group = tuple[str, list]
"""Spans of one resource in a batch: (resource JSON, [span JSON as UTF-8 bytes or memoryview, ...])."""


def traces_json_line(groups: Iterable[Group]) -> bytes:
    """A TracesData JSON line (UTF-8, no newline) of the groups, one ResourceSpans each."""
    parts = []
    for res, spans in groups:
        parts.append(b'{"resource":' + res.encode() + _SCOPE_OPEN.encode() + b",".join(spans) + b"]}]}")
    return b'{"resourceSpans":[' + b",".join(parts) + b"]}"


def scope_pb() -> bytes:
    """The InstrumentationScope of every span, as protobuf bytes."""
    return InstrumentationScope(name=SCOPE_NAME, version=__version__).SerializeToString()


def any_value(v: dict[str, Any]) -> AnyValue:
    if "stringValue" in v:
        return AnyValue(string_value=v["stringValue"])
    if "intValue" in v:
        return AnyValue(int_value=int(v["intValue"]))
    if "arrayValue" in v:
        return AnyValue(array_value=ArrayValue(values=[any_value(x) for x in v["arrayValue"].get("values", [])]))
    if "boolValue" in v:
        return AnyValue(bool_value=v["boolValue"])
    if "doubleValue" in v:
        return AnyValue(double_value=float(v["doubleValue"]))
    raise ValueError(f"unsupported OTLP JSON value {v!r}")


_KV_CACHE: dict[tuple, KeyValue] = {}


def key_values(attrs: list[dict[str, Any]]) -> list[KeyValue]:
    """KeyValue messages of OTLP JSON attributes. Most (method, route, peer, scheme...) repeat from
    span to span: a message made once is reused (protobuf copies it in C when it is added to a
    span), which halves the cost of a span's protobuf compared with making each anew."""
    out = []
    cache = _KV_CACHE
    for a in attrs:
        v = a["value"]
        if len(v) == 1 and ("stringValue" in v or "intValue" in v):
            ck = (a["key"], *v.items())
            kv = cache.get(ck)
            if kv is None:
                if len(cache) > 200_000:  # bounded: paths and ports vary without end
                    cache.clear()
                kv = cache[ck] = KeyValue(key=a["key"], value=any_value(v))
            out.append(kv)
        else:
            out.append(KeyValue(key=a["key"], value=any_value(v)))
    return out


def span_from_json(d: dict[str, Any]) -> Span:
    """A Span from its OTLP JSON object."""
    kw: dict[str, Any] = {
        "trace_id": bytes.fromhex(d["traceId"]),
        "span_id": bytes.fromhex(d["spanId"]),
        "name": d["name"],
        "kind": d["kind"],
        "start_time_unix_nano": int(d["startTimeUnixNano"]),
        "end_time_unix_nano": int(d["endTimeUnixNano"]),
        "attributes": key_values(d["attributes"]),
    }
    if "parentSpanId" in d:
        kw["parent_span_id"] = bytes.fromhex(d["parentSpanId"])
    st = d.get("status")
    if st is not None:
        kw["status"] = Status(code=st.get("code", 0), message=st.get("message", ""))
    return Span(**kw)


class ResourceCache:
    """Resource messages by their JSON (a few hundred distinct ones per tape, parsed once each)."""

    def __init__(self) -> None:
        self._by_json: dict[str, Resource] = {}

    def get(self, res_json: str) -> Resource:
        r = self._by_json.get(res_json)
        if r is None:
            r = self._by_json[res_json] = Resource(attributes=key_values(json.loads(res_json)["attributes"]))
        return r


def traces_request(groups: Iterable[Group], resources: ResourceCache) -> ExportTraceServiceRequest:
    """The ExportTraceServiceRequest of the groups (the same content as traces_json_line)."""
    scope = InstrumentationScope(name=SCOPE_NAME, version=__version__)
    req = ExportTraceServiceRequest()
    for res, spans in groups:
        rs = ResourceSpans(resource=resources.get(res), scope_spans=[ScopeSpans(scope=scope, spans=[span_from_json(json.loads(bytes(s))) for s in spans])])
        req.resource_spans.append(rs)
    return req


def split_groups(groups: list[Group]) -> tuple[list[Group], list[Group]]:
    """The groups' spans cut in two halves of equal count (for a request over the size limit)."""
    total = sum(len(s) for _, s in groups)
    half, first, second, n = total // 2, [], [], 0
    for res, spans in groups:
        if n >= half:
            second.append((res, spans))
        elif n + len(spans) <= half:
            first.append((res, spans))
        else:
            k = half - n
            first.append((res, spans[:k]))
            second.append((res, spans[k:]))
        n += len(spans)
    return first, second


def metrics_json_line(req: ExportMetricsServiceRequest) -> str:
    """A MetricsData JSON line (no newline): protobuf's JSON mapping with enums as integers, as
    OTLP JSON asks (metrics carry no ids, so json_format's base64 rule for bytes does not apply)."""
    from google.protobuf.json_format import MessageToDict

    return json.dumps(MessageToDict(req, use_integers_for_enums=True), separators=(",", ":"), ensure_ascii=False)
