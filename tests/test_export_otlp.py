"""`flowtape export otlp`: spans and metrics checked against the tape (the oracle), through a real
OTLP receiver (ddapm-test-agent), scripted receivers (retries, refusals, partial success,
resume) and the official protobuf JSON parser for JSON Lines files."""

from __future__ import annotations

import ast
import base64
import bisect
import json
import os
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.metrics.v1.metrics_pb2 import MetricsData
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

import flowtape
from conftest import FIXTURES, ROOT
from flowtape.analyze.export.encode import span_from_json
from flowtape.analyze.export.run import ExportOptions, export
from flowtape.analyze.export.semconv import DURATION_BOUNDS
from flowtape.analyze.export.sinks import Backoff, OtlpHttp, rpc_status_message
from otlp_receivers import Agent, ScriptedReceiver

TINY, BASELINE = FIXTURES / "tiny.tape", FIXTURES / "synth-baseline.tape"


@pytest.fixture(scope="session")
def agent():
    a = Agent()
    yield a
    a.stop()


# --- reading what was exported -------------------------------------------------------------

def _attrs(kvs: list[dict]) -> dict:
    out = {}
    for kv in kvs:
        v = kv["value"]
        (k2, x), = v.items()
        if k2 in ("intValue", "int_value"):
            x = int(x)
        elif k2 in ("arrayValue", "array_value"):
            x = [next(iter(e.values())) for e in x.get("values", [])]
        out[kv["key"]] = x
    return out


def _g(d: dict, camel: str, snake: str, default=None):
    return d.get(camel, d.get(snake, default))


def spans_of(docs: list[dict], ids: str = "hex") -> list[dict]:
    """Flat spans (resource attributes merged in as res) from TracesData dicts, camelCase (files)
    or snake_case (the agent); ids normalised to hex."""
    out = []
    for d in docs:
        for rs in _g(d, "resourceSpans", "resource_spans", []):
            res = _attrs(rs["resource"]["attributes"])
            for ss in _g(rs, "scopeSpans", "scope_spans", []):
                for s in ss["spans"]:
                    def hx(v):
                        if not v:
                            return None
                        return v if ids == "hex" else base64.b64decode(v).hex()
                    kind = s["kind"]
                    kind = {"SPAN_KIND_SERVER": 2, "SPAN_KIND_CLIENT": 3}.get(kind, kind)
                    st = s.get("status") or {}
                    code = st.get("code", 0)
                    code = {"STATUS_CODE_ERROR": 2, "STATUS_CODE_UNSET": 0}.get(code, code)
                    out.append({"trace": hx(_g(s, "traceId", "trace_id")), "span": hx(_g(s, "spanId", "span_id")),
                                "parent": hx(_g(s, "parentSpanId", "parent_span_id")), "name": s["name"], "kind": kind,
                                "start": int(_g(s, "startTimeUnixNano", "start_time_unix_nano")), "end": int(_g(s, "endTimeUnixNano", "end_time_unix_nano")),
                                "attrs": _attrs(s.get("attributes", [])), "res": res, "error": code == 2, "message": st.get("message", "")})
    return out


def points_of(docs: list[dict]) -> list[dict]:
    out = []
    for d in docs:
        for rm in _g(d, "resourceMetrics", "resource_metrics", []):
            res = _attrs(rm["resource"]["attributes"])
            for sm in _g(rm, "scopeMetrics", "scope_metrics", []):
                for m in sm["metrics"]:
                    body = m.get("histogram") or m.get("sum")
                    for p in _g(body, "dataPoints", "data_points", []):
                        out.append({"metric": m["name"], "res": res, "attrs": _attrs(p.get("attributes", [])), "time": int(_g(p, "timeUnixNano", "time_unix_nano")),
                                    "count": int(p.get("count", 0)), "buckets": [int(x) for x in _g(p, "bucketCounts", "bucket_counts", [])],
                                    "value": int(_g(p, "asInt", "as_int", 0)), "sum": p.get("sum"), "start": int(_g(p, "startTimeUnixNano", "start_time_unix_nano"))})
    return out


def last_points(points: list[dict]) -> dict:
    """The final (whole-window) point of every series."""
    last: dict = {}
    for p in points:
        key = (p["metric"], json.dumps(p["res"], sort_keys=True), json.dumps(p["attrs"], sort_keys=True))
        if key not in last or p["time"] > last[key]["time"]:
            last[key] = p
    return last


def bucket(seconds: float) -> int:
    """Explicit-bounds bucket: bucket i holds (bounds[i-1], bounds[i]]."""
    return bisect.bisect_left(DURATION_BOUNDS, seconds)


def short(name: str) -> str:
    """A topology endpoint name as a service name: 'shop/api' -> 'api', 'external:x' -> 'x'."""
    return name.split(":", 1)[1] if ":" in name else name.split("/")[-1]


def exchanges_per_edge(spans: list[dict]) -> Counter:
    """Exchanges per (client service, server service): every client span, and every server span
    whose client span is not in the export (its parent is not one of them)."""
    client_ids = {s["span"] for s in spans if s["kind"] == 3}
    c: Counter = Counter()
    for s in spans:
        if "http.request.method" not in s["attrs"]:
            continue
        if s["kind"] == 3:
            c[(s["res"]["service.name"], s["attrs"]["peer.service"])] += 1
        elif s["parent"] not in client_ids:
            c[(s["attrs"]["peer.service"], s["res"]["service.name"])] += 1
    return c


def export_to_agent(agent, tape: Path, cli, *extra: str) -> tuple[list[dict], list[dict]]:
    token = uuid.uuid4().hex
    r = cli("export", "otlp", tape, "--endpoint", agent.url, "--headers", f"X-Datadog-Test-Session-Token={token}", "--fresh",
            "--checkpoint", Path("/tmp") / f"flowtape-test-{token}.json", *extra)
    assert r.code == 0, r.err
    return agent.traces(token), agent.metrics(token)


# --- through a real receiver ---------------------------------------------------------------

@pytest.mark.parametrize("tape", [TINY, BASELINE], ids=["tiny", "synth-baseline"])
def test_spans_per_edge_equal_topology_and_every_row_is_a_span(agent, cli, tape):
    traces, metrics = export_to_agent(agent, tape, cli)
    spans = spans_of(traces, ids="base64")
    t = flowtape.open(tape)
    n_http = t.sql("select count(*) from http").fetchall()[0][0]
    n_dns = t.enriched("dns").count("*").fetchall()[0][0]
    assert sum(1 for s in spans if "http.request.method" in s["attrs"]) == n_http  # one span per exchange side
    assert sum(1 for s in spans if "dns.question.name" in s["attrs"]) == n_dns
    assert len({s["span"] for s in spans}) == len(spans)  # ids unique
    topo = {(short(r["client"]), short(r["server"])): r["requests"] for r in t.report.topology().iter_rows(named=True) if r["requests"]}
    assert dict(exchanges_per_edge(spans)) == topo
    # the service graph counts the same exchanges
    total = {(p["attrs"]["client"], p["attrs"]["server"]): p["value"] for p in last_points(points_of(metrics)).values()
             if p["metric"] == "traces_service_graph_request_total"}
    assert total == topo
    # every server span of an exchange whose client side was recorded is that client span's child, in its trace
    by_id = {s["span"]: s for s in spans}
    for s in spans:
        if s["kind"] == 2 and s["parent"] in by_id:
            assert by_id[s["parent"]]["trace"] == s["trace"] and by_id[s["parent"]]["kind"] == 3
    # every span's ids are the request-journeys view's
    view = json.loads(cli("report", "traces", tape, "-f", "json").out)
    assert sorted((s["trace"], s["span"], s["parent"] or "") for s in spans if "http.request.method" in s["attrs"]) == \
        sorted((v["trace_id"], v["span_id"], v["parent_span_id"] or "") for v in view)


@pytest.mark.parametrize("traceparent", [True, False], ids=["traceparent", "no-traceparent"])
def test_parent_links_equal_the_traces_view_and_the_synth_truth(agent, cli, tmp_path, traceparent):
    """Call trees of `flowtape synth --journeys` through the real receiver: every HTTP span's
    trace, span and parent ids are those `flowtape report traces -f json` prints, and the trees
    are the ones truth.json lists (each journey one trace, each span under its logged parent;
    spans found by who recorded them, their side and start). Without traceparent the links come
    from TCP sequence numbers and threads alone."""
    from flowtape.capture.synth import Params, read_truth, synthesize

    path = tmp_path / "j.tape"
    synthesize(path, Params(seed=7, duration_ns=20 * 10**9, rps=10.0, journeys=3.0, journeys_traceparent=traceparent))
    traces, _ = export_to_agent(agent, path, cli, "--signals", "traces")
    spans = [s for s in spans_of(traces, ids="base64") if "http.request.method" in s["attrs"]]
    view = json.loads(cli("report", "traces", path, "-f", "json").out)
    assert len(spans) == len(view) == flowtape.open(path).sql("SELECT count(*) FROM http").fetchall()[0][0]
    assert sorted((s["trace"], s["span"], s["parent"] or "") for s in spans) == \
        sorted((v["trace_id"], v["span_id"], v["parent_span_id"] or "") for v in view)
    by_key = {(s["res"]["k8s.node.name"], {2: "server", 3: "client"}[s["kind"]], s["start"]): s for s in spans}
    assert len(by_key) == len(spans)

    def find(key: str) -> dict:
        node, side, start = key.split("|")[:3]
        return by_key[(node, side, int(start))]

    truth = read_truth(path)["journeys"]
    assert truth["count"] >= 20
    links = 0
    for j in truth["journeys"]:
        got = [find(x["key"]) for x in j["spans"]]
        assert len({g["trace"] for g in got}) == 1  # one trace per journey
        if traceparent:
            assert got[0]["trace"] == j["trace_id"]
        for x, g in zip(j["spans"], got):
            if x["parent"] is None:
                assert g["parent"] is None
            else:
                assert g["parent"] == find(x["parent"])["span"]
                links += 1
    assert links == truth["spans_total"] - truth["count"]
    # the calls a server made are its children: client spans have parents now
    assert sum(1 for s in spans if s["kind"] == 3 and s["parent"]) >= truth["spans_total"] // 3


def test_attribute_values_resources_ids_and_times_of_tiny(agent, cli):
    traces, _ = export_to_agent(agent, TINY, cli, "--signals", "traces")
    spans = spans_of(traces, ids="base64")
    t = flowtape.open(TINY)
    rows = t.sql("select side, epoch_ns(ts_request) a, epoch_ns(ts_response) b, path, traceparent from http order by ts_request, side").fetchall()
    http = [s for s in spans if "http.request.method" in s["attrs"]]
    client = next(s for s in http if s["kind"] == 3 and s["attrs"]["url.path"] == "/orders/1001")
    server = next(s for s in http if s["kind"] == 2 and s["attrs"]["url.path"] == "/orders/1001")
    a, b = next((r[1], r[2]) for r in rows if r[0] == "client" and r[3] == "/orders/1001")
    assert (client["start"], client["end"]) == (a, b)  # the original timestamps
    assert client["name"] == server["name"] == "GET /orders/{id}"  # the route template, never the raw path
    assert client["attrs"] == {
        "http.request.method": "GET", "http.response.status_code": 200, "url.scheme": "http", "url.template": "/orders/{id}",
        "server.address": "api.shop.svc.cluster.local", "server.port": 80, "network.peer.address": "10.96.0.20", "network.protocol.version": "1.1",
        "network.transport": "tcp", "user_agent.original": "frontend/1.4", "peer.service": "api", "url.path": "/orders/1001",
        "url.full": "http://api.shop.svc.cluster.local/orders/1001", "network.peer.port": 80, "http.request.size": 250, "http.response.size": 6000}
    assert server["attrs"]["http.route"] == "/orders/{id}" and server["attrs"]["client.address"] == "10.0.1.5"
    assert server["attrs"]["client.port"] == 51000 and server["attrs"]["server.port"] == 8080 and server["attrs"]["peer.service"] == "frontend"
    assert client["res"] == {"service.name": "frontend", "service.namespace": "shop", "k8s.namespace.name": "shop", "k8s.pod.name": "frontend-7d9f-abcde",
                             "k8s.deployment.name": "frontend", "k8s.node.name": "node-a", "cloud.availability_zone": "eu-west-1a",
                             "cloud.region": "eu-west-1", "process.pid": 4242, "process.executable.name": "frontend"}
    assert server["res"]["k8s.pod.name"] == "api-5c6b-xk2p9" and server["res"]["cloud.availability_zone"] == "eu-west-1b"
    # trace ids from the recorded traceparent, byte for byte; the server side is the client side's child
    assert client["trace"] == server["trace"] == rows[0][4].split("-")[1]
    assert server["parent"] == client["span"] and client["parent"] is None
    post = next(s for s in http if s["kind"] == 2 and s["attrs"]["http.request.method"] == "POST")
    assert post["name"] == "POST /orders" and post["attrs"]["url.query"] == "coupon="
    # status by the conventions: a 500 is an error on both sides; nothing else here is
    errors = sorted((s["kind"], s["attrs"]["url.path"]) for s in http if s["error"])
    assert errors == [(2, "/health"), (3, "/health")]
    assert all(s["attrs"]["error.type"] == "500" for s in http if s["error"]) and not any("error.type" in s["attrs"] for s in http if not s["error"])
    dns = {s["attrs"]["dns.question.name"]: s for s in spans if "dns.question.name" in s["attrs"]}
    assert dns["golang.org.shop.svc.cluster.local"]["error"] and dns["golang.org.shop.svc.cluster.local"]["attrs"]["error.type"] == "NXDOMAIN"
    assert dns["golang.org"]["attrs"]["dns.answers"] == ["142.250.74.110"] and not dns["golang.org"]["error"]
    assert all(s["kind"] == 3 and s["name"].startswith("DNS ") for s in dns.values())


def test_same_tape_same_ids(agent, cli, tmp_path):
    a, _ = export_to_agent(agent, BASELINE, cli, "--signals", "traces")
    ids = sorted((s["trace"], s["span"], s["parent"] or "") for s in spans_of(a, ids="base64"))
    assert cli("export", "otlp", BASELINE, "-o", tmp_path / "b.jsonl", "--signals", "traces").code == 0
    file_spans = spans_of([json.loads(ln) for ln in (tmp_path / "b.jsonl").read_text().splitlines()])
    assert sorted((s["trace"], s["span"], s["parent"] or "") for s in file_spans) == ids


def test_histogram_buckets_equal_the_tapes_exchanges(agent, cli):
    _, metrics = export_to_agent(agent, BASELINE, cli, "--signals", "metrics")
    points = points_of(metrics)
    last = last_points(points)
    t = flowtape.open(BASELINE)
    t.enriched("http"), t.enriched("dns"), t.enriched("flows")  # the views the oracles below read
    # per route: the latency of every answered server-side row of the tape, bucketed here
    from flowtape.analyze.sums import ROUTE

    want: dict = defaultdict(lambda: [0] * (len(DURATION_BOUNDS) + 1))
    for route, lat in t.sql(f"select {ROUTE.format(path='path')}, latency_ns from http where side = 'server' and latency_ns is not null").fetchall():
        want[route][bucket(lat / 1e9)] += 1
    got: dict = defaultdict(lambda: [0] * (len(DURATION_BOUNDS) + 1))
    for p in last.values():
        if p["metric"] == "http.server.request.duration":
            g = got[p["attrs"]["http.route"]]
            for i, c in enumerate(p["buckets"]):
                g[i] += c
    assert dict(got) == dict(want)
    # each pod server is its workload's resource; a host-network server is its process on its node
    res = [p["res"] for p in last.values() if p["metric"] == "http.server.request.duration"]
    topo = [r["server"] for r in t.report.topology().iter_rows(named=True) if r["requests"]]
    assert {r["service.name"] for r in res if "k8s.pod.name" in r} == {short(x) for x in topo if "/" in x}
    assert {"node:" + r["k8s.node.name"] for r in res if "k8s.pod.name" not in r} == {x for x in topo if x.startswith("node:")}
    assert {r["service.name"] for r in res if "k8s.pod.name" not in r} == {r["process.executable.name"] for r in res if "k8s.pod.name" not in r}
    # client side: every answered client row once
    n_client = t.sql("select count(*) from http where side = 'client' and latency_ns is not null").fetchall()[0][0]
    assert sum(p["count"] for p in last.values() if p["metric"] == "http.client.request.duration") == n_client
    # dns: every answered lookup once, in its bucket
    dns_want = Counter(bucket(x / 1e9) for (x,) in t.sql("select latency_ns from enriched_dns where latency_ns is not null").fetchall())
    dns_got: Counter = Counter()
    for p in last.values():
        if p["metric"] == "dns.lookup.duration":
            for i, c in enumerate(p["buckets"]):
                dns_got[i] += c
    assert +dns_got == dns_want
    # cumulative: within a series, counts never decrease and every point starts at the window's start
    start = t.window[0]
    series = defaultdict(list)
    for p in points:
        series[(p["metric"], json.dumps(p["res"]), json.dumps(p["attrs"]))].append(p)
    for ps in series.values():
        ps.sort(key=lambda p: p["time"])
        assert all(p["start"] == start for p in ps)
        vals = [p["count"] or p["value"] for p in ps]
        assert vals == sorted(vals)
    # inter-zone bytes are the traffic report's cross-zone pairs
    zp = {(r["src_zone"], r["dst_zone"]): r["bytes"] for r in t.report.zone_pairs().iter_rows(named=True) if r["kind"] == "cross_zone"}
    iz = {(p["attrs"]["src.zone"], p["attrs"]["dst.zone"]): p["value"] for p in last.values() if p["metric"] == "obi.network.inter.zone.bytes"}
    assert iz == zp
    flow_total = t.sql("select sum(bytes) from enriched_flows").fetchall()[0][0]
    assert sum(p["value"] for p in last.values() if p["metric"] == "obi.network.flow.bytes") == flow_total
    # failed requests by the span status rules: 5xx, no answer, and 4xx seen by a client
    failed = t.sql("select count(*) from enriched_http where status >= 500 or status is null or (side = 'client' and status >= 400)").fetchall()[0][0]
    assert sum(p["value"] for p in last.values() if p["metric"] == "traces_service_graph_request_failed_total") == failed


def test_filters_select_spans_by_their_own_time_and_namespace(agent, cli):
    since, until = "2024-03-03T02:01:00Z", "2024-03-03T02:02:00Z"
    traces, _ = export_to_agent(agent, BASELINE, cli, "--signals", "traces", "--since", since, "--until", until)
    spans = spans_of(traces, ids="base64")
    t = flowtape.open(BASELINE)
    n = t.sql(f"select count(*) from http where ts_request >= '{since}' and ts_request < '{until}'").fetchall()[0][0]
    assert sum(1 for s in spans if "http.request.method" in s["attrs"]) == n > 0
    # --namespace: the exchanges with an endpoint in it (here: a monitoring agent scraping the nodes)
    traces, _ = export_to_agent(agent, BASELINE, cli, "--signals", "traces", "--namespace", "monitoring")
    spans = [s for s in spans_of(traces, ids="base64") if "http.request.method" in s["attrs"]]
    t.enriched("http")
    (clients,), = t.sql("select count(*) from enriched_http where client_namespace = 'monitoring'").fetchall()
    assert sum(1 for s in spans if s["kind"] == 3) == clients > 0
    workloads = {s["res"]["service.name"] for s in spans if s["res"].get("k8s.namespace.name") == "monitoring"}
    assert all(s["res"].get("k8s.namespace.name") == "monitoring" or s["attrs"]["peer.service"] in workloads for s in spans)


# --- JSON Lines ----------------------------------------------------------------------------

def _hex_ids_to_base64(d: dict) -> dict:
    for rs in d.get("resourceSpans", []):
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                for k in ("traceId", "spanId", "parentSpanId"):
                    if k in s:
                        s[k] = base64.b64encode(bytes.fromhex(s[k])).decode()
    return d


def test_json_lines_parse_with_the_official_parser_ids_byte_for_byte(cli, tmp_path):
    out = tmp_path / "tiny.jsonl"
    r = cli("export", "otlp", TINY, "--output", out)
    assert r.code == 0, r.err
    lines = out.read_text().splitlines()
    traces = [ln for ln in lines if ln.startswith('{"resourceSpans"')]
    metrics = [ln for ln in lines if ln.startswith('{"resourceMetrics"')]
    assert traces and metrics and len(traces) + len(metrics) == len(lines)
    for ln in traces:
        raw = json.loads(ln)
        # OTLP JSON writes ids as hex; protobuf's parser reads bytes as base64: convert, then parse
        msg = json_format.Parse(json.dumps(_hex_ids_to_base64(json.loads(ln))), TracesData())
        spans = [s for rs in msg.resource_spans for ss in rs.scope_spans for s in ss.spans]
        js = [s for rs in raw["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
        assert len(spans) == len(js)
        for s, j in zip(spans, js):
            assert s.trace_id == bytes.fromhex(j["traceId"]) and len(s.trace_id) == 16
            assert s.span_id == bytes.fromhex(j["spanId"]) and len(s.span_id) == 8
            assert s.parent_span_id == (bytes.fromhex(j["parentSpanId"]) if "parentSpanId" in j else b"")
            assert s == span_from_json(j)  # the protobuf sent over OTLP/HTTP is the same span
    for ln in metrics:
        m = json_format.Parse(ln, MetricsData())
        assert m.resource_metrics and all(rm.scope_metrics[0].metrics for rm in m.resource_metrics)
    # the same tape and arguments write the same file, byte for byte
    assert cli("export", "otlp", TINY, "--output", tmp_path / "again.jsonl").code == 0
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes()


def test_unwritable_output_is_one_line(cli, tmp_path):
    r = cli("export", "otlp", TINY, "--output", tmp_path / "no" / "such" / "dir.jsonl")
    assert r.code == 6 and r.err.count("\n") == 1 and "cannot write" in r.err


def test_a_memory_limit_too_small_is_one_line(cli, tmp_path):
    """DuckDB running out of memory within --memory-limit is the host's limit, not a bug: one line
    saying what to raise, exit 7, and no partial file left behind."""
    out = tmp_path / "t.jsonl"
    r = cli("export", "otlp", TINY, "--output", out, "--memory-limit", "1MB")
    assert r.code == 7 and r.err.count("\n") == 1, r.err
    assert "out of memory" in r.err and "--memory-limit" in r.err and "internal error" not in r.err
    assert not out.exists()


def test_output_to_a_fifo_writes_through_it_and_leaves_it(cli, tmp_path):
    """An --output that is no regular file (/dev/null, a FIFO) is written directly, never renamed
    over: a FIFO stands in for /dev/null here (a broken sink would replace the device node)."""
    import stat
    import threading

    want = tmp_path / "tiny.jsonl"
    assert cli("export", "otlp", TINY, "--output", want).code == 0
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    r = cli("export", "otlp", TINY, "--output", fifo)
    reader.join(60)
    assert r.code == 0, r.err
    assert stat.S_ISFIFO(fifo.stat().st_mode) and not (tmp_path / "pipe.partial").exists()
    assert got == [want.read_bytes()] and got[0].count(b"\n") > 1


# --- the protocol: retries, refusals, partial success, resume --------------------------------

def _spans_in(bodies: list[bytes]) -> list[bytes]:
    out = []
    for b in bodies:
        req = ExportTraceServiceRequest()
        req.ParseFromString(b)
        out += [s.span_id for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    return out


def test_503_twice_then_200_delivers_every_batch_exactly_once():
    rx = ScriptedReceiver(lambda path, body, n: (503, {"Retry-After": "0"}, b"") if n <= 2 else (200, {}, b""))
    waits: list[float] = []
    try:
        sink = OtlpHttp(rx.url, sleep=waits.append)
        t = flowtape.open(BASELINE)
        s = export(t, ExportOptions(signals=("traces",), batch_spans=2000), sink)
    finally:
        rx.close()
    traces = [b for p, b in rx.accepted if p == "/v1/traces"]
    assert len(traces) == len(set(traces)) == s.requests  # each batch accepted once
    ids = _spans_in(traces)
    assert len(ids) == len(set(ids)) == s.sent["http"] + s.sent["dns"]
    assert len(rx.requests) == 3 * len(traces) and waits == [0.0] * (2 * len(traces))  # Retry-After honoured
    assert all(h.get("Content-Encoding") == "gzip" and h.get("Content-Type") == "application/x-protobuf" for _, h, _ in rx.requests)


def test_backoff_without_retry_after_grows_with_jitter():
    rx = ScriptedReceiver(lambda path, body, n: (429 if n <= 4 else 200, {}, b""))
    waits: list[float] = []
    try:
        sink = OtlpHttp(rx.url, sleep=waits.append, backoff=Backoff(base=0.5, cap=3.0, retries=6))
        export(flowtape.open(TINY), ExportOptions(signals=("traces",)), sink)
    finally:
        rx.close()
    assert len(rx.accepted) == 2 and len(waits) == 8  # two requests (HTTP and DNS spans), each retried 4 times
    for i, w in enumerate(waits):
        nominal = min(3.0, 0.5 * 2 ** (i % 4))
        assert 0.5 * nominal <= w < 1.5 * nominal
    assert len(set(waits)) == 8  # jittered: no two waits alike


def _status_body(message: str) -> bytes:
    """A google.rpc.Status{code=3, message} as protobuf (what OTLP receivers send with a 400)."""
    m = message.encode()
    return b"\x08\x03\x12" + bytes([len(m)]) + m


def test_400_stops_at_once_with_one_line_and_no_secret(cli):
    assert rpc_status_message(_status_body("bad span")) == "bad span"
    rx = ScriptedReceiver(lambda path, body, n: (400, {}, _status_body("span 3: invalid trace id")))
    try:
        r = cli("export", "otlp", TINY, "--endpoint", rx.url, "--headers", "authorization=Bearer%20s3cr3t-t0ken", "--fresh",
                "--checkpoint", Path("/tmp") / f"flowtape-test-{uuid.uuid4().hex}.json")
    finally:
        rx.close()
    assert r.code == 9
    assert r.err.count("\n") == 1 and "Traceback" not in r.err
    assert "400" in r.err and "span 3: invalid trace id" in r.err
    assert len(rx.requests) == 1  # no retry
    assert rx.requests[0][1]["authorization"] == "Bearer s3cr3t-t0ken"  # sent, URL-decoded
    assert "s3cr3t" not in r.err + r.out


def test_partial_success_rejections_are_counted_and_reported(cli):
    reply = ExportTraceServiceResponse()
    reply.partial_success.rejected_spans = 3
    reply.partial_success.error_message = "3 spans too old"
    rx = ScriptedReceiver(lambda path, body, n: (200, {}, reply.SerializeToString() if path == "/v1/traces" else b""))
    try:
        r = cli("export", "otlp", TINY, "--endpoint", rx.url, "--signals", "traces", "--fresh",
                "--checkpoint", Path("/tmp") / f"flowtape-test-{uuid.uuid4().hex}.json")
    finally:
        rx.close()
    assert r.code == 9 and "rejected 6" in r.err and "3 spans too old" in r.err  # 2 requests (http, dns) x 3


def test_resume_against_the_same_receiver(cli, tmp_path):
    ck = tmp_path / "ck.json"
    state = {"refuse_after": 4}
    rx = ScriptedReceiver(lambda path, body, n: (200, {}, b"") if len(rx.accepted) < state["refuse_after"] else (503, {}, b""))
    args = ["export", "otlp", BASELINE, "--batch-spans", "1000", "--checkpoint", ck, "--endpoint", rx.url, "--retries", "0"]
    try:
        r = cli(*args)
        assert r.code == 9 and "not accepted after 1 attempts" in r.err
        before = list(rx.accepted)
        state["refuse_after"] = 10 ** 9
        r = cli(*args)
        assert r.code == 0 and "resuming" in r.err, r.err
        r = cli(*args)
        assert r.code == 0 and "nothing to send" in r.err
    finally:
        rx.close()
    bodies = [b for _, b in rx.accepted]
    assert len(bodies) == len(set(bodies))  # no request accepted twice
    ids = _spans_in([b for p, b in rx.accepted if p == "/v1/traces"])
    t = flowtape.open(BASELINE)
    assert len(ids) == len(set(ids)) == t.rows("http") + t.enriched("dns").count("*").fetchall()[0][0]
    assert len(before) == 4


def test_requests_over_the_size_limit_are_halved():
    rx = ScriptedReceiver(lambda path, body, n: (200, {}, b""))
    try:
        s = export(flowtape.open(TINY), ExportOptions(signals=("traces",), max_request_bytes=3000), OtlpHttp(rx.url))
    finally:
        rx.close()
    bodies = [b for p, b in rx.accepted if p == "/v1/traces"]
    assert len(bodies) > 2 and all(len(b) <= 3000 or len(_spans_in([b])) == 1 for b in bodies)
    assert sorted(_spans_in(bodies)) == sorted(set(_spans_in(bodies))) and len(_spans_in(bodies)) == s.sent["http"] + s.sent["dns"] == 12


def test_unreachable_receiver_is_one_line(cli):
    r = cli("export", "otlp", TINY, "--endpoint", "http://127.0.0.1:9", "--retries", "0", "--fresh",
            "--checkpoint", Path("/tmp") / f"flowtape-test-{uuid.uuid4().hex}.json")
    assert r.code == 9 and r.err.count("\n") == 1 and "Connection refused" in r.err


def test_usage_errors(cli, tmp_path):
    assert cli("export", "otlp", TINY).code == 2
    r = cli("export", "otlp", TINY, "-o", tmp_path / "x", "--endpoint", "http://x")
    assert r.code == 2 and "not both" in r.err
    r = cli("export", "otlp", TINY, "--endpoint", "ftp://user:pw@host")
    assert r.code == 2 and "pw" not in r.err
    r = cli("export", "otlp", TINY, "-o", tmp_path / "x", "--since", "yesterday")
    assert r.code == 2 and "--since" in r.err


# --- layering ------------------------------------------------------------------------------

def test_export_imports_neither_capture_nor_render():
    for py in (ROOT / "analyze" / "export").glob("*.py"):
        tree = ast.parse(py.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mod = ("." * node.level) + (node.module or "")
                assert "capture" not in mod and "render" not in mod and "report_cli" not in mod, f"{py.name} imports {mod}"
            elif isinstance(node, ast.Import):
                assert not any("capture" in a.name or "render" in a.name for a in node.names), py.name
