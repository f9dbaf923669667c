"""A laptop's tape without Kubernetes, hand-written so that every value is known (test_names,
the terminal goldens): processes on both ends, a container, a systemd service, DNS (TTL 300 and
TTL 0), /etc/hosts, a remote client, one pod (Kubernetes first), flows of those connections and
UDP lookups to an address of another network namespace."""

from __future__ import annotations

from pathlib import Path

from flowtape.writer import TapeWriter

T0 = 1_767_225_600_000_000_000
S, MS = 1_000_000_000, 1_000_000
LAPTOP_IP, CONTAINER_IP, NAS_IP, API_IP, EXT_IP, REMOTE_IP, POD_IP = (
    "192.168.1.20", "172.17.0.2", "192.168.1.50", "10.9.9.9", "93.184.215.14", "192.168.1.77", "10.244.0.5")
CID = "c0ffee" + "0" * 58


def conn_row(conn_id, role, cip, cport, sip, sport, comm, t, cgroup_id=1, container_id=None, close="closed", sent=100, received=1000, pid=None):
    return {"conn_id": conn_id, "ts_start": t, "ts_end": t + 1 * S, "role": role, "client_ip": cip, "client_port": cport, "server_ip": sip,
            "server_port": sport, "pid": pid or 100 + int(conn_id[1:]), "comm": comm, "cgroup_id": cgroup_id, "container_id": container_id,
            "bytes_sent": sent, "bytes_received": received, "srtt_us": 100, "retransmits": 0, "connect_latency_ns": MS if role == "client" else None,
            "close_state": close}


def http_row(conn_id, side, cip, cport, sip, sport, comm, t, status=200, ms=5):
    return {"ts_request": t, "ts_response": t + ms * MS, "latency_ns": ms * MS, "conn_id": conn_id, "client_ip": cip, "client_port": cport,
            "server_ip": sip, "server_port": sport, "pid": 100, "comm": comm, "side": side, "tls": False, "http_version": "HTTP/1.1",
            "method": "GET", "host": "h", "path": "/", "status": status, "request_bytes": 100, "response_bytes": 1000}


def dns_row(t, qname, answers, client_ip=LAPTOP_IP, comm="curl", pid=201):
    return {"ts_query": t, "ts_answer": t + MS, "latency_ns": MS, "client_ip": client_ip, "client_port": 40000, "server_ip": "192.168.1.1",
            "server_port": 53, "transport": "udp", "pid": pid, "comm": comm, "txid": 1, "qname": qname, "qtype": 1, "qtype_name": "A",
            "rcode": 0, "rcode_name": "NOERROR", "answers": [{"name": qname, "type": "A", "ttl": ttl, "data": ip} for ip, ttl in answers]}


def flow_row(t, src, sport, dst, dport, l4="tcp", nbytes=500):
    return {"ts_start": t, "ts_end": t + S, "iface": "eth0", "ifindex": 2, "direction": "egress", "src_mac": None, "dst_mac": None,
            "src_ip": src, "dst_ip": dst, "src_port": sport, "dst_port": dport, "l4": l4, "ip_proto": 6 if l4 == "tcp" else 17,
            "packets": 5, "bytes": nbytes, "tcp_flags": None}


RESOLVER_IP = "10.200.0.53"  # a resolver in a container: another network namespace of the laptop

HOST_FACTS = {
    "addresses": [{"ip": "127.0.0.1", "iface": None}, {"ip": LAPTOP_IP, "iface": None}],
    "namespace_addresses": [{"ip": RESOLVER_IP, "iface": "eth0", "netns": 4026532000}],
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
        dns_row(t, "example.com", [(EXT_IP, 300)], client_ip=CONTAINER_IP, comm="python3", pid=301),
        dns_row(t + 4 * S, "api.internal", [(API_IP, 0)]),  # a local resolver's TTL 0: still names the connection right after it
    ])
    w.append("connections", [
        conn_row("c1", "client", "127.0.0.1", 50001, "127.0.0.1", 8080, "curl", t),
        conn_row("s1", "server", "127.0.0.1", 50001, "127.0.0.1", 8080, "nginx", t + 100_000, cgroup_id=4002, sent=1000, received=100),
        conn_row("c2", "client", CONTAINER_IP, 50002, EXT_IP, 443, "python3", t + 2 * S, cgroup_id=4001, container_id=CID, pid=301),
        conn_row("c3", "client", LAPTOP_IP, 50003, NAS_IP, 445, "curl", t + 3 * S),
        conn_row("c4", "client", LAPTOP_IP, 50004, API_IP, 80, "curl", t + 4 * S + 5 * MS),
        conn_row("s5", "server", REMOTE_IP, 60000, LAPTOP_IP, 8080, "nginx", t + 5 * S, cgroup_id=4002, sent=1000, received=100),
        conn_row("c6", "client", POD_IP, 50006, LAPTOP_IP, 8080, "worker", t + 6 * S),
    ])
    w.append("http", [
        http_row("c1", "client", "127.0.0.1", 50001, "127.0.0.1", 8080, "curl", t + MS),
        http_row("s1", "server", "127.0.0.1", 50001, "127.0.0.1", 8080, "nginx", t + MS),
        http_row("c2", "client", CONTAINER_IP, 50002, EXT_IP, 443, "python3", t + 2 * S + MS, status=503),
        http_row("s5", "server", REMOTE_IP, 60000, LAPTOP_IP, 8080, "nginx", t + 5 * S + MS),
    ])
    w.append("flows", [
        flow_row(t, "127.0.0.1", 50001, "127.0.0.1", 8080),
        flow_row(t, "127.0.0.1", 8080, "127.0.0.1", 50001, nbytes=1500),
        flow_row(t + 2 * S, CONTAINER_IP, 50002, EXT_IP, 443, nbytes=700),
        flow_row(t + 2 * S - MS, CONTAINER_IP, 40000, "192.168.1.1", 53, l4="udp", nbytes=60),
        flow_row(t + 3 * S, LAPTOP_IP, 40001, RESOLVER_IP, 53, l4="udp", nbytes=70),
    ])
    w.close()
    return path
