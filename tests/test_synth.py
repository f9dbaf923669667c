"""Consistency invariants of synthetic tapes: what a real multi-node recording would satisfy.

Run on the committed incident fixture and on a freshly generated two-region tape, so the checks
cover both the published data and the generator at other settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import flowtape
from flowtape.capture.synth import Params, read_truth, synthesize

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
S = 1_000_000_000


@pytest.fixture(scope="module")
def two_region(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "two-region.tape"
    synthesize(path, Params(seed=5, services=7, nodes=8, zones=4, regions=2, duration_ns=150 * S, rps=12, rollouts=3, incidents=("egress", "dns")))
    return path


@pytest.fixture(params=["fixture", "two-region"], scope="module")
def tape(request, two_region):
    path = FIXTURES / "synth-incident.tape" if request.param == "fixture" else two_region
    t = flowtape.open(path)
    yield t
    t.close()


def one(t, q: str):
    return t.sql(q).fetchall()[0]


# pods valid at a time, one row per (ip, version), for time-aware attribution
PODS = """(select unnest(ips) ip, name, namespace, workload_name, node_name, valid_from, valid_to, host_network from k8s_pods where phase = 'Running')"""


def test_tape_reads_clean_and_counts_match_the_truth(tape):
    truth = read_truth(tape.path)
    assert tape.problems == []
    for table, rows in truth["rows"].items():
        assert tape.rows(table) == rows
    assert tape.window == (truth["window"]["start_ns"], truth["window"]["end_ns"])
    assert tape.manifest["extra"]["synth"]["params"]["seed"] == truth["params"]["seed"]


def test_every_http_endpoint_is_a_pod_valid_at_that_time_on_the_right_node(tape):
    externals = {e["server"] for e in read_truth(tape.path)["cluster"]["edges"] if e["protocol"] == "https"}
    assert externals
    n_http = one(tape, "select count(*) from http")[0]
    assert n_http > 1000
    # the local endpoint of every row: exactly one pod version owns its IP at ts, on the row's node
    local = one(tape, f"""
        with h as (select row_number() over () id, * from http)
        select count(distinct id), count(*), count(*) filter (where p.node_name <> h.node)
        from h join {PODS} p on p.ip = (case when h.side = 'client' then h.client_ip else h.server_ip end)
          and h.ts_request >= p.valid_from and (p.valid_to is null or h.ts_request < p.valid_to)""")
    assert local == (n_http, n_http, 0)
    # the remote endpoint: a pod too, unless the row is TLS to an external host
    remote = one(tape, f"""
        with h as (select row_number() over () id, * from http where not tls)
        select count(distinct id), (select count(*) from http where not tls)
        from h join {PODS} p on p.ip = (case when h.side = 'client' then h.server_ip else h.client_ip end)
          and h.ts_request >= p.valid_from and (p.valid_to is null or h.ts_request < p.valid_to)""")
    assert remote[0] == remote[1]
    hosts = {r[0] for r in tape.sql("select distinct host from http where tls").fetchall()}
    assert hosts and hosts <= externals | {"telemetry.collect-metrics.io"}


def test_flow_bytes_and_packets_add_up_to_every_connection_endpoint(tape):
    # independent of the generator: the documented relation on every node that recorded the row
    rows = tape.sql("""
        with f as (select node, src_ip, src_port, dst_ip, dst_port, sum(packets)::bigint p, sum(bytes)::bigint b
                   from flows where l4 = 'tcp' group by all),
        c as (select *, case when role = 'client' then client_ip else server_ip end lip, case when role = 'client' then client_port else server_port end lport,
                        case when role = 'client' then server_ip else client_ip end rip, case when role = 'client' then server_port else client_port end rport from connections)
        select c.conn_id, c.bytes_sent, c.segs_sent, c.bytes_received, c.segs_received, o.p, o.b, i.p, i.b
        from c left join f o on o.node = c.node and o.src_ip = c.lip and o.src_port = c.lport and o.dst_ip = c.rip and o.dst_port = c.rport
               left join f i on i.node = c.node and i.src_ip = c.rip and i.src_port = c.rport and i.dst_ip = c.lip and i.dst_port = c.lport""").fetchall()
    assert len(rows) == one(tape, "select count(*) from connections")[0] > 50
    for cid, bs, ss, br, sr, op, ob, ip_, ib in rows:
        assert (op, ob) == (ss, bs + 52 * ss + 8), cid
        assert (ip_, ib) == (sr, br + 52 * sr + 8), cid
    # 4-tuples are unique per node, so the join above cannot double count
    assert one(tape, "select count(*) from (select node, role, client_ip, client_port, server_ip, server_port from connections group by all having count(*) > 1)")[0] == 0


def test_connection_payload_is_the_sum_of_its_http_exchanges(tape):
    # plain HTTP: payload bytes are the request/response sizes; TLS adds handshake + record overhead
    rows = tape.sql("""
        select c.conn_id, any_value(c.bytes_sent), any_value(c.bytes_received), any_value(h.tls), sum(h.request_bytes), sum(h.response_bytes),
               sum(22 * greatest(1, ceil(h.request_bytes / 16384))), sum(22 * greatest(1, ceil(h.response_bytes / 16384))), count(*)
        from connections c join http h on h.conn_id = c.conn_id and h.node = c.node and c.role = 'client'
        group by c.conn_id""").fetchall()
    assert len(rows) > 50
    for cid, sent, received, tls, req, resp, req_over, resp_over, n in rows:
        if tls:
            assert sent == req + req_over + 517 + 80, cid
            assert received == resp + resp_over + 4200, cid
        else:
            assert (sent, received) == (req, resp), cid
    # keep-alive: connections carry many requests
    assert one(tape, "select median(n) from (select count(*) n from http where side = 'client' group by conn_id)")[0] >= 5


def test_both_sides_of_an_in_cluster_exchange_are_recorded_on_their_own_nodes(tape):
    client, server = one(tape, "select count(*) filter (where side = 'client' and not tls), count(*) filter (where side = 'server') from http")
    assert client == server
    # server rows: the server's pid/comm, latency shorter than the client's by the round trip
    bad = one(tape, """select count(*) from http c join http s on c.side = 'client' and s.side = 'server'
        and c.client_ip = s.client_ip and c.client_port = s.client_port and s.ts_request > c.ts_request and s.ts_request < c.ts_response
        where not (s.latency_ns < c.latency_ns and s.ts_response <= c.ts_response and s.comm <> c.comm and s.pid is not null)""")[0]
    assert bad == 0


def test_ip_reuse_happens_and_traffic_is_attributed_to_each_owner(tape):
    reused = tape.sql("""select ip, count(distinct uid) from (select unnest(ips) ip, uid from k8s_pods where not host_network)
                         group by ip having count(distinct uid) > 1""").fetchall()
    assert reused, "no pod IP was reused by another pod"
    # versions of one IP never overlap in time
    overlaps = one(tape, f"""select count(*) from {PODS} a join {PODS} b on a.ip = b.ip and a.name < b.name
        and a.valid_from < coalesce(b.valid_to, 'infinity'::timestamptz) and b.valid_from < coalesce(a.valid_to, 'infinity'::timestamptz)
        where not a.host_network""")[0]
    assert overlaps == 0
    # both owners of some reused IP actually talked while they held it
    talked = one(tape, f"""select max(n) from (select h.ip, count(distinct p.name) n from
        (select client_ip ip, ts_request ts from http union all select server_ip, ts_request from http) h
        join {PODS} p on p.ip = h.ip and h.ts >= p.valid_from and (p.valid_to is null or h.ts < p.valid_to)
        where not p.host_network group by h.ip)""")[0]
    assert talked >= 2


def test_dns_answers_precede_the_connections_that_use_them(tape):
    # every client connection except the scrapes (prometheus finds targets through the API):
    # a NOERROR answer from its own pod IP, on its node, shortly before connect(), whose address
    # is the server (external) or the ClusterIP of a Service the server pod is an endpoint of
    rows = tape.sql("""
        with a as (select node, client_ip, ts_answer, unnest(answers) ans from dns where rcode_name = 'NOERROR' and pid is not null),
        aa as (select node, client_ip, ts_answer, ans.data addr from a where ans.type = 'A'),
        svc as (select unnest(cluster_ips) cip, namespace, name from k8s_services),
        c as (select * from connections where role = 'client' and comm <> 'prometheus')
        select c.conn_id, count(aa.addr) filter (where aa.addr = c.server_ip or exists (
                 select 1 from svc join k8s_endpoints e on e.service = svc.name and e.namespace = svc.namespace
                 where svc.cip = aa.addr and e.ip = c.server_ip and e.port = c.server_port
                   and e.valid_from <= c.ts_start and (e.valid_to is null or c.ts_start < e.valid_to)))
        from c left join aa on aa.node = c.node and aa.client_ip = c.client_ip and aa.ts_answer <= c.ts_start
                         and aa.ts_answer > c.ts_start - interval 1 second
        group by c.conn_id""").fetchall()
    assert len(rows) > 50
    missing = [cid for cid, n in rows if n == 0]
    assert missing == []


def test_search_path_and_external_names_look_like_a_real_resolver(tape):
    nx = {r[0] for r in tape.sql("select distinct qname from dns where rcode_name = 'NXDOMAIN'").fetchall()}
    assert "golang.org.shop.svc.cluster.local" in nx or "hooks.slack.com.shop.svc.cluster.local" in nx
    assert any(q.startswith("postgres.data.shop.svc.cluster.local") for q in nx)
    chain = tape.sql("select answers from dns where qname = 'hooks.slack.com' and qtype_name = 'A' and rcode_name = 'NOERROR' limit 1").fetchall()
    if chain:
        answers = chain[0][0]
        assert [a["type"] for a in answers] == ["CNAME", "CNAME", "A"]
        assert answers[0]["ttl"] == 20
    sni = {r[0] for r in tape.sql("select distinct sni from tls").fetchall()}
    assert sni and all("." in s for s in sni)


def test_flows_have_one_row_per_direction_node_and_interval(tape):
    start = tape.window[0]
    dup = one(tape, f"""select count(*) from (select node, src_ip, src_port, dst_ip, dst_port, l4,
        (epoch_ns(ts_start) - {start}) // 5000000000 k from flows group by all having count(*) > 1)""")[0]
    assert dup == 0
    assert one(tape, "select count(*) from flows where ts_end < ts_start or packets = 0 or bytes < 28 * packets")[0] == 0
    # host-network endpoints (node-exporter) are counted on eth0, pods on their lxc device
    ifaces = {r[0] for r in tape.sql("select distinct case when iface like 'lxc%' then 'lxc' else iface end from flows").fetchall()}
    assert ifaces == {"lxc", "eth0"}


def test_k8s_versions_are_closed_on_change_and_never_overlap(tape):
    assert one(tape, """select count(*) from k8s_pods a join k8s_pods b on a.uid = b.uid and a.valid_from < b.valid_from
        and (a.valid_to is null or a.valid_to > b.valid_from)""")[0] == 0
    assert one(tape, "select count(distinct node) from k8s_pods")[0] == 1
    # every pod deleted during the tape has its last version marked deleted
    assert one(tape, "select count(*) from k8s_pods where deleted and valid_to is null")[0] == 0
    kinds = {r for r in tape.sql("select distinct workload_kind from k8s_pods").fetchall()}
    assert kinds == {("Deployment",), ("StatefulSet",), ("DaemonSet",)}
    assert one(tape, "select bool_and(host_network) from k8s_pods where workload_name = 'node-exporter'")[0] is True


def test_two_regions_put_zones_in_both(two_region):
    with flowtape.open(two_region) as t:
        assert {r[0] for r in t.sql("select distinct region from k8s_nodes").fetchall()} == {"eu-west-1", "eu-central-1"}
        assert one(t, "select count(distinct zone) from k8s_nodes")[0] == 4


def test_packed_buffers_write_the_same_bytes(tmp_path):
    """synth buffers its many tiny appends packed (memory flat in the tape's length): same parts."""
    from flowtape.writer import TapeWriter

    row = {"conn_id": "node-01-1", "ts_start": 1, "ts_end": 2, "role": "client", "pid": 7, "comm": "api", "client_ip": "10.0.0.1",
           "client_port": 40000, "server_ip": "10.0.0.2", "server_port": 80, "bytes_sent": 1, "bytes_received": 2, "close_state": "closed"}
    sums = []
    for pack in (0, 4096):
        out = tmp_path / f"pack{pack}.tape"
        with TapeWriter(out, node="node-01", rotate_seconds=float("inf"), row_group_rows=1000, pack_below_rows=pack) as w:
            for k in range(300):
                w.append("connections", [dict(row, conn_id=f"node-01-{k}-{i}", ts_start=k * 10 + i, client_port=40000 + i) for i in range(k % 9 + 1)])
            w.append("connections", [dict(row, ts_start=10**6 + i) for i in range(5000)])  # big appends stay as they are
        sums.append({rel: f["sha256"] for rel, f in json.loads((out / "manifest.json").read_text())["files"].items()})
    assert sums[0] == sums[1] and sums[0]
