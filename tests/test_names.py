"""Names without Kubernetes: a laptop's tape (hand-written rows, every value known) and two
hosts' tapes merged, named at every granularity.

Priority (analyze.enrich): Kubernetes ownership > a local process > the DNS name the tape saw
> the recording host's /etc/hosts > the host an address belongs to > the address.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import flowtape
from flowtape.capture.live.host import NamespaceAddresses, cgroup_facts, container_names, describe_cgroup, own_addresses, parse_etc_hosts
from flowtape.analyze.enrich import GRANULARITIES
from flowtape.merge import merge
from flowtape.writer import TapeWriter
from laptop_tape import (API_IP, CID, CONTAINER_IP, EXT_IP, LAPTOP_IP, MS, NAS_IP, POD_IP, REMOTE_IP, RESOLVER_IP, S, T0, conn_row, flow_row,
                         http_row, write_laptop_tape)


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
    local = {"127.0.0.1", LAPTOP_IP, CONTAINER_IP, RESOLVER_IP}
    for by in GRANULARITIES:
        names = {n for pair in edges(laptop, by) for n in pair}
        names |= set(laptop.report.talkers(by=by)["endpoint"])
        assert not any(n == f"unknown:{ip}" for n in names for ip in local), (by, names)


def test_flows_take_the_process_of_their_connection(laptop):
    t = {r["endpoint"]: r for r in laptop.report.talkers(by="process").iter_rows(named=True)}
    assert t["curl"]["bytes_out"] == 500 and t["curl"]["bytes_in"] == 1500
    assert t["nginx"]["bytes_out"] == 1500
    assert t["docker:web-1/python3"]["bytes_out"] == 700
    # a UDP flow has no connection: the container's address is on the laptop, so is the resolver's
    # (another network namespace's), and the laptop's own address is the laptop
    assert t["host:laptop"]["bytes_out"] == 60 + 70 and t["host:laptop"]["bytes_in"] == 70
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
        "connections": [conn_row("c1", "client", a_ip, 50001, b_ip, 80, "curl", t), conn_row("c2", "client", "127.0.0.1", 50002, "127.0.0.1", 6379, "curl", t),
                        conn_row("s2", "server", "127.0.0.1", 50002, "127.0.0.1", 6379, "redis-server", t)],
        "http": [http_row("c1", "client", a_ip, 50001, b_ip, 80, "curl", t + MS)],
        "flows": [flow_row(t, b_ip, 80, a_ip, 50001, nbytes=900)]})
    b = _host_tape(tmp_path / "b.tape", "b", b_ip, {
        "connections": [conn_row("s1", "server", a_ip, 50001, b_ip, 80, "nginx", t + 100_000, sent=1000, received=100)],
        "http": [http_row("s1", "server", a_ip, 50001, b_ip, 80, "nginx", t + MS)]})
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


@pytest.mark.skipif(os.geteuid() != 0, reason="creates a network namespace (root)")
def test_namespace_addresses_are_read_inside_each_namespace(monkeypatch):
    """The addresses of another network namespace (a lab host), read by a thread that joins it;
    a second scan reads only namespaces it has not seen."""
    from netlab import Lab

    from flowtape.capture.live import host as host_mod

    scanner = NamespaceAddresses()
    scanner.scan()
    with Lab() as lab:
        h = lab.add_host("ns")
        assert scanner.scan() is True
        got = {a["ip"]: a for a in scanner.listed()}
        assert h.ip in got and got[h.ip]["netns"] == os.stat(f"/run/netns/{h.netns}").st_ino
        assert "127.0.0.1" not in got and lab.gateway_ip not in got  # loopback; the host's own bridge address
        read = []
        monkeypatch.setattr(host_mod, "_addresses_in", lambda handle: read.append(os.stat(handle).st_ino) or [])
        scanner.scan()  # other namespaces may appear meanwhile (the machine is shared): not this one
        assert got[h.ip]["netns"] not in read
    assert own_addresses() and all(a["ip"] != h.ip for a in own_addresses())


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
