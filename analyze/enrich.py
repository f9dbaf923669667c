"""Enrichment: every endpoint (ip at ts) named as the cluster named it at that moment.

Views created on a Tape's DuckDB connection (all SQL of the enrichment lives in this file):

- `ft_ip_owner`   ip -> what owned it over [valid_from, valid_to): a pod (not host-network),
                  a node (internal/external IPs; host-network pods resolve here) or a
                  Service ClusterIP.
- `ft_nodes`      node name -> zone, region over time.
- `ft_dns_names`  ip -> the name a client asked for, from the tape's own DNS answers, valid
                  for the answer's TTL (the name asked is the start of any CNAME chain).
- `ft_conn_pairs` a client-side connection row paired with the server-side row of the same
                  connection (same client ip:port, overlapping lifetimes) when both ends were
                  recorded: the client saw a ClusterIP, the server saw the pod.

`resolve_sql()` produces the time-aware join for any (ip, ts) columns: an ASOF join picks the
latest version that started at or before ts; it counts only if ts is before its end. IPs are
reused (a pod IP can belong to three pods in an hour), so a plain IP lookup is never used.
"""

from __future__ import annotations

import duckdb

FOREVER = "TIMESTAMPTZ '2262-01-01 00:00:00+00'"  # the end of TIMESTAMP_NS: "still valid"

VIEWS = f"""
CREATE OR REPLACE VIEW ft_ip_owner AS
SELECT ip, valid_from, valid_to, kind, namespace, pod, workload_kind, workload, service, node
FROM (
    SELECT unnest(ips) AS ip, valid_from, coalesce(valid_to, {FOREVER}) AS valid_to, 'pod' AS kind,
           namespace, name AS pod, workload_kind, workload_name AS workload, NULL AS service, node_name AS node
    FROM k8s_pods WHERE NOT host_network
    UNION ALL
    SELECT unnest(list_concat(internal_ips, external_ips)), valid_from, coalesce(valid_to, {FOREVER}), 'node',
           NULL, NULL, NULL, NULL, NULL, name
    FROM k8s_nodes
    UNION ALL
    SELECT unnest(cluster_ips), valid_from, coalesce(valid_to, {FOREVER}), 'service',
           namespace, NULL, NULL, NULL, name, NULL
    FROM k8s_services
)
WHERE ip IS NOT NULL AND ip <> 'None';

CREATE OR REPLACE VIEW ft_nodes AS
SELECT name AS node, zone, region, valid_from, coalesce(valid_to, {FOREVER}) AS valid_to FROM k8s_nodes;

CREATE OR REPLACE VIEW ft_dns_names AS
SELECT a.data AS ip, d.qname AS name, d.ts_answer AS valid_from,
       d.ts_answer + to_seconds(a.ttl::BIGINT) AS valid_to
FROM (SELECT qname, ts_answer, unnest(answers) AS a FROM dns WHERE rcode = 0 AND ts_answer IS NOT NULL) d
WHERE a.type IN ('A', 'AAAA');

CREATE OR REPLACE VIEW ft_conn_pairs AS
SELECT c.node AS client_node, c.conn_id AS client_conn_id, s.node AS server_node, s.conn_id AS server_conn_id,
       s.server_ip AS server_pod_ip, s.server_port AS server_pod_port
FROM connections c JOIN connections s
  ON c.role = 'client' AND s.role = 'server'
 AND c.client_ip = s.client_ip AND c.client_port = s.client_port
 AND s.ts_start >= c.ts_start - INTERVAL 5 SECOND
 AND s.ts_start <= coalesce(c.ts_end, {FOREVER});

-- One row per HTTP exchange: the client side when it was recorded, else the server side.
-- `server_ip` is the pod when the server end was recorded too; `seen_server_ip` is what the
-- client addressed (a ClusterIP behind a Service).
CREATE OR REPLACE VIEW ft_http_x AS
SELECT h.ts_request AS ts, h.client_ip, coalesce(p.server_pod_ip, h.server_ip) AS server_ip, h.server_ip AS seen_server_ip,
       h.method, h.path, h.status, h.latency_ns, h.request_bytes, h.response_bytes, h.side, h.node
FROM http h LEFT JOIN ft_conn_pairs p ON h.node = p.client_node AND h.conn_id = p.client_conn_id
WHERE h.side = 'client'
UNION ALL
SELECT h.ts_request, h.client_ip, h.server_ip, h.server_ip, h.method, h.path, h.status, h.latency_ns,
       h.request_bytes, h.response_bytes, h.side, h.node
FROM http h
WHERE h.side = 'server'
  AND NOT EXISTS (SELECT 1 FROM ft_conn_pairs p WHERE p.server_node = h.node AND p.server_conn_id = h.conn_id);

-- One row per TCP connection, de-duplicated the same way; bytes are payload client->server and back.
CREATE OR REPLACE VIEW ft_conn_x AS
SELECT c.ts_start AS ts, c.client_ip, coalesce(p.server_pod_ip, c.server_ip) AS server_ip, c.server_ip AS seen_server_ip,
       c.bytes_sent AS bytes_c2s, c.bytes_received AS bytes_s2c, c.close_state, c.connect_latency_ns, c.srtt_us, c.node
FROM connections c LEFT JOIN ft_conn_pairs p ON c.node = p.client_node AND c.conn_id = p.client_conn_id
WHERE c.role = 'client'
UNION ALL
SELECT s.ts_start, s.client_ip, s.server_ip, s.server_ip, s.bytes_received, s.bytes_sent, s.close_state, NULL, s.srtt_us, s.node
FROM connections s
WHERE s.role = 'server'
  AND NOT EXISTS (SELECT 1 FROM ft_conn_pairs p WHERE p.server_node = s.node AND p.server_conn_id = s.conn_id);

"""


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    """Create the enrichment views on a tape's connection (idempotent)."""
    con.execute(VIEWS)


def resolve_sql(source: str, ip: str, ts: str, prefix: str) -> tuple[str, str]:
    """Return (joins, columns) naming `source.ip` at `source.ts` with columns `{prefix}_*`.

    joins: ASOF LEFT JOINs to append after `FROM source`;
    columns: the select list of `{prefix}_kind, _namespace, _pod, _workload_kind, _workload,
    _service, _node, _zone, _region, _dns`.
    """
    o, n, d = f"{prefix}_o", f"{prefix}_n", f"{prefix}_d"
    joins = f"""
    ASOF LEFT JOIN ft_ip_owner {o} ON {source}.{ip} = {o}.ip AND {source}.{ts} >= {o}.valid_from
    ASOF LEFT JOIN ft_nodes {n} ON {o}.node = {n}.node AND {source}.{ts} >= {n}.valid_from
    ASOF LEFT JOIN ft_dns_names {d} ON {source}.{ip} = {d}.ip AND {source}.{ts} >= {d}.valid_from
    """
    live = f"{source}.{ts} < {o}.valid_to"
    cols = f"""
    CASE WHEN {live} THEN {o}.kind
         WHEN {source}.{ts} < {d}.valid_to THEN 'external'
         WHEN {_is_private(f"{source}.{ip}")} THEN 'unknown' ELSE 'external' END AS {prefix}_kind,
    CASE WHEN {live} THEN {o}.namespace END AS {prefix}_namespace,
    CASE WHEN {live} THEN {o}.pod END AS {prefix}_pod,
    CASE WHEN {live} THEN {o}.workload_kind END AS {prefix}_workload_kind,
    CASE WHEN {live} THEN {o}.workload END AS {prefix}_workload,
    CASE WHEN {live} THEN {o}.service END AS {prefix}_service,
    CASE WHEN {live} THEN {o}.node END AS {prefix}_node,
    CASE WHEN {live} AND {source}.{ts} < {n}.valid_to THEN {n}.zone END AS {prefix}_zone,
    CASE WHEN {live} AND {source}.{ts} < {n}.valid_to THEN {n}.region END AS {prefix}_region,
    CASE WHEN NOT coalesce({live}, false) AND {source}.{ts} < {d}.valid_to THEN {d}.name END AS {prefix}_dns"""
    return joins, cols


def _is_private(ip: str) -> str:
    """SQL: the IP is in a private, CGNAT, benchmarking, link-local or ULA range (not internet)."""
    return (
        f"(regexp_matches({ip}, '^(10\\.|192\\.168\\.|172\\.(1[6-9]|2[0-9]|3[01])\\.|100\\.(6[4-9]|[7-9][0-9]|1[01][0-9]|12[0-7])\\.|198\\.1[89]\\.|169\\.254\\.|127\\.)')"
        f" OR regexp_matches(lower({ip}), '^(f[cd][0-9a-f]{{2}}:|fe80:|::1$)'))"
    )


GRANULARITIES = ("pod", "workload", "service", "namespace", "node", "zone")


def name_sql(prefix: str, ip: str, by: str) -> str:
    """SQL naming the endpoint `{prefix}_*` at granularity `by` (one of GRANULARITIES)."""
    p = prefix
    ext = f"'external:' || coalesce({p}_dns, {ip})"
    unknown = f"'unknown:' || {ip}"
    node = f"'node:' || {p}_node"
    svc = f"'svc:' || {p}_namespace || '/' || {p}_service"
    by_kind = {
        "pod": f"{p}_namespace || '/' || {p}_pod",
        "workload": f"{p}_namespace || '/' || {p}_workload",
        "service": f"{p}_namespace || '/' || {p}_workload",
        "namespace": f"{p}_namespace",
        "node": f"{p}_node",
        "zone": f"coalesce({p}_zone, 'zone?')",
    }[by]
    node_as = {"node": f"{p}_node", "zone": f"coalesce({p}_zone, 'zone?')"}.get(by, node)
    svc_as = {"namespace": f"{p}_namespace", "node": "'service'", "zone": "'service'"}.get(by, svc)
    return f"""CASE {p}_kind WHEN 'pod' THEN {by_kind} WHEN 'node' THEN {node_as} WHEN 'service' THEN {svc_as}
        WHEN 'external' THEN {ext} ELSE {unknown} END"""
