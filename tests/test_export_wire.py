"""The columnar span encoder (analyze/export/columnar.py, wire.py) against the reference (JSON
written in SQL, decoded into opentelemetry-proto's messages): the same bytes, span by span and
request by request, on the fixture tapes and on a tape of real gRPC calls; and gRPC spans by the
RPC conventions, checked through a real receiver (ddapm-test-agent)."""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

import flowtape
from conftest import FIXTURES
from ebpf_support import in_ci
from flowtape.analyze.export import columnar, spans as sp, wire
from flowtape.analyze.export.encode import span_from_json
from flowtape.analyze.export.run import ExportOptions, export
from flowtape.analyze.export.sinks import JsonLines, OtlpHttp
from flowtape.analyze.reports.filters import Filters
from flowtape.merge import merge
from flowtape.writer import TapeWriter
from otlp_receivers import Agent, ScriptedReceiver
from test_export_otlp import export_to_agent, spans_of
from test_report_grpc import CLIENT, SERVER, S, T0, grpc_rows

TINY, BASELINE = FIXTURES / "tiny.tape", FIXTURES / "synth-baseline.tape"


def grpc_tape(path) -> None:
    """Each gRPC call of the real capture (tests/data/h2c.pcap, decoded by capture/decode/http2.py)
    3 times, recorded on both sides: the client's node and the server's."""
    rows = {"c": [], "s": []}
    i = 0
    for call in grpc_rows():
        for _ in range(3):
            base = dict(call, ts_request=T0 + i * S // 10, client_ip=CLIENT, client_port=40000 + i, server_ip=SERVER, server_port=50051, tls=False)
            base["ts_response"] = base["ts_request"] + call["latency_ns"] if call["latency_ns"] is not None else None
            rows["c"].append(dict(base, side="client", conn_id=f"c{i}", pid=7, comm="client"))
            # the server saw the request 1 ms later (the two nodes' clocks agree here)
            s = dict(base, side="server", conn_id=f"s{i}", pid=1, comm="python3", ts_request=base["ts_request"] + 1_000_000)
            s["ts_response"] = s["ts_request"] + call["latency_ns"] - 1_000_000 if call["latency_ns"] is not None else None
            if s["latency_ns"] is not None:
                s["latency_ns"] -= 1_000_000
            rows["s"].append(s)
            i += 1
    with TapeWriter(path / "c.tape", node="client-node") as w:
        w.append("http", rows["c"])
    with TapeWriter(path / "s.tape", node="server-node") as w:
        w.append("http", rows["s"])
    merge([path / "c.tape", path / "s.tape"], path / "grpc.tape")


@pytest.fixture(scope="module")
def grpc(tmp_path_factory):
    path = tmp_path_factory.mktemp("grpc")
    grpc_tape(path)
    return path


def _tape_of(grpc_dir, which):
    return grpc_dir / "grpc.tape" if which == "grpc" else which


# --- span by span ------------------------------------------------------------------------------

def _reference_and_columnar(tape_path):
    t = flowtape.open(tape_path)
    sides = sp.HttpSides(t, Filters(), slice_rows=5000)
    sides.build()
    try:
        for sl in sides.slices:
            sides.materialize(sl, table=True)
            ref = [r[-1] for r in t.sql(sp.http_spans_sql()).fetchall()]
            got = {mode: [b for _, _, arr in columnar.slice_items(t.con, mode, 1000) for b in arr.to_pylist()] for mode in ("json", "pb")}
            t.sql("DROP TABLE ftx_slice")
            yield ref, got
    finally:
        sides.close()


@pytest.mark.parametrize("which", [TINY, BASELINE, "grpc"], ids=["tiny", "synth-baseline", "grpc"])
def test_every_span_is_the_references_bytes(grpc, which):
    n = 0
    for ref, got in _reference_and_columnar(_tape_of(grpc, which)):
        assert len(got["json"]) == len(got["pb"]) == len(ref)
        for r, js, pb in zip(ref, got["json"], got["pb"]):
            assert js == r.encode() + b","  # the JSON text, byte for byte
            span = span_from_json(json.loads(r))
            body = span.SerializeToString()
            assert pb == b"\x12" + wire.varint(len(body)) + body  # protobuf's own serialization of the same span
            n += 1
    assert n == flowtape.open(_tape_of(grpc, which)).rows("http") > 0


# --- request by request -----------------------------------------------------------------------

def _requests(tape_path, encoder: str, **kw) -> list[bytes]:
    rx = ScriptedReceiver(lambda path, body, n: (200, {}, b""))
    try:
        export(flowtape.open(tape_path), ExportOptions(signals=("traces",), encoder=encoder, **kw), OtlpHttp(rx.url))
    finally:
        rx.close()
    return [b for p, b in rx.accepted if p == "/v1/traces"]


@pytest.mark.parametrize("kw", [{}, {"batch_spans": 700, "slice_rows": 3000}, {"max_request_bytes": 20_000}], ids=["default", "odd-batches", "halved"])
def test_requests_are_the_references_and_parse_back(kw):
    ref, got = _requests(BASELINE, "reference", **kw), _requests(BASELINE, "columnar", **kw)
    assert len(got) == len(ref) > 10
    for a, b in zip(ref, got):
        ra, rb = ExportTraceServiceRequest(), ExportTraceServiceRequest()
        ra.ParseFromString(a)
        rb.ParseFromString(b)  # opentelemetry-proto's parser is the oracle of the wire format
        assert rb == ra
        assert b == a
    if "max_request_bytes" in kw:  # some batches were halved, and every part fits
        assert all(len(b) <= kw["max_request_bytes"] for b in got)


def test_json_lines_are_the_references(tmp_path):
    out = {}
    for enc in ("reference", "columnar"):
        sink = JsonLines(tmp_path / f"{enc}.jsonl")
        export(flowtape.open(BASELINE), ExportOptions(signals=("traces",), encoder=enc), sink)
        sink.commit()
        out[enc] = (tmp_path / f"{enc}.jsonl").read_bytes()
    assert out["columnar"] == out["reference"] and out["columnar"].count(b"\n") > 10


# --- the naming: each distinct (ip, cut) named once, against every row named --------------------------

def _json_lines(tmp_path, tape_path, encoder: str, filters: Filters = Filters(), slice_rows: int = sp.SLICE_ROWS) -> bytes:
    out = tmp_path / f"{encoder}.jsonl"
    sink = JsonLines(out)
    export(flowtape.open(tape_path), ExportOptions(signals=("traces",), encoder=encoder, filters=filters, slice_rows=slice_rows), sink)
    sink.commit()
    return out.read_bytes()


INCIDENT = FIXTURES / "synth-incident.tape"
_T0 = dt.datetime(2024, 3, 3, 2, 1, tzinfo=dt.timezone.utc)  # synth-incident's window is 02:00-02:05 UTC


@pytest.mark.parametrize("which,filters", [
    (TINY, Filters()),  # a ClusterIP substituted by its pod; names that change inside the tape
    ("grpc", Filters()),
    (INCIDENT, Filters(_T0, _T0 + dt.timedelta(minutes=2), None)),  # a window: pairing candidates beyond its edges
    (INCIDENT, Filters(None, None, "monitoring")),  # a namespace: both ends' names are read again
], ids=["tiny", "grpc", "incident-window", "incident-namespace"])
def test_keyed_naming_exports_what_naming_every_row_does(tmp_path, grpc, which, filters):
    """The columnar path names each distinct (ip, cut key) once (Analysis.http_keyed); the
    reference names every row through enriched_http (the naming the reports show). Their JSON
    Lines files must be the same bytes: names, resources, peer attributes, ids, order."""
    tape = _tape_of(grpc, which)
    got = _json_lines(tmp_path, tape, "columnar", filters, slice_rows=4000)
    ref = _json_lines(tmp_path, tape, "reference", filters, slice_rows=4000)
    assert got == ref
    spans = sum(len(ss["spans"]) for line in got.splitlines() for rs in json.loads(line)["resourceSpans"] for ss in rs["scopeSpans"])
    assert spans > (1000 if which == INCIDENT and not filters.namespace else 5)
    if which == INCIDENT and filters.namespace:
        assert spans < flowtape.open(tape).rows("http")  # the filter kept some spans out


def test_every_row_is_named_as_enriched_http_names_it():
    """Per exchange row, the names of its client and server by cut key (ftx_names by hash(ip, key))
    equal enriched_http's, on a tape whose IPs change owner (synth-incident: 105 cuts)."""
    t = flowtape.open(INCIDENT)
    a = t.analysis
    fields = ", ".join(sp.NAME_FIELDS)
    keyed = t.sql(f"""SELECT k.ts, k.node, k.side, k.client_ip, k.client_port, {', '.join(f'c.r_{x}' for x in sp.NAME_FIELDS)}, {', '.join(f's.r_{x}' for x in sp.NAME_FIELDS)}
        FROM {a.http_keyed()} k
        JOIN ({sp.key_names_sql(f"{a.http_keyed()}", sp.HTTP_KEYED_ENDPOINTS, sp.NAME_FIELDS)}) c ON c.ip IS NOT DISTINCT FROM k.client_ip AND c.k = k.__k0
        JOIN ({sp.key_names_sql(f"{a.http_keyed()}", sp.HTTP_KEYED_ENDPOINTS, sp.NAME_FIELDS)}) s ON s.ip IS NOT DISTINCT FROM k.server_ip AND s.k = k.__k1
        ORDER BY ALL""").fetchall()
    every = t.sql(f"""SELECT ts, node, side, client_ip, client_port, {', '.join(f'client_{x}' for x in sp.NAME_FIELDS)}, {', '.join(f'server_{x}' for x in sp.NAME_FIELDS)}
        FROM enriched_http ORDER BY ALL""").fetchall()
    assert len(keyed) == len(every) == t.sql("SELECT count(*) FROM ft_http_x").fetchall()[0][0] > 10_000
    assert keyed == every
    assert len({r[5:] for r in every}) > 50  # many distinct name pairs, not one


# --- the wire format's pieces against protobuf's --------------------------------------------------

def test_varints_and_attributes_are_protobufs():
    import numpy as np
    import pyarrow as pa

    rng = random.Random(5)
    ints = [0, 1, 127, 128, 16383, 16384, 2**31 - 1, 2**32, 2**63 - 1, -1, -(2**63)] + [rng.randrange(-(2**63), 2**63) for _ in range(200)]
    col = pa.array(ints + [None], pa.int64())
    got = wire.pb_int_attr("k.i", col).to_pylist()
    for v, g in zip(ints, got):
        assert g == b"\x4a" + wire.varint(len(kv := KeyValue(key="k.i", value=AnyValue(int_value=v)).SerializeToString())) + kv
    assert got[-1] is None
    strs = ["", "a", "é/ü?x=", "x" * 127, "y" * 128, "z" * 20000] + ["".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randrange(50))) for _ in range(100)]
    got = wire.pb_string_attr("url.path", pa.array(strs + [None])).to_pylist()
    for v, g in zip(strs, got):
        kv = KeyValue(key="url.path", value=AnyValue(string_value=v)).SerializeToString()
        assert g == b"\x4a" + wire.varint(len(kv)) + kv
    assert got[-1] is None
    assert wire.fixed64(np.array([1, 2**62], np.int64)).to_pylist() == [(1).to_bytes(8, "little"), (2**62).to_bytes(8, "little")]


# --- gRPC spans by the RPC conventions, through a real receiver ------------------------------------

@pytest.fixture(scope="module")
def agent():
    a = Agent()
    yield a
    a.stop()


# the oracle: the gRPC status codes (grpc/doc/statuscodes.md) and the conventions' error rule
CODES = {0: "OK", 5: "NOT_FOUND", 14: "UNAVAILABLE"}
SERVER_ERRORS = {2, 4, 12, 13, 14, 15}


def test_grpc_spans_carry_the_rpc_conventions(agent, cli, grpc):
    tape = grpc / "grpc.tape"
    traces, _ = export_to_agent(agent, tape, cli, "--signals", "traces")
    spans = [s for s in spans_of(traces, ids="base64") if "http.request.method" in s["attrs"]]
    t = flowtape.open(tape)
    rows = t.sql("select side, grpc_service, grpc_method, grpc_status, grpc_message, stream_error, path, epoch_ns(ts_request) from http").fetchall()
    assert len(spans) == len(rows) == 30
    by_start = {(s["kind"], s["start"]): s for s in spans}
    for side, service, method, code, message, reset, path, start in rows:
        s = by_start[(3 if side == "client" else 2, start)]
        a = s["attrs"]
        assert s["name"] == f"{service}/{method}" == path[1:]  # `{rpc.method}`, not "POST /..."
        assert a["rpc.system.name"] == a["rpc.system"] == "grpc"
        assert a["rpc.method"] == f"{service}/{method}" and a["rpc.service"] == service
        if code is None:  # Slow: the client cancelled it before any grpc-status
            assert reset == "CANCEL" and "rpc.response.status_code" not in a and "rpc.grpc.status_code" not in a
            assert s["error"] and a["error.type"] == "_OTHER" and s["message"] == "no response recorded"
            continue
        assert a["rpc.grpc.status_code"] == code and a["rpc.response.status_code"] == CODES[code]
        failed = code != 0 if side == "client" else code in SERVER_ERRORS
        assert s["error"] == failed, (side, method)
        assert (a.get("error.type"), s["message"]) == ((CODES[code], message) if failed else (None, ""))
        assert a["http.response.status_code"] == 200 and a["network.protocol.version"] == "2"
    # NOT_FOUND is the caller's problem: an Error on the client span only; UNAVAILABLE on both
    assert {(s["kind"], s["name"].split("/")[1]) for s in spans if s["error"]} == {(3, "Missing"), (3, "Down"), (2, "Down"), (3, "Slow"), (2, "Slow")}


def test_grpc_failures_count_in_the_service_graph(agent, cli, grpc):
    _, metrics = export_to_agent(agent, grpc / "grpc.tape", cli, "--signals", "metrics")
    from test_export_otlp import last_points, points_of

    last = last_points(points_of(metrics))
    failed = sum(p["value"] for p in last.values() if p["metric"] == "traces_service_graph_request_failed_total")
    total = sum(p["value"] for p in last.values() if p["metric"] == "traces_service_graph_request_total")
    # the exchanges of the tape (enriched_http: without a connections table the two sides of a call
    # are not known to be one, so each stands for itself), failed by the conventions' rule
    t = flowtape.open(grpc / "grpc.tape")
    t.enriched("http")
    rows = t.sql("select side, grpc_status from enriched_http").fetchall()
    want = sum(1 for side, code in rows if code is None or (code != 0 if side == "client" else code in SERVER_ERRORS))
    assert (total, failed) == (len(rows), want) and 0 < want < len(rows)


def test_grpc_calls_get_the_rpc_call_duration_histograms(agent, cli, grpc):
    """rpc.server.call.duration / rpc.client.call.duration: every answered call once, in the
    bucket of its span's duration, by method and status, as the RPC conventions say."""
    _, metrics = export_to_agent(agent, grpc / "grpc.tape", cli, "--signals", "metrics")
    from test_export_otlp import bucket, last_points, points_of

    last = last_points(points_of(metrics))
    t = flowtape.open(grpc / "grpc.tape")
    rows = t.sql("select side, grpc_service || '/' || grpc_method, grpc_status, latency_ns from http where latency_ns is not null").fetchall()
    hosts = {h for (h,) in t.sql("select distinct host from http where side = 'client'").fetchall()}
    want: dict = {}
    for side, method, code, lat in rows:
        failed = code is not None and (code != 0 if side == "client" else code in SERVER_ERRORS)
        key = (f"rpc.{side}.call.duration", method, CODES.get(code), CODES[code] if failed else None)
        w = want.setdefault(key, [0, 0.0, [0] * (len(sp_bounds()) + 1)])
        w[0] += 1
        w[1] += lat / 1e9
        w[2][bucket(lat / 1e9)] += 1
    got: dict = {}
    for p in last.values():
        if p["metric"].startswith("rpc."):
            a = p["attrs"]
            assert a["rpc.system.name"] == "grpc"
            if p["metric"] == "rpc.client.call.duration":
                # the :authority the client sent, as on HTTP client spans
                assert f"{a['server.address']}:{a['server.port']}" in hosts
            key = (p["metric"], a["rpc.method"], a.get("rpc.response.status_code"), a.get("error.type"))
            g = got.setdefault(key, [0, 0.0, [0] * (len(sp_bounds()) + 1)])
            g[0] += p["count"]
            g[1] += p["sum"]
            g[2] = [x + y for x, y in zip(g[2], p["buckets"])]
    assert {k: (v[0], v[2]) for k, v in got.items()} == {k: (v[0], v[2]) for k, v in want.items()}
    assert all(abs(got[k][1] - want[k][1]) < 1e-9 for k in want)
    # the calls with a status answered on both sides: 2 kinds x the tape's answered rows
    assert sum(v[0] for v in got.values()) == len(rows) > 0
    assert {k[0] for k in got} == {"rpc.server.call.duration", "rpc.client.call.duration"}


def sp_bounds():
    from flowtape.analyze.export.semconv import DURATION_BOUNDS

    return DURATION_BOUNDS


def test_compiled_concatenation_is_arrows():
    import pyarrow as pa

    if wire._wire is None:
        why = "analyze/export/_wire.c was not built (no C compiler): wire.join is the reference itself"
        if in_ci():
            pytest.fail(f"CI host: {why} (scripts/bootstrap.sh installs gcc)", pytrace=False)
        pytest.skip(why)
    rng = random.Random(11)

    def column(n):
        vals = [None if rng.random() < 0.2 else bytes(rng.randrange(256) for _ in range(rng.randrange(40))) for _ in range(n + 7)]
        arr = pa.array(vals, pa.binary())
        return arr.slice(3, n)  # an array offset into its buffers, as pc.take and slicing give

    for _ in range(60):
        n = rng.randrange(0, 300)
        parts = [column(n) if rng.random() < 0.6 else bytes(rng.randrange(256) for _ in range(rng.randrange(5))) for _ in range(rng.randrange(1, 9))]
        if all(isinstance(p, bytes) for p in parts):
            parts.append(column(n))
        for nh in ("replace", "emit_null"):
            assert wire.join_compiled(*parts, null_handling=nh).to_pylist() == wire.join_reference(*parts, null_handling=nh).to_pylist()


def test_compiled_json_line_is_the_references():
    """_wire.json_line against wire.json_line_reference (group_by_resource + traces_json_line) on
    random batches: resources in any order and repeated, sliced span arrays; and bad input is
    refused with a ValueError, never read past its buffers."""
    import numpy as np
    import pyarrow as pa

    if wire._wire is None:
        why = "analyze/export/_wire.c was not built (no C compiler): wire.json_line is the reference itself"
        if in_ci():
            pytest.fail(f"CI host: {why} (scripts/bootstrap.sh installs gcc)", pytrace=False)
        pytest.skip(why)
    rng = random.Random(19)
    scope = b',"scopeSpans":[{"scope":{"name":"x"},"spans":['
    for _ in range(80):
        n, nres = rng.randrange(0, 200), rng.randrange(1, 9)
        resources = [b'{"r":%d}' % rng.randrange(1000) for _ in range(nres)]
        spans = [b'{"s":"' + bytes(rng.choice(b"abc\\\"") for _ in range(rng.randrange(30))) + b'"},' for _ in range(n + 5)]
        arr = pa.array(spans, pa.binary()).slice(2, n)
        res = np.array([rng.randrange(nres) for _ in range(n)], np.int64)
        b = wire.Batch(res, arr)
        assert wire.json_line_compiled(b, resources, scope) == wire.json_line_reference(b, resources, scope)
    ok = wire.Batch(np.array([0, 1], np.int64), pa.array([b"{},", b"{},"], pa.binary()))
    for bad in (wire.Batch(np.array([0, 2], np.int64), ok.spans),   # a resource index out of range
                wire.Batch(np.array([0, -1], np.int64), ok.spans),
                wire.Batch(np.array([0, 1, 1], np.int64), ok.spans),  # more indices than spans
                wire.Batch(np.array([0, 1], np.int64), pa.array([b"{},", b""], pa.binary())),  # an empty span
                wire.Batch(np.array([0, 1], np.int64), pa.array([b"{},", None], pa.binary()))):
        with pytest.raises(ValueError):
            wire.json_line_compiled(bad, [b"{}", b"{}"], scope)
    with pytest.raises(ValueError):  # offsets shorter than the indices, straight to the C function
        wire._wire.json_line(np.zeros(3, np.int64), np.zeros(2, np.int32).tobytes(), b"{},", 0, [b"{}"], scope)
    with pytest.raises(ValueError):  # offsets past the data
        wire._wire.json_line(np.zeros(1, np.int64), np.array([0, 99], np.int32).tobytes(), b"{},", 0, [b"{}"], scope)
    with pytest.raises(TypeError):
        wire._wire.json_line(np.zeros(1, np.int64), np.array([0, 3], np.int32).tobytes(), b"{},", 0, ["{}"], scope)
