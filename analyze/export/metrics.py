"""Metrics: HTTP server/client durations, gRPC call durations (RPC conventions), DNS lookup durations, flow bytes and packets per edge,
inter-zone bytes and the service graph, as cumulative OTLP points over the tape's window.

Temporality is cumulative, with every point's start time at the start of the window: a tape is
a finished recording, so "everything since the window opened" is a value that never changes for
a given point; a point sent twice (a retried request) is the same point, harmless to any backend;
Prometheus-style backends take cumulative only (delta would need converting there); and rates
over any interval come out of consecutive points. Points are written every `interval` (10 s by
default, the last one at the window's end), so an incident keeps its shape in time; a series
gets points from its first interval with data to the end of the window.

The rows are summed by DuckDB per (series, interval, bucket) (small: series x intervals), then
made cumulative here. Durations are HTTP time to first response byte and DNS answer latency;
exchanges without an answer have no duration and are only counted (error.type set) in the
service graph.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_CUMULATIVE, Histogram, HistogramDataPoint, NumberDataPoint, Sum
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from ... import __version__
from ...reader import Tape
from ..enrich import NAME_FIELDS
from ..reports.filters import Filters
from .encode import key_values
from .resources import EXPORTER_RESOURCE, resource_attributes
from .semconv import DURATION_BOUNDS, SCOPE_NAME, endpoint_service_sql
from .spans import DNS_ERROR_TYPE, ERROR_TYPE, GRPC, GRPC_STATUS_NAME, KNOWN, LOCAL_PEER, SPAN_ERROR_TYPE

_BUCKET = "(" + " + ".join(f"(x > {b!r})::INTEGER" for b in DURATION_BOUNDS) + ")"
"""The explicit-bounds bucket of x seconds: bucket i holds (bounds[i-1], bounds[i]]."""


@dataclass(frozen=True)
class MetricDef:
    name: str
    kind: str  # "histogram" or "sum"
    unit: str
    description: str


METRICS = {m.name: m for m in (
    MetricDef("http.server.request.duration", "histogram", "s", "Duration of HTTP server requests (to the first byte of the response)."),
    MetricDef("http.client.request.duration", "histogram", "s", "Duration of HTTP client requests (to the first byte of the response)."),
    MetricDef("rpc.server.call.duration", "histogram", "s", "Measures the duration of an incoming Remote Procedure Call (RPC)."),
    MetricDef("rpc.client.call.duration", "histogram", "s", "Measures the duration of an outgoing Remote Procedure Call (RPC)."),
    MetricDef("dns.lookup.duration", "histogram", "s", "Measures the time taken to perform a DNS lookup."),
    MetricDef("obi.network.flow.bytes", "sum", "By", "Bytes between two endpoints (IP total length, headers included), each packet once."),
    MetricDef("obi.network.flow.packets", "sum", "{packet}", "Packets between two endpoints, each once."),
    MetricDef("obi.network.inter.zone.bytes", "sum", "By", "Bytes between two availability zones (IP total length)."),
    MetricDef("traces_service_graph_request_total", "sum", "{request}", "Requests between two services (each exchange once)."),
    MetricDef("traces_service_graph_request_failed_total", "sum", "{request}", "Failed requests between two services (an error status on either side, or no response)."),
    MetricDef("traces_service_graph_request_server_seconds", "histogram", "s", "Server-side duration of requests between two services."),
    MetricDef("traces_service_graph_request_client_seconds", "histogram", "s", "Client-side duration of requests between two services."),
)}


def _pairs(attrs: list[tuple[str, str]]) -> str:
    """SQL of a list of [key, value] pairs (NULL values kept; dropped in Python)."""
    return "[" + ", ".join(f"['{k}', ({v})::VARCHAR]" for k, v in attrs) + "]"


_HTTP_SERVER = [("http.request.method", f"CASE WHEN {KNOWN} THEN method ELSE '_OTHER' END"), ("url.scheme", "CASE WHEN tls THEN 'https' ELSE 'http' END"),
                ("http.response.status_code", "status"), ("http.route", "route"), ("network.protocol.version", "nullif(replace(http_version, 'HTTP/', ''), '')"),
                ("error.type", ERROR_TYPE)]
_HOST_ADDR = ("CASE WHEN host LIKE '[%' THEN nullif(split_part(substr(host, 2), ']', 1), '') WHEN host LIKE '%:%:%' THEN host "
              "ELSE nullif(split_part(host, ':', 1), '') END")
_HOST_PORT = ("CASE WHEN host LIKE '[%]:%' THEN TRY_CAST(split_part(host, ']:', 2) AS INTEGER) "
              "WHEN host LIKE '%:%' AND host NOT LIKE '%:%:%' AND host NOT LIKE '[%' THEN TRY_CAST(split_part(host, ':', 2) AS INTEGER) END")
_SERVER = [("server.address", f"coalesce({_HOST_ADDR}, s_dns, sock_ip)"), ("server.port", f"coalesce({_HOST_PORT}, sock_port)")]
"""A client's server, as its request named it (Host or :authority), else the DNS name or the address it connected to."""
_HTTP_CLIENT = [("http.request.method", f"CASE WHEN {KNOWN} THEN method ELSE '_OTHER' END"), *_SERVER, ("url.scheme", "CASE WHEN tls THEN 'https' ELSE 'http' END"),
                ("http.response.status_code", "status"), ("network.protocol.version", "nullif(replace(http_version, 'HTTP/', ''), '')"), ("error.type", ERROR_TYPE)]
# gRPC calls also get the RPC conventions' call durations (their attributes as on the spans: the
# same value SHOULD be the span's duration); they stay in the HTTP histograms too, being HTTP/2
# requests, so an HTTP dashboard still sees every request
_RPC_SERVER = [("rpc.system.name", "'grpc'"), ("rpc.method", "concat(grpc_service, '/', grpc_method)"),
               ("rpc.response.status_code", GRPC_STATUS_NAME), ("error.type", SPAN_ERROR_TYPE)]
_RPC_CLIENT = _RPC_SERVER + _SERVER
_GRAPH = [("client", endpoint_service_sql("c", "client_ip")), ("server", endpoint_service_sql("s", "server_ip")),
          ("client_service_namespace", "CASE WHEN c_kind IN ('pod', 'service') THEN c_namespace END"),
          ("server_service_namespace", "CASE WHEN s_kind IN ('pod', 'service') THEN s_namespace END")]
_FAILED = f"({SPAN_ERROR_TYPE}) IS NOT NULL"
"""A request the service graph counts as failed: one whose span is an Error (spans.SPAN_ERROR_TYPE)."""


def _edge(p: str, ip: str) -> list[tuple[str, str]]:
    return [(f"k8s.{p}.namespace", f"{p}_namespace"), (f"k8s.{p}.owner.name", f"CASE WHEN {p}_kind = 'pod' THEN {p}_workload END"),
            (f"k8s.{p}.owner.type", f"CASE WHEN {p}_kind = 'pod' THEN {p}_workload_kind END"), (f"{p}.zone", f"{p}_zone"),
            (f"{p}.name", endpoint_service_sql(p, ip))]


class Window:
    """The cumulative window [start, end) cut into intervals of `interval_ns`."""

    def __init__(self, start_ns: int, end_ns: int, interval_ns: int):
        self.start, self.end, self.interval = start_ns, max(end_ns, start_ns + 1), interval_ns
        self.count = max(1, -(-(self.end - self.start) // interval_ns))

    def k(self, t: str) -> str:
        """SQL: the interval of epoch-ns `t` (clamped into the window)."""
        return f"least(greatest(({t} - {self.start}) // {self.interval}, 0), {self.count - 1})"

    def time(self, k: int) -> int:
        return min(self.start + (k + 1) * self.interval, self.end)


@dataclass
class _Series:
    kind: str
    by_k: dict[int, list] = field(default_factory=dict)


class Accumulator:
    """Per-interval sums of every series, merged across slices; then cumulative points."""

    def __init__(self, window: Window):
        self.window = window
        self.series: dict[tuple, _Series] = {}

    def add_histogram(self, metric: str, res: tuple, attrs: tuple, k: int, bucket: int, n: int, total: float, lo: float, hi: float) -> None:
        s = self.series.setdefault((metric, res, attrs), _Series("histogram"))
        v = s.by_k.get(k)
        if v is None:
            v = s.by_k[k] = [0, 0.0, lo, hi, [0] * (len(DURATION_BOUNDS) + 1)]
        v[0] += n
        v[1] += total
        v[2] = min(v[2], lo)
        v[3] = max(v[3], hi)
        v[4][bucket] += n

    def add_sum(self, metric: str, res: tuple, attrs: tuple, k: int, value: int) -> None:
        s = self.series.setdefault((metric, res, attrs), _Series("sum"))
        s.by_k[k] = s.by_k.get(k, 0) + value

    def points(self) -> Iterator[tuple[str, tuple, tuple, Any]]:
        """(metric, resource, attributes, data point) in a stable order: by metric, resource,
        attributes, time. Each series has a point at the end of every interval from its first."""
        w = self.window
        for key in sorted(self.series, key=lambda k: json.dumps(k, default=str)):
            metric, res, attrs = key
            s = self.series[key]
            first = min(s.by_k)
            if s.kind == "sum":
                total = 0
                for k in range(first, w.count):
                    total += s.by_k.get(k, 0)
                    yield metric, res, attrs, NumberDataPoint(attributes=key_values(_kv(attrs)), start_time_unix_nano=w.start, time_unix_nano=w.time(k), as_int=total)
            else:
                count, total, lo, hi, buckets = 0, 0.0, None, None, [0] * (len(DURATION_BOUNDS) + 1)
                for k in range(first, w.count):
                    v = s.by_k.get(k)
                    if v is not None:
                        count += v[0]
                        total += v[1]
                        lo = v[2] if lo is None else min(lo, v[2])
                        hi = v[3] if hi is None else max(hi, v[3])
                        buckets = [a + b for a, b in zip(buckets, v[4])]
                    yield metric, res, attrs, HistogramDataPoint(
                        attributes=key_values(_kv(attrs)), start_time_unix_nano=w.start, time_unix_nano=w.time(k), count=count, sum=total,
                        bucket_counts=buckets, explicit_bounds=DURATION_BOUNDS, min=lo, max=hi)


def _kv(attrs: tuple) -> list[dict]:
    out = []
    for k, v in attrs:
        if isinstance(v, int):
            out.append({"key": k, "value": {"intValue": str(v)}})
        else:
            out.append({"key": k, "value": {"stringValue": v}})
    return out


_INT_KEYS = {"http.response.status_code", "server.port"}


def _attrs(pairs: list) -> tuple:
    """[[key, value], ...] from SQL -> a hashable attribute tuple, NULLs dropped, ints typed."""
    return tuple((k, int(v) if k in _INT_KEYS else v) for k, v in pairs if v is not None)


def http_slice_sql(window: Window) -> str:
    """Per (metric, resource, attributes, interval, bucket) sums of the rows of ftx_slice."""
    k = window.k("t")
    lat = "(t1 - t) / 1e9"
    res = "CASE WHEN side = 'client' THEN cn ELSE sn END AS nid, pid, comm, node, local_ip"
    return f"""
WITH s AS (SELECT *, {LOCAL_PEER}, {lat} AS x FROM ftx_slice)
SELECT 'http.server.request.duration' AS metric, {res}, {_pairs(_HTTP_SERVER)} AS attrs, {k} AS k, {_BUCKET} AS b,
       count(*) AS n, sum(x) AS total, min(x) AS lo, max(x) AS hi
FROM s WHERE side = 'server' AND t1 IS NOT NULL GROUP BY ALL
UNION ALL
SELECT 'http.client.request.duration', {res}, {_pairs(_HTTP_CLIENT)}, {k}, {_BUCKET}, count(*), sum(x), min(x), max(x)
FROM s WHERE side = 'client' AND t1 IS NOT NULL GROUP BY ALL
UNION ALL
SELECT 'rpc.server.call.duration', {res}, {_pairs(_RPC_SERVER)}, {k}, {_BUCKET}, count(*), sum(x), min(x), max(x)
FROM s WHERE side = 'server' AND t1 IS NOT NULL AND {GRPC} GROUP BY ALL
UNION ALL
SELECT 'rpc.client.call.duration', {res}, {_pairs(_RPC_CLIENT)}, {k}, {_BUCKET}, count(*), sum(x), min(x), max(x)
FROM s WHERE side = 'client' AND t1 IS NOT NULL AND {GRPC} GROUP BY ALL
UNION ALL
SELECT 'traces_service_graph_request_server_seconds', NULL, NULL, NULL, NULL, NULL, {_pairs(_GRAPH)}, {k}, {_BUCKET}, count(*), sum(x), min(x), max(x)
FROM s WHERE side = 'server' AND t1 IS NOT NULL GROUP BY ALL
UNION ALL
SELECT 'traces_service_graph_request_client_seconds', NULL, NULL, NULL, NULL, NULL, {_pairs(_GRAPH)}, {k}, {_BUCKET}, count(*), sum(x), min(x), max(x)
FROM s WHERE side = 'client' AND t1 IS NOT NULL GROUP BY ALL
UNION ALL
SELECT 'traces_service_graph_request_total', NULL, NULL, NULL, NULL, NULL, {_pairs(_GRAPH)}, {k}, NULL, count(*), NULL, NULL, NULL
FROM s WHERE exchange GROUP BY ALL
UNION ALL
SELECT 'traces_service_graph_request_failed_total', NULL, NULL, NULL, NULL, NULL, {_pairs(_GRAPH)}, {k}, NULL, count(*), NULL, NULL, NULL
FROM s WHERE exchange AND ({_FAILED}) GROUP BY ALL"""


def add_rows(acc: Accumulator, rows: Iterator[tuple], names: dict[int, tuple]) -> None:
    """Add the rows of http_slice_sql / dns_sql to `acc` (resource by nid, or by its columns)."""
    for metric, nid, pid, comm, node, ip, pairs, k, b, n, total, lo, hi in rows:
        if nid is None and pid is None and comm is None and node is None and ip is None:
            res = EXPORTER_RESOURCE
        else:
            res = resource_attributes(names.get(nid) if isinstance(nid, int) else nid, pid, comm, node, ip)
        if METRICS[metric].kind == "histogram":
            acc.add_histogram(metric, res, _attrs(pairs), k, b, n, total, lo, hi)
        else:
            acc.add_sum(metric, res, _attrs(pairs), k, n)


def dns_sql(f: Filters, window: Window) -> str:
    k = window.k("epoch_ns(ts_query)")
    names = "[" + ", ".join(f"client_{x}" for x in NAME_FIELDS) + "]"
    return f"""
SELECT 'dns.lookup.duration' AS metric, {names} AS nid, pid, comm, node, client_ip, [['dns.question.name', qname], ['error.type', {DNS_ERROR_TYPE}]] AS attrs,
       {k} AS k, {_BUCKET} AS b, count(*), sum(x), min(x), max(x)
FROM (SELECT *, latency_ns / 1e9 AS x FROM ftx_dns WHERE ({f.time_sql('ts_query')}) AND ({f.namespace_sql('client_namespace')}))
WHERE latency_ns IS NOT NULL GROUP BY ALL"""


def flows_sql(f: Filters, window: Window) -> str:
    k = window.k("epoch_ns(ts_start)")
    edge = _pairs(_edge("src", "src_real") + _edge("dst", "dst_real") + [("transport", "l4")])
    zones = _pairs([("src.zone", "src_zone"), ("dst.zone", "dst_zone")])
    where = f"({f.time_sql('ts_start')}) AND ({f.namespace_sql('src_namespace', 'dst_namespace')})"
    return f"""
WITH fl AS (SELECT * FROM ftx_flows WHERE {where})
SELECT 'obi.network.flow.bytes' AS metric, {edge} AS attrs, {k} AS k, sum(bytes)::BIGINT AS v FROM fl GROUP BY ALL
UNION ALL SELECT 'obi.network.flow.packets', {edge}, {k}, sum(packets)::BIGINT FROM fl GROUP BY ALL
UNION ALL SELECT 'obi.network.inter.zone.bytes', {zones}, {k}, sum(bytes)::BIGINT FROM fl
          WHERE src_zone IS NOT NULL AND dst_zone IS NOT NULL AND src_zone <> dst_zone GROUP BY ALL"""


def add_flow_rows(acc: Accumulator, tape: Tape, f: Filters) -> None:
    for metric, pairs, k, v in tape.sql(flows_sql(f, acc.window)).fetchall():
        acc.add_sum(metric, EXPORTER_RESOURCE, _attrs(pairs), k, v)


def dns_rows(tape: Tape, f: Filters, window: Window) -> Iterator[tuple]:
    for metric, names, pid, comm, node, ip, pairs, k, b, n, total, lo, hi in tape.sql(dns_sql(f, window)).fetchall():
        yield metric, tuple(names), pid, comm, node, ip, pairs, k, b, n, total, lo, hi


def metric_requests(acc: Accumulator, max_points: int) -> Iterator[tuple[ExportMetricsServiceRequest, int]]:
    """The accumulator's points as requests of at most `max_points` data points each (and their
    point count), grouped by resource then metric, in the stable order of Accumulator.points."""
    scope = InstrumentationScope(name=SCOPE_NAME, version=__version__)
    req, n = ExportMetricsServiceRequest(), 0
    cur_res = cur_metric = None
    rm = metric = None
    for name, res, _attrs_, point in acc.points():
        if n >= max_points:
            yield req, n
            req, n, cur_res, cur_metric = ExportMetricsServiceRequest(), 0, None, None
        if res != cur_res:
            rm = req.resource_metrics.add()
            rm.resource.CopyFrom(Resource(attributes=key_values(_kv(res))))
            sm = rm.scope_metrics.add()
            sm.scope.CopyFrom(scope)
            cur_res, cur_metric = res, None
        if name != cur_metric:
            d = METRICS[name]
            metric = rm.scope_metrics[0].metrics.add(name=d.name, unit=d.unit, description=d.description)
            if d.kind == "sum":
                metric.sum.CopyFrom(Sum(aggregation_temporality=AGGREGATION_TEMPORALITY_CUMULATIVE, is_monotonic=True))
            else:
                metric.histogram.CopyFrom(Histogram(aggregation_temporality=AGGREGATION_TEMPORALITY_CUMULATIVE))
            cur_metric = name
        (metric.sum if METRICS[name].kind == "sum" else metric.histogram).data_points.append(point)
        n += 1
    if n:
        yield req, n

