"""Each injected incident is visible exactly inside its ground-truth window, and the baseline
tape of the same cluster shows none of them — checked the way an analyst's report would."""

from __future__ import annotations

from pathlib import Path

import pytest

import flowtape
from flowtape.capture.synth import read_truth

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
INCIDENT, BASELINE = FIXTURES / "synth-incident.tape", FIXTURES / "synth-baseline.tape"


@pytest.fixture(scope="module")
def tapes():
    a, b = flowtape.open(INCIDENT), flowtape.open(BASELINE)
    yield a, b
    a.close()
    b.close()


@pytest.fixture(scope="module")
def truth():
    return {i["kind"]: i for i in read_truth(INCIDENT)["incidents"]}


def test_truth_lists_every_incident_with_target_window_and_effect(truth):
    assert set(truth) == {"latency", "errors", "dns", "egress", "cross-zone"}
    for i in truth.values():
        assert i["start_ns"] < i["end_ns"] and i["target"] and i["effect"]
    assert truth["latency"]["target"]["edge"] == "api->catalog"
    assert truth["errors"]["target"]["workload"] == "shop/catalog"
    assert read_truth(BASELINE)["incidents"] == []


# server-side http rows on an edge, resolved through the pods valid at the time
EDGE = """select h.ts_request, h.latency_ns, h.status, epoch_ns(h.ts_request) ns from http h
    join (select unnest(ips) ip, workload_name w, valid_from, valid_to from k8s_pods) c on c.ip = h.client_ip and h.ts_request >= c.valid_from and (c.valid_to is null or h.ts_request < c.valid_to)
    join (select unnest(ips) ip, workload_name w, valid_from, valid_to from k8s_pods) s on s.ip = h.server_ip and h.ts_request >= s.valid_from and (s.valid_to is null or h.ts_request < s.valid_to)
    where h.side = 'server' and c.w = '{client}' and s.w = '{server}'"""


def _p(t, client, server, start, end, q, inside=True):
    cond = f"ns >= {start} and ns < {end}" if inside else f"(ns < {start} or ns >= {end})"
    return t.sql(f"select quantile_cont(latency_ns, {q}), count(*) from ({EDGE.format(client=client, server=server)}) where {cond}").fetchall()[0]


def test_latency_regression_on_one_edge_only_inside_the_window(tapes, truth):
    inc, base = tapes
    i = truth["latency"]
    s, e, f = i["start_ns"], i["end_ns"], i["effect"]["factor"]
    for q in (0.5, 0.99):
        inside, n_in = _p(inc, "api", "catalog", s, e, q)
        outside, n_out = _p(inc, "api", "catalog", s, e, q, inside=False)
        assert n_in > 50 and n_out > 200
        assert inside / outside > 0.6 * f, q
        base_in, _ = _p(base, "api", "catalog", s, e, q)
        base_out, _ = _p(base, "api", "catalog", s, e, q, inside=False)
        assert 0.6 < base_in / base_out < 1.6, q
    # another edge of the same client is untouched
    other_in, _ = _p(inc, "api", "cart", s, e, 0.5)
    other_out, _ = _p(inc, "api", "cart", s, e, 0.5, inside=False)
    assert 0.6 < other_in / other_out < 1.6
    # the effect has sharp edges: slow requests (3x the usual median) are the rule inside, rare outside
    base_med = _p(inc, "api", "catalog", s, e, 0.5, inside=False)[0]
    share = f"select avg(case when latency_ns > {3 * base_med} then 1 else 0 end) from ({EDGE.format(client='api', server='catalog')}) where "
    assert inc.sql(share + f"ns >= {s} and ns < {e}").fetchall()[0][0] > 0.7
    assert inc.sql(share + f"(ns < {s} or ns >= {e})").fetchall()[0][0] < 0.05


def test_error_burst_from_one_workload_only_inside_the_window(tapes, truth):
    inc, base = tapes
    i = truth["errors"]
    s, e = i["start_ns"], i["end_ns"]
    q = """select count(*) filter (where status = 503), count(*) from http h
        join (select unnest(ips) ip, workload_name w, valid_from, valid_to from k8s_pods) p on p.ip = h.server_ip and h.ts_request >= p.valid_from and (p.valid_to is null or h.ts_request < p.valid_to)
        where h.side = 'server' and p.w = '{w}' and {cond}"""
    inside = f"epoch_ns(ts_request) >= {s} and epoch_ns(ts_request) < {e}"
    outside = f"not ({inside})"
    bad, total = inc.sql(q.format(w="catalog", cond=inside)).fetchall()[0]
    assert total > 50 and abs(bad / total - i["effect"]["rate"]) < 0.12
    assert inc.sql(q.format(w="catalog", cond=outside)).fetchall()[0][0] == 0
    assert inc.sql(f"select count(*) from http where status = 503 and not ({inside})").fetchall()[0][0] == 0
    assert base.sql("select count(*) from http where status >= 503").fetchall()[0][0] == 0


def test_dns_failure_storm_only_inside_the_window(tapes, truth):
    inc, base = tapes
    i = truth["dns"]
    s, e = i["start_ns"], i["end_ns"]
    lo, hi, n = inc.sql("select min(epoch_ns(ts_query)), max(epoch_ns(ts_query)), count(*) from dns where rcode_name = 'SERVFAIL'").fetchall()[0]
    assert n > 20 and s <= lo and hi < e
    fail, total = inc.sql(f"select count(*) filter (where rcode_name = 'SERVFAIL'), count(*) from dns where pid is not null and epoch_ns(ts_query) >= {s} and epoch_ns(ts_query) < {e}").fetchall()[0]
    assert abs(fail / total - i["effect"]["rate"]) < 0.2
    assert base.sql("select count(*) from dns where rcode_name = 'SERVFAIL'").fetchall()[0][0] == 0


def test_unexpected_egress_only_inside_the_window(tapes, truth):
    inc, base = tapes
    i = truth["egress"]
    s, e, host, ip = i["start_ns"], i["end_ns"], i["target"]["host"], i["target"]["ips"][0]
    for q in (f"select epoch_ns(ts_query) from dns where qname = '{host}'", f"select epoch_ns(ts) from tls where sni = '{host}'",
              f"select epoch_ns(ts_start) from flows where dst_ip = '{ip}'", f"select epoch_ns(ts_request) from http where host = '{host}'",
              f"select epoch_ns(ts_end) from connections where server_ip = '{ip}'"):
        times = [r[0] for r in inc.sql(q).fetchall()]
        assert times and all(s <= t < e for t in times), q
        assert base.sql(q).fetchall() == []
    # only the target workload talks to it
    who = inc.sql(f"select distinct p.workload_name from connections c join (select unnest(ips) ip, workload_name, valid_from, valid_to from k8s_pods) p on p.ip = c.client_ip and c.ts_start >= p.valid_from and (p.valid_to is null or c.ts_start < p.valid_to) where c.server_ip = '{ip}'").fetchall()
    assert who == [(i["target"]["workload"].split("/")[1],)]


ZONES = """select epoch_ns(h.ts_request) ns, zc.zone cz, zs.zone sz from http h
    join (select unnest(ips) ip, workload_name w, node_name, valid_from, valid_to from k8s_pods) c on c.ip = h.client_ip and h.ts_request >= c.valid_from and (c.valid_to is null or h.ts_request < c.valid_to)
    join (select unnest(ips) ip, workload_name w, node_name, valid_from, valid_to from k8s_pods) s on s.ip = h.server_ip and h.ts_request >= s.valid_from and (s.valid_to is null or h.ts_request < s.valid_to)
    join k8s_nodes zc on zc.name = c.node_name join k8s_nodes zs on zs.name = s.node_name
    where h.side = 'client' and s.w = '{w}'"""


def test_cross_zone_shift_after_the_rollout(tapes, truth):
    inc, base = tapes
    i = truth["cross-zone"]
    s, w, zone = i["start_ns"], i["target"]["workload"].split("/")[1], i["target"]["zone"]
    assert i["rollout"]["start_ns"] < s and i["end_ns"] == read_truth(INCIDENT)["window"]["end_ns"]
    before = inc.sql(f"select count(*) filter (where cz <> sz), count(*) from ({ZONES.format(w=w)}) where ns < {s}").fetchall()[0]
    after = inc.sql(f"select count(*) filter (where cz <> sz), count(*) filter (where cz <> '{zone}') from ({ZONES.format(w=w)}) where ns >= {s}").fetchall()[0]
    assert before[1] > 500 and before[0] == 0
    assert after[1] > 50 and after[0] / after[1] > 0.5
    assert base.sql(f"select count(*) from ({ZONES.format(w=w)}) where cz <> sz").fetchall()[0][0] == 0
    # after the rollout every serving pod of the workload is in the one zone
    zones = inc.sql(f"select distinct n.zone from k8s_pods p join k8s_nodes n on n.name = p.node_name where p.workload_name = '{w}' and p.valid_to is null").fetchall()
    assert zones == [(zone,)]
