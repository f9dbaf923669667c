"""Topology report: de-duplicated edges, named as the cluster named them at that moment."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

import flowtape
from flowtape.analyze.reports.filters import Filters, parse_time
from flowtape.analyze.reports.topology import topology
from flowtape.analyze.sketch import ALPHA
from flowtape.writer import TapeWriter

S = 1_000_000_000
T0 = 1_767_225_600_000_000_000
BOUND = ALPHA * (1 + 1e-9)  # HTTP percentiles: within 1 % (the last bit of float rounding aside)


def edge(df, client, server) -> dict:
    rows = [r for r in df.iter_rows(named=True) if r["client"] == client and r["server"] == server]
    assert len(rows) == 1, (client, server, df)
    return rows[0]


def test_tiny_edges_against_raw_rows(tiny_tape):
    # oracle: the raw part files read with pyarrow, computed in Python (no SQL)
    http = pq.read_table(tiny_tape / "http/node=node-a").to_pylist()  # the client side
    lat_ms = np.array([r["latency_ns"] for r in http]) / 1e6
    conns = [r for r in pq.read_table(tiny_tape / "connections/node=node-a").to_pylist() if r["server_port"] == 80]

    df = topology(flowtape.open(tiny_tape).analysis, by="workload")
    e = edge(df, "shop/frontend", "shop/api")  # the client saw a ClusterIP; the server row names the pod
    assert e["requests"] == len(http) == 4  # server-side rows of the same exchanges are not counted again
    assert e["errors_5xx"] == sum(r["status"] >= 500 for r in http) == 1
    assert e["error_rate"] == pytest.approx(0.25)
    for q in (50, 95, 99):  # from the latency histogram: within its stated bound of the exact value
        assert e[f"p{q}_ms"] == pytest.approx(np.percentile(lat_ms, q), rel=BOUND)
    assert e["connections"] == 1
    assert (e["bytes_c2s"], e["bytes_s2c"]) == (sum(r["bytes_sent"] for r in conns), sum(r["bytes_received"] for r in conns))
    ext = edge(df, "shop/frontend", "external:golang.org")  # external IP named by the tape's own DNS answer (CNAME chain)
    assert (ext["connections"], ext["bytes_c2s"], ext["bytes_s2c"]) == (1, 900, 5200)
    refused = edge(df, "shop/frontend", "unknown:10.0.2.99")
    assert refused["failed_connections"] == 1
    assert len(df) == 3


def test_granularities(tiny_tape):
    tape = flowtape.open(tiny_tape)
    assert edge(topology(tape.analysis, by="service"), "shop/frontend", "svc:shop/api")["requests"] == 4
    assert edge(topology(tape.analysis, by="pod"), "shop/frontend-7d9f-abcde", "shop/api-5c6b-xk2p9")["requests"] == 4
    assert edge(topology(tape.analysis, by="zone"), "eu-west-1a", "eu-west-1b")["bytes_s2c"] == 24000
    assert edge(topology(tape.analysis, by="node"), "node-a", "node-b")["connections"] == 1
    assert edge(topology(tape.analysis, by="namespace"), "shop", "shop")["requests"] == 4


def test_filters(tiny_tape):
    tape = flowtape.open(tiny_tape)
    late = topology(tape.analysis, filters=Filters(since=parse_time("2026-01-01T00:00:02Z", "--since")))
    assert edge(late, "shop/frontend", "shop/api")["requests"] == 3  # requests at 2.1, 3.1 and 4.1 s
    assert topology(tape.analysis, filters=Filters(namespace="batch")).is_empty()
    assert len(topology(tape.analysis, filters=Filters(namespace="shop"))) == 3


def test_ip_reuse_is_attributed_by_time(tmp_path):
    """10.0.9.9 belongs to pod a-1 until 10 s, to nobody for 1 s, then to pod b-1 of another workload."""
    ip = "10.0.9.9"
    with TapeWriter(tmp_path / "t.tape", node="n1") as w:
        common = {"observed_at_start": False, "resource_version": None, "namespace": "x", "node_name": "n1", "ips": [ip], "host_network": False, "phase": "Running", "labels": {}, "owner_kind": None, "owner_name": None, "workload_kind": "Deployment", "containers": []}
        w.append("k8s_pods", [
            {**common, "valid_from": T0, "valid_to": T0 + 10 * S, "deleted": True, "uid": "a", "name": "a-1", "workload_name": "a"},
            {**common, "valid_from": T0 + 11 * S, "valid_to": None, "deleted": False, "uid": "b", "name": "b-1", "workload_name": "b"},
        ])
        http = {"client_ip": "203.0.113.5", "server_ip": ip, "server_port": 8080, "side": "server", "tls": False, "method": "GET", "path": "/", "status": 200, "latency_ns": 1000}
        w.append("http", [
            {**http, "ts_request": T0 + 5 * S, "client_port": 1, "conn_id": "c1"},
            {**http, "ts_request": T0 + 10 * S + S // 2, "client_port": 2, "conn_id": "c2"},
            {**http, "ts_request": T0 + 20 * S, "client_port": 3, "conn_id": "c3"},
            {**http, "ts_request": T0 + 21 * S, "client_port": 4, "conn_id": "c4"},
        ])
    df = topology(flowtape.open(tmp_path / "t.tape").analysis, by="pod")
    assert edge(df, "external:203.0.113.5", "x/a-1")["requests"] == 1
    assert edge(df, "external:203.0.113.5", "unknown:10.0.9.9")["requests"] == 1
    assert edge(df, "external:203.0.113.5", "x/b-1")["requests"] == 2
    assert len(df) == 3


def test_cli_formats(tiny_tape, cli):
    r = cli("report", "topology", tiny_tape, "-f", "mermaid")
    assert r.code == 0, r.err
    assert r.out.startswith("flowchart LR\n") and '"shop/frontend"' in r.out and "4 req, 25% err" in r.out
    r = cli("report", "topology", tiny_tape, "-f", "dot", "--by", "zone")
    assert r.out.startswith("digraph topology {") and 'label="eu-west-1b"' in r.out and "color=red" in r.out
    r = cli("report", "topology", tiny_tape, "--since", "yesterday")
    assert r.code == 2 and "--since 'yesterday': not a time" in r.err


def test_latency_report_against_raw_rows(tiny_tape, cli):
    from flowtape.analyze.reports.latency import dns_latency, http_latency, tcp_latency

    tape = flowtape.open(tiny_tape)
    http = pq.read_table(tiny_tape / "http/node=node-a").to_pylist()
    routes = http_latency(tape.analysis, per_route=True)
    orders = [r["latency_ns"] / 1e6 for r in http if r["method"] == "GET" and r["path"].startswith("/orders/")]
    row = routes.filter((routes["route"] == "/orders/{id}") & (routes["method"] == "GET")).row(0, named=True)
    assert row["requests"] == len(orders) == 2
    assert row["p95_ms"] == pytest.approx(np.percentile(orders, 95), rel=BOUND)
    assert row["max_ms"] == max(orders)  # exact
    assert set(routes["route"]) == {"/orders/{id}", "/orders", "/health"}  # query string dropped, ids templated
    dns = dns_latency(tape.analysis)
    g = dns.filter(dns["qname"] == "golang.org").row(0, named=True)
    assert (g["lookups"], g["p50_ms"]) == (1, 21.0)
    assert dns.filter(dns["qname"] == "unanswered.example")["unanswered"].to_list() == [1]
    tcp = tcp_latency(tape.analysis)
    assert edge(tcp, "shop/frontend", "shop/api")["connect_p50_ms"] == pytest.approx(0.6)
    r = cli("report", "latency", tiny_tape, "--routes", "-f", "json")
    assert r.code == 0, r.err
    import json

    j = json.loads(r.out)
    assert set(j) == {"http", "dns", "tcp"} and j["http"][0]["requests"] == 2
