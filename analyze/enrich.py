"""Enrichment: every endpoint (ip at ts) named as the cluster named it at that moment.

All SQL of the enrichment lives in this file. Views created on a Tape's DuckDB connection:

- `ft_ip_owner`   ip -> what owned it over [valid_from, valid_to): a pod (not host-network),
                  a node (internal/external IPs; host-network pods resolve here) or a Service
                  ClusterIP. Pod labels are kept only for the label allow-list.
- `ft_nodes`      node name -> zone, region over time.
- `ft_dns_names`  ip -> the name a client asked for, from the tape's own DNS answers, valid for
                  the answer's TTL (the name asked is the start of any CNAME chain);
                  `ft_dns_names_x` adds the lifetime of every connection opened to that IP
                  while the name was valid (keep-alive outlives TTLs).
- `ft_conn_pairs` a client-side connection row paired with the server-side row of the same
                  connection (same client ip:port, overlapping lifetimes) when both ends were
                  recorded: the client addressed a ClusterIP, the server saw the pod.
- `ft_http_x`, `ft_conn_x`  one row per HTTP exchange / TCP connection (client side when it was
                  recorded, else the server side): never counted twice.
- `ft_dns_x`      one row per DNS exchange (a query seen on the client's and the resolver's
                  node is kept once, where its process was seen).
- `ft_flow_x`     flows with ClusterIPs replaced by the pod behind them where the connection
                  pairing knows it, each packet counted at one node only (the source's node
                  when it was recorded, else where it was seen).
- `enriched_http`, `enriched_connections`, `enriched_flows`, `enriched_dns`: those rows with
                  `client_*`/`server_*` (or `src_*`/`dst_*`) columns: kind, namespace, pod,
                  workload_kind, workload, service, node, zone, region, dns, labels.

The time-aware join: an ASOF join picks, per IP, the latest version that started at or before
ts, which counts only if ts is before its end. IPs are reused (a pod IP can belong to three
pods in an hour), so a plain IP lookup is never used.
"""

from __future__ import annotations

import duckdb

FOREVER = "TIMESTAMPTZ '2262-01-01 00:00:00+00'"  # the end of TIMESTAMP_NS: "still valid"

DEFAULT_LABELS = ("app", "app.kubernetes.io/name", "app.kubernetes.io/component", "team", "version", "tier")
"""Pod labels kept by enrichment; others are dropped to bound cardinality."""

GRANULARITIES = ("pod", "workload", "service", "namespace", "node", "zone")

ENDPOINT_FIELDS = ("kind", "namespace", "pod", "workload_kind", "workload", "service", "node", "zone", "region", "dns", "labels")

_PRIVATE_V4 = r"^(10\.|192\.168\.|172\.(1[6-9]|2[0-9]|3[01])\.|100\.(6[4-9]|[7-9][0-9]|1[01][0-9]|12[0-7])\.|198\.1[89]\.|169\.254\.|127\.)"
_PRIVATE_V6 = r"^(f[cd][0-9a-f]{2}:|fe80:|::1$)"


def _base_views(labels: tuple[str, ...]) -> str:
    allow = "[" + ", ".join("'" + x.replace("'", "''") + "'" for x in labels) + "]"
    return f"""
CREATE OR REPLACE VIEW ft_ip_owner AS
SELECT unnest(ips) AS ip, valid_from, coalesce(valid_to, {FOREVER}) AS valid_to, 'pod' AS kind,
       namespace, name AS pod, workload_kind, workload_name AS workload, NULL::VARCHAR AS service, node_name AS node,
       map_from_entries(list_filter(map_entries(labels), lambda e: list_contains({allow}, e.key))) AS labels
FROM k8s_pods WHERE NOT host_network
UNION ALL BY NAME
SELECT unnest(list_concat(internal_ips, external_ips)) AS ip, valid_from, coalesce(valid_to, {FOREVER}) AS valid_to,
       'node' AS kind, name AS node
FROM k8s_nodes
UNION ALL BY NAME
SELECT unnest(cluster_ips) AS ip, valid_from, coalesce(valid_to, {FOREVER}) AS valid_to, 'service' AS kind,
       namespace, name AS service
FROM k8s_services;

CREATE OR REPLACE VIEW ft_nodes AS
SELECT name AS node, zone, region, valid_from, coalesce(valid_to, {FOREVER}) AS valid_to FROM k8s_nodes;

CREATE OR REPLACE VIEW ft_dns_names AS
SELECT a.data AS ip, d.qname AS name, d.ts_answer AS valid_from,
       d.ts_answer + to_seconds(a.ttl::BIGINT) AS valid_to
FROM (SELECT qname, ts_answer, unnest(answers) AS a FROM dns WHERE rcode = 0 AND ts_answer IS NOT NULL) d
WHERE a.type IN ('A', 'AAAA');

-- A connection opened while a name was valid keeps that name for its whole life: clients keep
-- using keep-alive connections long after the answer's TTL.
CREATE OR REPLACE VIEW ft_dns_names_x AS
SELECT ip, name, valid_from, valid_to FROM ft_dns_names
UNION ALL
SELECT c.server_ip AS ip, d.name, c.ts_start AS valid_from, coalesce(c.ts_end, {FOREVER}) AS valid_to
FROM connections c ASOF JOIN ft_dns_names d ON c.server_ip = d.ip AND c.ts_start >= d.valid_from
WHERE c.role = 'client' AND c.ts_start < d.valid_to;

CREATE OR REPLACE VIEW ft_conn_pairs AS
SELECT c.node AS client_node, c.conn_id AS client_conn_id, s.node AS server_node, s.conn_id AS server_conn_id,
       c.client_ip, c.client_port, c.server_ip AS seen_server_ip, c.server_port AS seen_server_port,
       s.server_ip AS server_pod_ip, s.server_port AS server_pod_port, c.ts_start, c.ts_end
FROM connections c JOIN connections s
  ON c.role = 'client' AND s.role = 'server'
 AND c.client_ip = s.client_ip AND c.client_port = s.client_port
 AND s.ts_start >= c.ts_start - INTERVAL 5 SECOND
 AND s.ts_start <= coalesce(c.ts_end, {FOREVER});

CREATE OR REPLACE VIEW ft_http_x AS
SELECT h.ts_request AS ts, h.client_ip, coalesce(p.server_pod_ip, h.server_ip) AS server_ip, h.server_ip AS seen_server_ip,
       h.server_port, h.method, h.host, h.path, h.status, h.latency_ns, h.request_bytes, h.response_bytes, h.side, h.tls, h.node
FROM http h LEFT JOIN ft_conn_pairs p ON h.node = p.client_node AND h.conn_id = p.client_conn_id
WHERE h.side = 'client'
UNION ALL
SELECT h.ts_request, h.client_ip, h.server_ip, h.server_ip, h.server_port, h.method, h.host, h.path, h.status, h.latency_ns,
       h.request_bytes, h.response_bytes, h.side, h.tls, h.node
FROM http h
WHERE h.side = 'server'
  AND NOT EXISTS (SELECT 1 FROM ft_conn_pairs p WHERE p.server_node = h.node AND p.server_conn_id = h.conn_id);

-- One row per DNS exchange: a query seen on several nodes (the client's and the resolver's)
-- is kept once, preferably where its process was seen (the client's node).
CREATE OR REPLACE VIEW ft_dns_x AS
SELECT d.* FROM dns d
WHERE NOT EXISTS (
    SELECT 1 FROM dns o
    WHERE o.node <> d.node AND o.client_ip = d.client_ip AND o.client_port = d.client_port
      AND o.server_ip = d.server_ip AND o.txid = d.txid AND o.qname = d.qname AND o.qtype = d.qtype
      AND o.ts_query BETWEEN d.ts_query - INTERVAL 2 SECOND AND d.ts_query + INTERVAL 2 SECOND
      AND ((o.pid IS NOT NULL AND d.pid IS NULL) OR ((o.pid IS NULL) = (d.pid IS NULL) AND o.node < d.node))
);

CREATE OR REPLACE VIEW ft_conn_x AS
SELECT c.ts_start AS ts, c.client_ip, coalesce(p.server_pod_ip, c.server_ip) AS server_ip, c.server_ip AS seen_server_ip,
       c.server_port, c.bytes_sent AS bytes_c2s, c.bytes_received AS bytes_s2c, c.close_state, c.connect_latency_ns,
       c.srtt_us, c.retransmits, c.node
FROM connections c LEFT JOIN ft_conn_pairs p ON c.node = p.client_node AND c.conn_id = p.client_conn_id
WHERE c.role = 'client'
UNION ALL
SELECT s.ts_start, s.client_ip, s.server_ip, s.server_ip, s.server_port, s.bytes_received, s.bytes_sent, s.close_state,
       NULL, s.srtt_us, s.retransmits, s.node
FROM connections s
WHERE s.role = 'server'
  AND NOT EXISTS (SELECT 1 FROM ft_conn_pairs p WHERE p.server_node = s.node AND p.server_conn_id = s.conn_id);
"""


def resolve_sql(source: str, ip: str, ts: str, prefix: str) -> tuple[str, str]:
    """Return (joins, columns) naming `source.ip` at `source.ts` with columns `{prefix}_<field>`.

    joins: ASOF LEFT JOINs to append after `FROM <table> <source>`; columns: the select list of
    ENDPOINT_FIELDS, each prefixed.
    """
    o, n, d = f"{prefix}__o", f"{prefix}__n", f"{prefix}__d"
    joins = f"""
    ASOF LEFT JOIN ft_ip_owner {o} ON {source}.{ip} = {o}.ip AND {source}.{ts} >= {o}.valid_from
    ASOF LEFT JOIN ft_nodes {n} ON {o}.node = {n}.node AND {source}.{ts} >= {n}.valid_from
    ASOF LEFT JOIN ft_dns_names_x {d} ON {source}.{ip} = {d}.ip AND {source}.{ts} >= {d}.valid_from"""
    live = f"coalesce({source}.{ts} < {o}.valid_to, false)"
    named = f"coalesce({source}.{ts} < {d}.valid_to, false)"
    private = f"(regexp_matches({source}.{ip}, '{_PRIVATE_V4}') OR regexp_matches(lower({source}.{ip}), '{_PRIVATE_V6}'))"
    zoned = f"{live} AND coalesce({source}.{ts} < {n}.valid_to, false)"
    cols = f"""
    CASE WHEN {live} THEN {o}.kind WHEN {named} THEN 'external' WHEN {private} THEN 'unknown' ELSE 'external' END AS {prefix}_kind,
    CASE WHEN {live} THEN {o}.namespace END AS {prefix}_namespace,
    CASE WHEN {live} THEN {o}.pod END AS {prefix}_pod,
    CASE WHEN {live} THEN {o}.workload_kind END AS {prefix}_workload_kind,
    CASE WHEN {live} THEN {o}.workload END AS {prefix}_workload,
    CASE WHEN {live} THEN {o}.service END AS {prefix}_service,
    CASE WHEN {live} THEN {o}.node END AS {prefix}_node,
    CASE WHEN {zoned} THEN {n}.zone END AS {prefix}_zone,
    CASE WHEN {zoned} THEN {n}.region END AS {prefix}_region,
    CASE WHEN NOT {live} AND {named} THEN {d}.name END AS {prefix}_dns,
    CASE WHEN {live} THEN {o}.labels END AS {prefix}_labels"""
    return joins, cols


def _enriched_views() -> str:
    hc_j, hc_c = resolve_sql("h", "client_ip", "ts", "client")
    hs_j, hs_c = resolve_sql("h", "server_ip", "ts", "server")
    hv_j, hv_c = resolve_sql("h", "seen_server_ip", "ts", "seen")
    cc_j, cc_c = resolve_sql("c", "client_ip", "ts", "client")
    cs_j, cs_c = resolve_sql("c", "server_ip", "ts", "server")
    cv_j, cv_c = resolve_sql("c", "seen_server_ip", "ts", "seen")
    dc_j, dc_c = resolve_sql("q", "client_ip", "ts_query", "client")
    fs_j, fs_c = resolve_sql("f", "src_real", "ts_start", "src")
    fd_j, fd_c = resolve_sql("f", "dst_real", "ts_start", "dst")
    return f"""
CREATE OR REPLACE VIEW enriched_http AS
SELECT h.*, {hc_c}, {hs_c}, seen_kind, seen_namespace, seen_service
FROM (SELECT h.*, {hv_c} FROM ft_http_x h {hv_j}) h {hc_j} {hs_j};

CREATE OR REPLACE VIEW enriched_connections AS
SELECT c.*, {cc_c}, {cs_c}, seen_kind, seen_namespace, seen_service
FROM (SELECT c.*, {cv_c} FROM ft_conn_x c {cv_j}) c {cc_j} {cs_j};

CREATE OR REPLACE VIEW enriched_dns AS
SELECT q.*, {dc_c} FROM ft_dns_x q {dc_j};

CREATE OR REPLACE VIEW ft_flow_real AS
SELECT f.*,
       coalesce(fwd.server_pod_ip, f.dst_ip) AS dst_real,
       coalesce(rev.server_pod_ip, f.src_ip) AS src_real
FROM flows f
LEFT JOIN ft_conn_pairs fwd
  ON f.l4 = 'tcp' AND f.src_ip = fwd.client_ip AND f.src_port = fwd.client_port
 AND f.dst_ip = fwd.seen_server_ip AND f.dst_port = fwd.seen_server_port AND fwd.seen_server_ip <> fwd.server_pod_ip
 AND f.ts_start >= fwd.ts_start - INTERVAL 5 SECOND AND f.ts_start <= coalesce(fwd.ts_end, {FOREVER})
LEFT JOIN ft_conn_pairs rev
  ON f.l4 = 'tcp' AND f.dst_ip = rev.client_ip AND f.dst_port = rev.client_port
 AND f.src_ip = rev.seen_server_ip AND f.src_port = rev.seen_server_port AND rev.seen_server_ip <> rev.server_pod_ip
 AND f.ts_start >= rev.ts_start - INTERVAL 5 SECOND AND f.ts_start <= coalesce(rev.ts_end, {FOREVER});

CREATE OR REPLACE VIEW enriched_flows AS
SELECT * EXCLUDE (recorded_nodes) FROM (
    SELECT f.*, {fs_c}, {fd_c}, (SELECT list(DISTINCT node) FROM flows) AS recorded_nodes
    FROM ft_flow_real f {fs_j} {fd_j}
)
-- each packet once: at the source's node when that node was recorded, else where it was seen
WHERE node = src_node OR src_node IS NULL OR NOT list_contains(recorded_nodes, src_node);
"""


def create_views(con: duckdb.DuckDBPyConnection, labels: tuple[str, ...] = DEFAULT_LABELS) -> None:
    """Create the enrichment views on a tape's connection (idempotent)."""
    con.execute(_base_views(labels))
    con.execute(_enriched_views())


def name_sql(prefix: str, by: str, ip: str | None = None) -> str:
    """SQL naming the endpoint with columns `{prefix}_*` at granularity `by` (one of GRANULARITIES).

    Pods name themselves per `by`; ClusterIPs are `svc:ns/name` (or their namespace); node IPs
    `node:<name>`; external IPs `external:<dns name or ip>`; the rest `unknown:<ip>`.
    """
    p = prefix
    ip = ip or f"{p}_ip"
    pod = {
        "pod": f"{p}_namespace || '/' || {p}_pod",
        "workload": f"{p}_namespace || '/' || {p}_workload",
        "service": f"{p}_namespace || '/' || {p}_workload",
        "namespace": f"{p}_namespace",
        "node": f"{p}_node",
        "zone": f"coalesce({p}_zone, 'zone?')",
    }[by]
    node = {"node": f"{p}_node", "zone": f"coalesce({p}_zone, 'zone?')"}.get(by, f"'node:' || {p}_node")
    svc = {"namespace": f"{p}_namespace", "node": "'service'", "zone": "'service'"}.get(by, f"'svc:' || {p}_namespace || '/' || {p}_service")
    return f"""CASE {p}_kind WHEN 'pod' THEN {pod} WHEN 'node' THEN {node} WHEN 'service' THEN {svc}
        WHEN 'external' THEN 'external:' || coalesce({p}_dns, {ip}) ELSE 'unknown:' || {ip} END"""


def server_name_sql(by: str) -> str:
    """The server of an exchange: by=service names the Service the client addressed, if any."""
    plain = name_sql("server", by)
    if by != "service":
        return plain
    return f"CASE WHEN seen_kind = 'service' THEN 'svc:' || seen_namespace || '/' || seen_service ELSE {plain} END"
