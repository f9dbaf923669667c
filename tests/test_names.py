"""Names without Kubernetes: a laptop's tape (hand-written rows, every value known) and two
hosts' tapes merged, named at every granularity.

Priority (analyze.enrich): Kubernetes ownership > a local process > the DNS name the tape saw
> the recording host's /etc/hosts > the host an address belongs to > the address.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import flowtape
from flowtape.capture.live.host import cgroup_facts, container_names, describe_cgroup, own_addresses, parse_etc_hosts
from flowtape.analyze.enrich import GRANULARITIES
from flowtape.merge import merge
from flowtape.writer import TapeWriter

T0 = 1_767_225_600_000_000_000
S, MS = 1_000_000_000, 1_000_000
LAPTOP_IP, CONTAINER_IP, NAS_IP, API_IP, EXT_IP, REMOTE_IP, POD_IP = (
    "192.168.1.20", "172.17.0.2", "192.168.1.50", "10.9.9.9", "93.184.215.14", "192.168.1.77", "10.244.0.5")
CID = "c0ffee" + "0" * 58


def _conn(conn_id, role, cip, cport, sip, sport, comm, t, cgroup_id=1, container_id=None, close="closed", sent=100, received=1000, pid=None):
    return {"conn_id": conn_id, "ts_start": t, "ts_end": t + 1 * S, "role": role, "client_ip": cip, "client_port": cport, "server_ip": sip,
            "server_port": sport, "pid": pid or 100 + int(conn_id[1:]), "comm": comm, "cgroup_id": cgroup_id, "container_id": container_id,
            "bytes_sent": sent, "bytes_received": received, "srtt_us": 100, "retransmits": 0, "connect_latency_ns": MS if role == "client" else None,
            "close_state": close}


def _http(conn_id, side, cip, cport, sip, sport, comm, t, status=200, ms=5):
    return {"ts_request": t, "ts_response": t + ms * MS, "latency_ns": ms * MS, "conn_id": conn_id, "client_ip": cip, "client_port": cport,
            "server_ip": sip, "server_port": sport, "pid": 100, "comm": comm, "side": side, "tls": False, "http_version": "HTTP/1.1",
            "method": "GET", "host": "h", "path": "/", "status": status, "request_bytes": 100, "response_bytes": 1000}


def _dns(t, qname, answers, client_ip=LAPTOP_IP, comm="curl", pid=201):
    return {"ts_query": t, "ts_answer": t + MS, "latency_ns": MS, "client_ip": client_ip, "client_port": 40000, "server_ip": "192.168.1.1",
            "server_port": 53, "transport": "udp", "pid": pid, "comm": comm, "txid": 1, "qname": qname, "qtype": 1, "qtype_name": "A",
            "rcode": 0, "rcode_name": "NOERROR", "answers": [{"name": qname, "type": "A", "ttl": ttl, "data": ip} for ip, ttl in answers]}


def _flow(t, src, sport, dst, dport, l4="tcp", nbytes=500):
    return {"ts_start": t, "ts_end": t + S, "iface": "eth0", "ifindex": 2, "direction": "egress", "src_mac": None, "dst_mac": None,
            "src_ip": src, "dst_ip": dst, "src_port": sport, "dst_port": dport, "l4": l4, "ip_proto": 6 if l4 == "tcp" else 17,
            "packets": 5, "bytes": nbytes, "tcp_flags": None}


HOST_FACTS = {
    "addresses": [{"ip": "127.0.0.1", "iface": None}, {"ip": LAPTOP_IP, "iface": None}],
    "etc_hosts": [{"ip": "127.0.0.1", "names": ["localhost"]}, {"ip": NAS_IP, "names": ["nas", "nas.home"]}],
    "cgroups": {"4001": {"path": f"/system.slice/docker-{CID}.scope", "runtime": "docker", "container": "web-1", "unit": f"docker-{CID}.scope"},
                "4002": {"path": "/system.slice/nginx.service", "runtime": "systemd", "container": None, "unit": "nginx.service"}},
}


def write_laptop_tape(path: Path) -> Path:
    """One host ("laptop"), no Kubernetes but one pod row (the priority check): curl -> nginx
    (a systemd service) over loopback, a container's python -> example.com (DNS), curl -> the
    NAS (/etc/hosts), curl -> api.internal (DNS, TTL 0), a remote client -> nginx, a pod's own
    process (Kubernetes wins), and flows of the first two plus a UDP lookup from the container."""
    t = T0 + S
    w = TapeWriter(path, node="laptop", rotate_seconds=3600)
    w.set_window(T0, T0 + 60 * S)
    w.set_host(HOST_FACTS)
    w.append("k8s_pods", [{"valid_from": T0 - S, "valid_to": None, "observed_at_start": True, "deleted": False, "resource_version": "1", "uid": "p1",
                           "namespace": "dev", "name": "job-1", "node_name": "laptop", "ips": [POD_IP], "host_network": False, "phase": "Running",
                           "labels": {}, "owner_kind": None, "owner_name": None, "workload_kind": "Pod", "workload_name": "job-1", "containers": []}])
    w.append("dns", [
        _dns(t, "example.com", [(EXT_IP, 300)], client_ip=CONTAINER_IP, comm="python3", pid=301),
        _dns(t + 4 * S, "api.internal", [(API_IP, 0)]),  # a local resolver's TTL 0: still names the connection right after it
    ])
    w.append("connections", [
        _conn("c1", "client", "127.0.0.1", 50001, "127.0.0.1", 8080, "curl", t),
        _conn("s1", "server", "127.0.0.1", 50001, "127.0.0.1", 8080, "nginx", t + 100_000, cgroup_id=4002, sent=1000, received=100),
        _conn("c2", "client", CONTAINER_IP, 50002, EXT_IP, 443, "python3", t + 2 * S, cgroup_id=4001, container_id=CID, pid=301),
        _conn("c3", "client", LAPTOP_IP, 50003, NAS_IP, 445, "curl", t + 3 * S),
        _conn("c4", "client", LAPTOP_IP, 50004, API_IP, 80, "curl", t + 4 * S + 5 * MS),
        _conn("s5", "server", REMOTE_IP, 60000, LAPTOP_IP, 8080, "nginx", t + 5 * S, cgroup_id=4002, sent=1000, received=100),
        _conn("c6", "client", POD_IP, 50006, LAPTOP_IP, 8080, "worker", t + 6 * S),
    ])
    w.append("http", [
        _http("c1", "client", "127.0.0.1", 50001, "127.0.0.1", 8080, "curl", t + MS),
        _http("s1", "server", "127.0.0.1", 50001, "127.0.0.1", 8080, "nginx", t + MS),
        _http("c2", "client", CONTAINER_IP, 50002, EXT_IP, 443, "python3", t + 2 * S + MS, status=503),
        _http("s5", "server", REMOTE_IP, 60000, LAPTOP_IP, 8080, "nginx", t + 5 * S + MS),
    ])
    w.append("flows", [
        _flow(t, "127.0.0.1", 50001, "127.0.0.1", 8080),
        _flow(t, "127.0.0.1", 8080, "127.0.0.1", 50001, nbytes=1500),
        _flow(t + 2 * S, CONTAINER_IP, 50002, EXT_IP, 443, nbytes=700),
        _flow(t + 2 * S - MS, CONTAINER_IP, 40000, "192.168.1.1", 53, l4="udp", nbytes=60),
    ])
    w.close()
    return path


@pytest.fixture(scope="module")
def laptop(tmp_path_factory) -> flowtape.Tape:
    return flowtape.open(write_laptop_tape(tmp_path_factory.mktemp("names") / "laptop.tape"))


def edges(tape, by: str) -> dict[tuple[str, str], dict]:
    return {(r["client"], r["server"]): r for r in tape.report.topology(by=by).iter_rows(named=True)}


def test_process_names(laptop):
    e = edges(laptop, "process")
    assert set(e) == {
        ("curl", "nginx"),                                   # both ends local: each row's process
        ("docker:web-1/python3", "external:example.com"),    # a container, a DNS name
        ("curl", "external:nas"),                            # /etc/hosts
        ("curl", "external:api.internal"),                   # DNS answered with TTL 0
        ("unknown:192.168.1.77", "nginx"),                   # nobody names a remote private client
        ("dev/job-1", "host:laptop"),                        # Kubernetes first; the laptop's own address, no process seen there
    }
    assert e[("curl", "nginx")]["requests"] == 1 and e[("curl", "nginx")]["connections"] == 1
    assert e[("docker:web-1/python3", "external:example.com")]["errors_5xx"] == 1


def test_workload_names_the_container_or_the_service(laptop):
    e = edges(laptop, "workload")
    assert ("curl", "nginx.service") in e and ("docker:web-1", "external:example.com") in e
    assert ("dev/job-1", "host:laptop") in e


def test_host_names(laptop):
    e = edges(laptop, "host")
    # the laptop's own addresses and its processes are the laptop; the NAS by /etc/hosts; a pod by its node
    assert set(e) == {("laptop", "laptop"), ("laptop", "external:example.com"), ("laptop", "external:nas"), ("laptop", "external:api.internal"),
                      ("unknown:192.168.1.77", "laptop")}
    assert e[("laptop", "laptop")]["connections"] == 2  # curl -> nginx, and the pod on node laptop -> nginx
    assert edges(laptop, "node") == e


def test_no_local_process_is_unknown_at_any_granularity(laptop):
    local = {"127.0.0.1", LAPTOP_IP, CONTAINER_IP}
    for by in GRANULARITIES:
        names = {n for pair in edges(laptop, by) for n in pair}
        names |= set(laptop.report.talkers(by=by)["endpoint"])
        assert not any(n == f"unknown:{ip}" for n in names for ip in local), (by, names)


def test_flows_take_the_process_of_their_connection(laptop):
    t = {r["endpoint"]: r for r in laptop.report.talkers(by="process").iter_rows(named=True)}
    assert t["curl"]["bytes_out"] == 500 and t["curl"]["bytes_in"] == 1500
    assert t["nginx"]["bytes_out"] == 1500
    assert t["docker:web-1/python3"]["bytes_out"] == 700
    # a UDP flow has no connection: the container's address is the laptop's
    assert t["host:laptop"]["bytes_out"] == 60
    assert t["external:example.com"]["bytes_in"] == 700


def test_egress_counts_local_processes(laptop):
    eg = laptop.report.egress(by="process")
    assert eg.select("destination", "bytes_out").rows() == [("example.com", 700)]
    assert eg["top_sources"].to_list() == [["docker:web-1/python3"]]


def test_dns_clients_are_named_by_their_process(laptop):
    a = laptop.analysis
    rows = a.sql("SELECT qname, client_process, client_container, client_runtime FROM enriched_dns ORDER BY qname").fetchall()
    assert rows == [("api.internal", "curl", None, None), ("example.com", "python3", "web-1", "docker")]


def test_enriched_columns(laptop):
    r = laptop.analysis.sql("SELECT client_process, client_container, client_runtime, client_process_node, client_kind, server_process, server_unit, "
                            "server_runtime, server_host, server_local_node FROM enriched_connections WHERE client_ip = '127.0.0.1'").fetchall()
    assert r == [("curl", None, None, "laptop", "host", "nginx", "nginx.service", "systemd", "laptop", "laptop")]


def test_old_tapes_without_host_facts_still_name_processes(tmp_path):
    """A tape written before the manifest held host facts: processes from the rows still name
    the ends; no /etc/hosts, no own addresses (the container address is still local)."""
    path = write_laptop_tape(tmp_path / "old.tape")
    import json

    m = json.loads((path / "manifest.json").read_text())
    m["nodes"]["laptop"]["host"] = {"hostname": "vm", "kernel": "6"}
    (path / "manifest.json").write_text(json.dumps(m))
    e = edges(flowtape.open(path), "process")
    assert ("curl", "nginx") in e and ("curl", "unknown:192.168.1.50") in e
    assert ("container:c0ffee000000/python3", "external:example.com") in e  # the id from the row, no runtime known


def _host_tape(path: Path, node: str, ip: str, rows: dict) -> Path:
    w = TapeWriter(path, node=node, rotate_seconds=3600)
    w.set_window(T0, T0 + 60 * S)
    w.set_host({"addresses": [{"ip": "127.0.0.1", "iface": "lo"}, {"ip": ip, "iface": "eth0"}], "etc_hosts": []})
    for table, r in rows.items():
        w.append(table, r)
    w.close()
    return path


def test_merged_tapes_of_two_hosts(tmp_path):
    """Host a's curl calls host b's nginx; each host recorded its own end. Merged: the edge is
    curl -> nginx; by host a -> b (each host's own addresses, from its manifest). Loopback is
    both hosts' address and names neither: the rows of its two ends name the processes."""
    a_ip, b_ip, t = "10.1.0.1", "10.1.0.2", T0 + S
    a = _host_tape(tmp_path / "a.tape", "a", a_ip, {
        "connections": [_conn("c1", "client", a_ip, 50001, b_ip, 80, "curl", t), _conn("c2", "client", "127.0.0.1", 50002, "127.0.0.1", 6379, "curl", t),
                        _conn("s2", "server", "127.0.0.1", 50002, "127.0.0.1", 6379, "redis-server", t)],
        "http": [_http("c1", "client", a_ip, 50001, b_ip, 80, "curl", t + MS)],
        "flows": [_flow(t, b_ip, 80, a_ip, 50001, nbytes=900)]})
    b = _host_tape(tmp_path / "b.tape", "b", b_ip, {
        "connections": [_conn("s1", "server", a_ip, 50001, b_ip, 80, "nginx", t + 100_000, sent=1000, received=100)],
        "http": [_http("s1", "server", a_ip, 50001, b_ip, 80, "nginx", t + MS)]})
    merge([a, b], tmp_path / "ab.tape")
    tape = flowtape.open(tmp_path / "ab.tape")
    e = edges(tape, "process")
    assert set(e) == {("curl", "nginx"), ("curl", "redis-server")}
    assert e[("curl", "nginx")]["requests"] == 1 and e[("curl", "nginx")]["connections"] == 1
    h = edges(tape, "host")
    assert ("a", "b") in h and h[("a", "b")]["requests"] == 1
    t2 = {r["endpoint"]: r for r in tape.report.talkers(by="host").iter_rows(named=True)}
    assert t2["b"]["bytes_out"] == 900 and t2["a"]["bytes_in"] == 900


# --- the recorder's host facts ---------------------------------------------------------------------


def test_own_addresses_from_proc(tmp_path):
    fib = tmp_path / "fib_trie"
    fib.write_text("""Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
     |-- 192.168.1.0
        /24 link UNICAST
     |-- 192.168.1.20
        /32 host LOCAL
     |-- 192.168.1.255
        /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 192.168.1.20
        /32 host LOCAL
""")
    inet6 = tmp_path / "if_inet6"
    inet6.write_text("00000000000000000000000000000001 01 80 10 80       lo\nfe800000000000000000000000000001 02 40 20 80     eth0\n")
    assert own_addresses(fib, inet6) == [{"ip": "127.0.0.1", "iface": None}, {"ip": "192.168.1.20", "iface": None},
                                          {"ip": "::1", "iface": "lo"}, {"ip": "fe80::1", "iface": "eth0"}]
    assert own_addresses(tmp_path / "missing", tmp_path / "missing") == []


def test_etc_hosts_parsing():
    text = "# comment\n127.0.0.1\tlocalhost\n::1 localhost ip6-localhost  # trailing\n\nnot-an-ip foo\n192.168.001.5 bad\n10.0.0.5 db db.lan\nfe80::1%eth0 router\n"
    assert parse_etc_hosts(text) == [{"ip": "127.0.0.1", "names": ["localhost"]}, {"ip": "::1", "names": ["localhost", "ip6-localhost"]},
                                     {"ip": "10.0.0.5", "names": ["db", "db.lan"]}, {"ip": "fe80::1", "names": ["router"]}]


@pytest.mark.parametrize("path, runtime, container, unit", [
    (f"/system.slice/docker-{CID}.scope", "docker", CID, f"docker-{CID}.scope"),
    (f"/docker/{CID}", "docker", CID, None),
    (f"/machine.slice/libpod-{CID}.scope/container", "podman", CID, f"libpod-{CID}.scope"),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-{CID}.scope", "containerd", CID, f"cri-containerd-{CID}.scope"),
    (f"/kubepods/besteffort/pod1/crio-{CID}.scope", "cri-o", CID, f"crio-{CID}.scope"),
    ("/system.slice/nginx.service", "systemd", None, "nginx.service"),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope", None, None, "x.scope"),
    ("/user.slice/user-1000.slice/session-2.scope", None, None, "session-2.scope"),
    ("/lxc.payload.web/init.scope", "lxc", "web", "init.scope"),
    ("/", None, None, None),
])
def test_describe_cgroup(path, runtime, container, unit):
    d = describe_cgroup(path)
    assert (d["runtime"], d["container_id"], d["unit"]) == (runtime, container, unit)


def test_container_names_from_runtime_state(tmp_path):
    other = "ab" * 32
    (tmp_path / "docker" / CID).mkdir(parents=True)
    (tmp_path / "docker" / CID / "config.v2.json").write_text('{"Name": "/web-1", "Config": {}}')
    store = tmp_path / "containers.json"
    store.write_text(f'[{{"id": "{other}", "names": ["db"]}}]')
    assert container_names({CID, other, "ff" * 32}, tmp_path / "docker", (store,)) == {CID: "web-1", other: "db"}
    facts = cgroup_facts({7: f"/system.slice/docker-{CID}.scope", 8: f"/docker/{'ff' * 32}", 9: "/system.slice/nginx.service"},
                         tmp_path / "docker", (store,))
    assert {k: (v["runtime"], v["container"], v["unit"]) for k, v in facts.items()} == {
        "7": ("docker", "web-1", f"docker-{CID}.scope"), "8": ("docker", "ff" * 6, None), "9": ("systemd", None, "nginx.service")}


def test_sums_name_processes_as_the_rows_do(laptop):
    """analyze.sums (summed per address key and process key, named after) gives each row the
    names the per-row enriched views give it, processes included."""
    from flowtape.analyze.enrich import NAME_FIELDS, PROCESS_FIELDS

    def names(p):
        return ", ".join(f"{p}_{f}" for f in NAME_FIELDS + PROCESS_FIELDS)

    a = laptop.analysis
    keys = f"node, src_real, dst_real, {names('src')}, {names('dst')}"
    summed = a.sql(f"SELECT {keys}, sum(bytes)::HUGEINT FROM {a.flow_sums()} GROUP BY ALL ORDER BY ALL").fetchall()
    assert summed == a.sql(f"SELECT {keys}, sum(bytes)::HUGEINT FROM enriched_flows GROUP BY ALL ORDER BY ALL").fetchall()
    assert sum(1 for r in summed if r[3 + len(NAME_FIELDS)] is not None) == 3  # src_process of three flows
    keys = f"client_ip, server_ip, {names('client')}, {names('server')}, {names('seen')}"
    summed = a.sql(f"SELECT {keys}, sum(n)::HUGEINT FROM {a.http_sums()} GROUP BY ALL ORDER BY ALL").fetchall()
    assert summed == a.sql(f"SELECT {keys}, count(*)::HUGEINT FROM enriched_http GROUP BY ALL ORDER BY ALL").fetchall()
    assert len(summed) == 3
