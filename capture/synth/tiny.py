"""The tiny example tape: two nodes, two services, a few rows in every table.

Hand-written so that every value is known: the tests open it, the README shows it, and
`flowtape tiny -o X.tape` writes it so anyone can look at the same data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ...writer import TapeWriter

T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in ns: fixed, so the tape is reproducible
S = 1_000_000_000
MS = 1_000_000

FRONTEND_IP, API_IP, API_VIP, DNS_IP, EXT_IP = "10.0.1.5", "10.0.2.7", "10.96.0.20", "10.96.0.10", "142.250.74.110"
NODE_A_IP, NODE_B_IP = "198.18.0.11", "198.18.0.12"


def _k8s(w: TapeWriter) -> None:
    v = {"valid_to": None, "observed_at_start": True, "deleted": False}
    w.append(
        "k8s_nodes",
        [
            {**v, "valid_from": T0 - 3600 * S, "resource_version": "101", "uid": "n-a", "name": "node-a", "internal_ips": [NODE_A_IP], "external_ips": [], "pod_cidrs": ["10.0.1.0/24"], "zone": "eu-west-1a", "region": "eu-west-1", "labels": {"topology.kubernetes.io/zone": "eu-west-1a"}},
            {**v, "valid_from": T0 - 3600 * S, "resource_version": "102", "uid": "n-b", "name": "node-b", "internal_ips": [NODE_B_IP], "external_ips": [], "pod_cidrs": ["10.0.2.0/24"], "zone": "eu-west-1b", "region": "eu-west-1", "labels": {"topology.kubernetes.io/zone": "eu-west-1b"}},
        ],
        node="node-a",
    )
    pod = {"host_network": False, "phase": "Running", "owner_kind": "ReplicaSet", "workload_kind": "Deployment"}
    w.append(
        "k8s_pods",
        [
            {**v, **pod, "valid_from": T0 - 600 * S, "resource_version": "201", "uid": "p-fe", "namespace": "shop", "name": "frontend-7d9f-abcde", "node_name": "node-a", "ips": [FRONTEND_IP], "labels": {"app": "frontend"}, "owner_name": "frontend-7d9f", "workload_name": "frontend", "containers": [{"name": "web", "image": "shop/frontend:1.4", "container_id": "a" * 64}]},
            # the api pod is replaced mid-tape: its IP goes to a new pod of another workload
            {**v, **pod, "valid_from": T0 - 600 * S, "valid_to": T0 + 30 * S, "deleted": True, "resource_version": "202", "uid": "p-api1", "namespace": "shop", "name": "api-5c6b-xk2p9", "node_name": "node-b", "ips": [API_IP], "labels": {"app": "api"}, "owner_name": "api-5c6b", "workload_name": "api", "containers": [{"name": "api", "image": "shop/api:2.0", "container_id": "b" * 64}]},
            {**v, **pod, "valid_from": T0 + 31 * S, "observed_at_start": False, "resource_version": "305", "uid": "p-wk1", "namespace": "batch", "name": "worker-6f8d-q7r2s", "node_name": "node-b", "ips": [API_IP], "labels": {"app": "worker"}, "owner_name": "worker-6f8d", "workload_name": "worker", "containers": [{"name": "worker", "image": "batch/worker:0.9", "container_id": None}]},
        ],
        node="node-a",
    )
    w.append(
        "k8s_services",
        [
            {**v, "valid_from": T0 - 86400 * S, "resource_version": "50", "uid": "s-api", "namespace": "shop", "name": "api", "type": "ClusterIP", "cluster_ips": [API_VIP], "external_ips": [], "ports": [{"name": "http", "protocol": "TCP", "port": 80, "target_port": "8080", "node_port": None}], "selector": {"app": "api"}, "labels": {}, "external_name": None},
            {**v, "valid_from": T0 - 86400 * S, "resource_version": "10", "uid": "s-dns", "namespace": "kube-system", "name": "kube-dns", "type": "ClusterIP", "cluster_ips": [DNS_IP], "external_ips": [], "ports": [{"name": "dns", "protocol": "UDP", "port": 53, "target_port": "53", "node_port": None}], "selector": {"k8s-app": "kube-dns"}, "labels": {"k8s-app": "kube-dns"}, "external_name": None},
        ],
        node="node-a",
    )
    w.append(
        "k8s_endpoints",
        [
            {**v, "valid_from": T0 - 600 * S, "valid_to": T0 + 30 * S, "deleted": True, "resource_version": "203", "namespace": "shop", "service": "api", "slice": "api-x1", "ip": API_IP, "port": 8080, "protocol": "TCP", "port_name": "http", "pod": "api-5c6b-xk2p9", "node_name": "node-b", "zone": "eu-west-1b", "ready": True},
        ],
        node="node-a",
    )


def _traffic(w: TapeWriter) -> None:
    t = T0 + 1 * S
    w.append(
        "dns",
        [
            {"ts_query": t, "ts_answer": t + 2 * MS, "latency_ns": 2 * MS, "client_ip": FRONTEND_IP, "client_port": 40001, "server_ip": DNS_IP, "server_port": 53, "transport": "udp", "pid": 4242, "comm": "frontend", "txid": 0x1A2B, "qname": "api.shop.svc.cluster.local", "qtype": 1, "qtype_name": "A", "rcode": 0, "rcode_name": "NOERROR", "answers": [{"name": "api.shop.svc.cluster.local", "type": "A", "ttl": 30, "data": API_VIP}]},
            {"ts_query": t + 5 * MS, "ts_answer": t + 9 * MS, "latency_ns": 4 * MS, "client_ip": FRONTEND_IP, "client_port": 40002, "server_ip": DNS_IP, "server_port": 53, "transport": "udp", "pid": 4242, "comm": "frontend", "txid": 0x1A2C, "qname": "golang.org.shop.svc.cluster.local", "qtype": 1, "qtype_name": "A", "rcode": 3, "rcode_name": "NXDOMAIN", "answers": []},
            {"ts_query": t + 10 * MS, "ts_answer": t + 31 * MS, "latency_ns": 21 * MS, "client_ip": FRONTEND_IP, "client_port": 40003, "server_ip": DNS_IP, "server_port": 53, "transport": "udp", "pid": 4242, "comm": "frontend", "txid": 0x1A2D, "qname": "golang.org", "qtype": 1, "qtype_name": "A", "rcode": 0, "rcode_name": "NOERROR", "answers": [{"name": "golang.org", "type": "CNAME", "ttl": 300, "data": "golang-org.l.google.com"}, {"name": "golang-org.l.google.com", "type": "A", "ttl": 60, "data": EXT_IP}]},
            {"ts_query": t + 40 * MS, "ts_answer": None, "latency_ns": None, "client_ip": FRONTEND_IP, "client_port": 40004, "server_ip": DNS_IP, "server_port": 53, "transport": "udp", "pid": None, "comm": None, "txid": 0x1A2E, "qname": "unanswered.example", "qtype": 28, "qtype_name": "AAAA", "rcode": None, "rcode_name": None, "answers": None},
        ],
    )
    conn = {"cgroup_id": 1234, "segs_sent": None, "segs_received": None, "retransmits": 0}
    w.append(
        "connections",
        [
            {**conn, "conn_id": "Ca1", "ts_start": t + 3 * MS, "ts_end": t + 20 * S, "role": "client", "client_ip": FRONTEND_IP, "client_port": 51000, "server_ip": API_VIP, "server_port": 80, "pid": 4242, "comm": "frontend", "container_id": "a" * 64, "bytes_sent": 1500, "bytes_received": 24000, "srtt_us": 420, "connect_latency_ns": 600_000, "close_state": "closed"},
            {**conn, "conn_id": "Ca2", "ts_start": t + 32 * MS, "ts_end": None, "role": "client", "client_ip": FRONTEND_IP, "client_port": 51001, "server_ip": EXT_IP, "server_port": 443, "pid": 4242, "comm": "frontend", "container_id": "a" * 64, "bytes_sent": 900, "bytes_received": 5200, "srtt_us": 8100, "connect_latency_ns": 16_000_000, "close_state": "open"},
            {**conn, "conn_id": "Ca3", "ts_start": t + 50 * MS, "ts_end": t + 51 * MS, "role": "client", "client_ip": FRONTEND_IP, "client_port": 51002, "server_ip": "10.0.2.99", "server_port": 9090, "pid": 4242, "comm": "frontend", "container_id": "a" * 64, "bytes_sent": 0, "bytes_received": 0, "srtt_us": None, "connect_latency_ns": None, "close_state": "refused"},
        ],
        node="node-a",
    )
    w.append(
        "connections",
        [
            {**conn, "conn_id": "Cb1", "ts_start": t + 3 * MS + 300_000, "ts_end": t + 20 * S, "role": "server", "client_ip": FRONTEND_IP, "client_port": 51000, "server_ip": API_IP, "server_port": 8080, "pid": 777, "comm": "api", "container_id": "b" * 64, "bytes_sent": 24000, "bytes_received": 1500, "srtt_us": 380, "connect_latency_ns": None, "close_state": "closed"},
        ],
        node="node-b",
    )
    http = {"tls": False, "http_version": "HTTP/1.1", "host": "api.shop.svc.cluster.local", "traceparent": None, "user_agent": "frontend/1.4", "content_type": "application/json"}
    reqs = [("GET", "/orders/1001", 200, 12), ("GET", "/orders/1002", 200, 15), ("POST", "/orders?coupon=", 201, 40), ("GET", "/health", 500, 3)]
    for side, node, conn_id, pid, comm, sip, sport in (("client", "node-a", "Ca1", 4242, "frontend", API_VIP, 80), ("server", "node-b", "Cb1", 777, "api", API_IP, 8080)):
        rows = []
        for i, (method, path, status, ms) in enumerate(reqs):
            start = t + (100 + 1000 * i) * MS
            rows.append({**http, "ts_request": start, "ts_response": start + ms * MS, "latency_ns": ms * MS, "conn_id": conn_id, "client_ip": FRONTEND_IP, "client_port": 51000, "server_ip": sip, "server_port": sport, "pid": pid, "comm": comm, "side": side, "method": method, "path": path, "status": status, "request_bytes": 250 if method == "GET" else 375, "response_bytes": 6000, "traceparent": f"00-{i + 1:032x}-{i + 1:016x}-01"})
        w.append("http", rows, node=node)
    w.append("tls", [{"ts": t + 33 * MS, "client_ip": FRONTEND_IP, "client_port": 51001, "server_ip": EXT_IP, "server_port": 443, "pid": 4242, "comm": "frontend", "sni": "golang.org", "version": "TLS 1.3", "alpn": ["h2", "http/1.1"]}], node="node-a")
    flow = {"iface": "eth0", "ifindex": 2, "direction": "egress", "src_mac": "02:00:00:00:00:0a", "dst_mac": "02:00:00:00:00:01", "l4": "tcp", "ip_proto": 6}
    w.append(
        "flows",
        [
            {**flow, "ts_start": t + 3 * MS, "ts_end": t + 4 * S, "src_ip": FRONTEND_IP, "dst_ip": API_VIP, "src_port": 51000, "dst_port": 80, "packets": 12, "bytes": 1500 + 12 * 52, "tcp_flags": 0x1A},
            {**flow, "direction": "ingress", "ts_start": t + 4 * MS, "ts_end": t + 4 * S, "src_ip": API_VIP, "dst_ip": FRONTEND_IP, "src_port": 80, "dst_port": 51000, "packets": 20, "bytes": 24000 + 20 * 52, "tcp_flags": 0x1A},
            {**flow, "ts_start": t + 10 * MS, "ts_end": t + 10 * MS, "src_ip": FRONTEND_IP, "dst_ip": DNS_IP, "src_port": 40003, "dst_port": 53, "l4": "udp", "ip_proto": 17, "packets": 1, "bytes": 56, "tcp_flags": None},
            {**flow, "ts_start": t + 32 * MS, "ts_end": t + 4 * S, "src_ip": FRONTEND_IP, "dst_ip": EXT_IP, "src_port": 51001, "dst_port": 443, "packets": 10, "bytes": 900 + 10 * 52, "tcp_flags": 0x1A},
            {**flow, "direction": "ingress", "ts_start": t + 48 * MS, "ts_end": t + 4 * S, "src_ip": EXT_IP, "dst_ip": FRONTEND_IP, "src_port": 443, "dst_port": 51001, "packets": 9, "bytes": 5200 + 9 * 52, "tcp_flags": 0x1A},
            {**flow, "ts_start": t + 60 * MS, "ts_end": t + 60 * MS, "src_ip": FRONTEND_IP, "dst_ip": "10.0.2.99", "src_port": None, "dst_port": None, "l4": "icmp", "ip_proto": 1, "packets": 1, "bytes": 84, "tcp_flags": None},
        ],
        node="node-a",
    )
    w.append(
        "flows",
        [
            {**flow, "iface": "veth1", "ifindex": 7, "direction": "ingress", "src_mac": "02:00:00:00:00:0b", "ts_start": t + 3 * MS, "ts_end": t + 4 * S, "src_ip": FRONTEND_IP, "dst_ip": API_IP, "src_port": 51000, "dst_port": 8080, "packets": 12, "bytes": 1500 + 12 * 52, "tcp_flags": 0x1A},
        ],
        node="node-b",
    )


def write_tiny_tape(path: str | os.PathLike) -> str:
    """Write the tiny example tape at `path` (which must not exist) and return the path."""
    clock = {"realtime_ns": T0, "monotonic_ns": 1_000 * S, "offset_ns": T0 - 1_000 * S, "uncertainty_ns": 1_000}
    w = TapeWriter(path, node="node-a", clock=clock, rotate_seconds=3600)
    w.add_node("node-b", clock)  # the second node's recorder (merged in the real world)
    w.set_window(T0, T0 + 60 * S)
    # the note names the module's old place: kept so the committed fixture stays byte-identical
    w.set_probe("example", {"note": "hand-written rows, see flowtape/capture/tiny.py"})
    w.set_lost("kernel_ringbuf_drops", 0)
    w.set_lost("flow_insert_failures", 2, node="node-b")
    _k8s(w)
    _traffic(w)
    w.close()
    return str(path)


def register(app: typer.Typer) -> None:
    @app.command("tiny")
    def tiny(output: Annotated[Path, typer.Option("--output", "-o", help="New tape to write.")]) -> None:
        """Write the tiny two-node example tape (a few hand-written rows in every table).

        Example: flowtape tiny -o /tmp/tiny.tape && flowtape info /tmp/tiny.tape
        """
        write_tiny_tape(output)
        print(f"wrote {output}")
