"""The shared aggregates (analyze.sums: summed first, named after) name every row exactly as the
per-row enriched views do, across IP reuse and node zone changes, to the nanosecond."""

from __future__ import annotations

import pytest

import flowtape
from flowtape.analyze import enrich
from flowtape.analyze.enrich import NAME_FIELDS
from flowtape.writer import TapeWriter
from conftest import FIXTURES

S = 1_000_000_000
T0 = 1_767_225_600_000_000_000
IP, PEER = "10.0.9.9", "10.0.8.8"


@pytest.fixture(params=["search", "buckets"])
def segment_path(request, monkeypatch):
    """Both ways a flow row finds its segment (enrich.segment_start_sql): the comparisons of a
    binary search over the window's cuts, and the bucket table used when there are many cuts."""
    if request.param == "buckets":
        monkeypatch.setattr(enrich, "TREE_CUTS", 0)
    return request.param


def _names(p: str) -> str:
    return ", ".join(f"{p}_{f}" for f in NAME_FIELDS)


def per_row_equals_sums(tape) -> int:
    fs = tape.analysis.flow_sums()
    keys = f"node, src_real, dst_real, {_names('src')}, {_names('dst')}"
    summed = tape.sql(f"SELECT {keys}, sum(bytes)::HUGEINT, sum(packets)::HUGEINT, sum(flow_rows)::HUGEINT "
                      f"FROM {fs} GROUP BY ALL ORDER BY ALL").fetchall()
    per_row = tape.sql(f"SELECT {keys}, sum(bytes)::HUGEINT, sum(packets)::HUGEINT, count(*)::HUGEINT "
                       f"FROM enriched_flows GROUP BY ALL ORDER BY ALL").fetchall()
    assert summed == per_row
    seen = tape.sql(f"SELECT {keys}, ts_start, ts_end FROM {tape.analysis.flow_seen()} WHERE dst_kind = 'external' ORDER BY ALL").fetchall()
    per_row = tape.sql(f"SELECT {keys}, min(ts_start), max(ts_end) FROM enriched_flows WHERE dst_kind = 'external' GROUP BY ALL ORDER BY ALL").fetchall()
    assert seen == per_row
    hs = tape.analysis.http_sums()
    keys = f"client_ip, server_ip, seen_server_ip, {_names('client')}, {_names('server')}, {_names('seen')}"
    summed = tape.sql(f"SELECT {keys}, sum(n)::HUGEINT, sum(n_5xx)::HUGEINT, max(max_latency_ns) FROM {hs} GROUP BY ALL ORDER BY ALL").fetchall()
    per_row = tape.sql(f"SELECT {keys}, count(*)::HUGEINT, count(*) FILTER (WHERE status >= 500)::HUGEINT, max(latency_ns) "
                       f"FROM enriched_http GROUP BY ALL ORDER BY ALL").fetchall()
    assert summed == per_row
    return len(per_row)


def test_reuse_and_zone_change_inside_one_minute(tmp_path, segment_path):
    """IP belongs to pod a-1 until ~10 s, to nobody for ~1 s, then to pod b-1 of another workload; the
    node moves from zone z1 to z2 at ~15 s. Rows sit on each side of every change, 1 ns apart (the
    changes are off any round time, as real ones are)."""
    a_end, b_start, moved = T0 + 10 * S + 3_000_007, T0 + 11 * S + 4_100_003, T0 + 15 * S + 5_000_011
    pod = {"observed_at_start": False, "resource_version": None, "namespace": "x", "node_name": "n1", "host_network": False, "phase": "Running",
           "labels": {}, "owner_kind": None, "owner_name": None, "workload_kind": "Deployment", "containers": []}
    node = {"observed_at_start": False, "resource_version": None, "uid": "n1", "name": "n1", "internal_ips": ["10.1.0.1"], "external_ips": [],
            "pod_cidrs": [], "region": "r", "labels": {}}
    edges = [T0 + 5 * S, a_end - 1, a_end, a_end + S // 2, b_start - 1, b_start, moved - 1, moved, T0 + 20 * S]
    with TapeWriter(tmp_path / "t.tape", node="n1") as w:
        w.append("k8s_nodes", [{**node, "valid_from": T0 - 60 * S, "valid_to": moved, "deleted": False, "zone": "z1"},
                               {**node, "valid_from": moved, "valid_to": None, "deleted": False, "zone": "z2"}])
        w.append("k8s_pods", [
            {**pod, "valid_from": T0 - 60 * S, "valid_to": a_end, "deleted": True, "uid": "a", "name": "a-1", "workload_name": "a", "ips": [IP]},
            {**pod, "valid_from": b_start, "valid_to": None, "deleted": False, "uid": "b", "name": "b-1", "workload_name": "b", "ips": [IP]},
            {**pod, "valid_from": T0 - 60 * S, "valid_to": None, "deleted": False, "uid": "p", "name": "p-1", "workload_name": "p", "ips": [PEER]},
        ])
        w.append("flows", [{"ts_start": t, "ts_end": t + 1000, "src_ip": PEER, "dst_ip": IP, "src_port": 40000 + i, "dst_port": 80, "l4": "tcp",
                            "ip_proto": 6, "packets": 1, "bytes": 100 + i} for i, t in enumerate(edges)])
        w.append("http", [{"ts_request": t, "client_ip": PEER, "client_port": 40000 + i, "server_ip": IP, "server_port": 80, "side": "client",
                           "tls": False, "method": "GET", "path": "/", "status": 200, "latency_ns": 1000 + i, "conn_id": f"c{i}"} for i, t in enumerate(edges)])
    tape = flowtape.open(tmp_path / "t.tape")
    assert per_row_equals_sums(tape) == 4  # a-1 in z1; nobody; b-1 in z1; b-1 in z2 (its client p-1 moved to z2 too)
    got = {(r["dst_pod"], r["dst_zone"]): r["bytes"] for r in tape.sql(f"SELECT * FROM {tape.analysis.flow_sums()}").pl().iter_rows(named=True)}
    assert got == {("a-1", "z1"): 100 + 101, (None, None): 102 + 103 + 104, ("b-1", "z1"): 105 + 106, ("b-1", "z2"): 107 + 108}


@pytest.mark.parametrize("name", ["tiny", "synth-baseline", "synth-incident"])
def test_fixture_tapes(name, segment_path):
    tape = flowtape.open(FIXTURES / f"{name}.tape")
    assert per_row_equals_sums(tape) > 0
    assert tape.sql(f"SELECT count(*) FROM {tape.analysis.flow_seen()} WHERE dst_kind = 'external'").fetchall()[0][0] > 0  # egress is exercised
