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
- `ft_cuts`       (ip, t): the instants at which an IP's name (NAME_FIELDS) really changes; the
                  aggregates in analyze.sums key rows by them (ip_sums_sql, segment_sums_sql).
- `enriched_http`, `enriched_connections`, `enriched_flows`, `enriched_dns`: those rows with
                  `client_*`/`server_*` (or `src_*`/`dst_*`) columns: kind, namespace, pod,
                  workload_kind, workload, service, node, zone, region, dns, labels.

The time-aware join: an ASOF join picks, per IP, the latest version that started at or before
ts, which counts only if ts is before its end. IPs are reused (a pod IP can belong to three
pods in an hour), so a plain IP lookup is never used.
"""

from __future__ import annotations

import duckdb

MINUTE_NS = 60_000_000_000

_FAR = 9_000_000_000_000_000_000  # epoch ns in the year 2255: "no cut in this bucket"

FOREVER = "TIMESTAMPTZ '2262-01-01 00:00:00+00'"  # the end of TIMESTAMP_NS: "still valid"

DEFAULT_LABELS = ("app", "app.kubernetes.io/name", "app.kubernetes.io/component", "team", "version", "tier")
"""Pod labels kept by enrichment; others are dropped to bound cardinality."""

GRANULARITIES = ("pod", "workload", "service", "namespace", "node", "zone")

ENDPOINT_FIELDS = ("kind", "namespace", "pod", "workload_kind", "workload", "service", "node", "zone", "region", "dns", "labels")

NAME_FIELDS = ENDPOINT_FIELDS[:-1]
"""The fields that name an endpoint in reports (labels aside)."""

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


def _k_sql(src: str, endpoints: list[tuple[str, str]]) -> tuple[str, str]:
    """(joins, columns) giving each endpoint's key `__k<i>` for rows of `src` with `__t` (epoch ns)
    and `__m` (minute)."""
    joins = "\n".join(f"    LEFT JOIN ft_change_minutes __c{i} ON __c{i}.ip = {src}.{ip} AND __c{i}.m = {src}.__m" for i, (_, ip) in enumerate(endpoints))
    joins += f"\n    LEFT JOIN ft_node_change_minutes __nc ON __nc.m = {src}.__m"
    # Keys are epoch nanoseconds and minutes integers: time_bucket() on a TIMESTAMPTZ goes through
    # the ICU calendar and cost as much as the scan itself on 50M flows.
    cols = ", ".join(
        # the last change at or before ts within the minute (for this IP, or of any node), else the minute
        f"CASE WHEN __c{i}.ip IS NULL AND __nc.m IS NULL THEN {src}.__m * {MINUTE_NS} ELSE greatest({src}.__m * {MINUTE_NS}, "
        f"coalesce(list_max(list_filter(__c{i}.points, lambda x: x <= {src}.__t)), 0), "
        f"coalesce(list_max(list_filter(__nc.points, lambda x: x <= {src}.__t)), 0)) END AS __k{i}"
        for i in range(len(endpoints))
    )
    return joins, cols


def _named_sql(src: str, endpoints: list[tuple[str, str]], fields: tuple[str, ...], exclude: str) -> str:
    """CTE res and the final SELECT: each distinct (ip, key) of `src` resolved once, joined back."""
    return f"""res AS ({key_names_sql(src, endpoints, fields)})
{with_names_sql(src, "res", endpoints, fields, exclude)}"""


def keyed_sql(base: str, ts: str, endpoints: list[tuple[str, str]], fields: tuple[str, ...] = ENDPOINT_FIELDS) -> str:
    """SELECT every row of `base` with each endpoint `(prefix, ip column)` resolved at `ts`.

    Ownership changes rarely, so instead of joining every row against the versions, rows are
    keyed by (ip, k) and each distinct key is resolved once, then joined back by hash. k is the
    start of the row's minute, or, when that minute holds changes for that IP (a version
    starting or ending, a DNS name appearing or expiring, any node's zone changing), the last
    such change at or before the row's ts: nothing changes between k and ts, so the result is
    exactly the per-row time-aware join, with one key per change instead of one per row.
    `fields` picks the resolved columns (labels are maps: costly to carry when not needed).
    """
    joins, k_cols = _k_sql("b", endpoints)
    ks = ", ".join(f"__k{i}" for i in range(len(endpoints)))
    return f"""
WITH b AS (SELECT *, epoch_ns({ts}) AS __t, epoch_ns({ts}) // {MINUTE_NS} AS __m FROM {base}),
b2 AS (
    SELECT b.*, {k_cols}
    FROM b
{joins}
),
{_named_sql("b2", endpoints, fields, "__t, __m, " + ks)}"""


def ip_keyed_sums_sql(base: str, ts: str, endpoints: list[tuple[str, str]], group: str, aggregates: str) -> str:
    """The rows of `base` summed per (`group`, endpoint ips, key `__k<i>` of each ip) with
    `aggregates`: one hash probe per row and endpoint. key_names_sql names the keys.

    An IP's key is its last cut (ft_cuts: an instant its name changed) at or before ts, 0 when it
    has none: nothing renames it between its key and ts. Rows after the IP's last cut (most: pods
    outlive a tape) take it without searching its cut list.
    """
    ips = ", ".join(ip for _, ip in endpoints)
    joins = "\n".join(f"    LEFT JOIN ft_ip_cuts __c{i} ON __c{i}.ip = b.{ip}" for i, (_, ip) in enumerate(endpoints))
    k_cols = ", ".join(
        f"CASE WHEN __c{i}.ip IS NULL THEN 0 WHEN __c{i}.last <= b.__t THEN __c{i}.last "
        f"ELSE coalesce(list_max(list_filter(__c{i}.cuts, lambda x: x <= b.__t)), 0) END AS __k{i}"
        for i in range(len(endpoints))
    )
    return f"""
WITH b AS (SELECT *, epoch_ns({ts}) AS __t FROM {base})
SELECT {group}, {ips}, {k_cols}, {aggregates}
FROM b
{joins}
GROUP BY ALL"""


def key_names_sql(src: str, endpoints: list[tuple[str, str]], fields: tuple[str, ...] = NAME_FIELDS) -> str:
    """(ip, k, r_<field> for `fields`): each distinct (ip, key) of `src` (an endpoint's ip column
    and its key `__k<i>`, as ip_keyed_sums_sql gives) resolved once."""
    keys = " UNION ".join(f"SELECT DISTINCT {ip} AS ip, __k{i} AS k FROM {src}" for i, (_, ip) in enumerate(endpoints))
    r_joins, r_cols = resolve_sql("keys", "ip", "kt", "r")
    named = ", ".join(f"r_{f}" for f in fields)
    return f"""SELECT ip, k, {named} FROM (
WITH keys AS (SELECT ip, k, make_timestamp_ns(k)::TIMESTAMPTZ_NS AS kt FROM ({keys}))
SELECT keys.ip, keys.k, {r_cols} FROM keys {r_joins})"""


def with_names_sql(src: str, names: str, endpoints: list[tuple[str, str]], fields: tuple[str, ...] = NAME_FIELDS,
                   exclude: str | None = None) -> str:
    """The rows of `src` with each endpoint's `<prefix>_<field>` columns from `names`
    (key_names_sql), less `exclude` (default: the keys)."""
    cols = ", ".join(f"n{i}.r_{f} AS {prefix}_{f}" for i, (prefix, _) in enumerate(endpoints) for f in fields)
    exclude = exclude or ", ".join(f"__k{i}" for i in range(len(endpoints)))
    joins = "\n".join(f"LEFT JOIN {names} n{i} ON n{i}.ip = s.{ip} AND n{i}.k = s.__k{i}" for i, (_, ip) in enumerate(endpoints))
    return f"SELECT s.* EXCLUDE ({exclude}), {cols}\nFROM {src} s\n{joins}"


def ip_sums_sql(base: str, ts: str, endpoints: list[tuple[str, str]], group: str, aggregates: str) -> str:
    """ip_keyed_sums_sql's rows with their names, in one statement (see analyze.sums for the
    stored form)."""
    return f"""
WITH g AS MATERIALIZED ({ip_keyed_sums_sql(base, ts, endpoints, group, aggregates)}),
res AS ({key_names_sql("g", endpoints)})
{with_names_sql("g", "res", endpoints)}"""


TREE_CUTS = 2048
"""Up to this many cuts, a row finds its segment by comparisons (segment_start_sql)."""


def segment_start_sql(con: duckdb.DuckDBPyConnection, start_ns: int, end_ns: int) -> tuple[str, str]:
    """(join, expression) giving `__k`, the start of the segment of a row of `b` with epoch-ns
    `b.__t`: the last cut (ft_cuts, any IP) at or before it, 0 if none.

    With up to TREE_CUTS cuts the expression is a binary search written as nested CASEs over
    constants, no join: on 50M flows with 325 cuts, 0.3 s less than probing a bucket table per
    row. With more, rows probe the buckets of cut_buckets over [start_ns, end_ns] (rows outside
    it key by their own ts: exact, if costly; a tape's rows are inside its window)."""
    cuts = [r[0] for r in con.execute("SELECT DISTINCT t FROM ft_cuts ORDER BY t").fetchall()]
    if len(cuts) > TREE_CUTS:
        width = cut_buckets(con, start_ns, end_ns)
        join = f"LEFT JOIN ft_cut_buckets __cb ON __cb.b = b.__t // {width}"
        key = ("CASE WHEN __cb.b IS NULL THEN b.__t "
               "WHEN __cb.cuts IS NOT NULL THEN greatest(__cb.p, coalesce(list_max(list_filter(__cb.cuts, lambda x: x <= b.__t)), 0)) "
               "WHEN b.__t >= __cb.c THEN __cb.c ELSE __cb.p END")
        return join, key

    def search(lo: int, hi: int, before: int) -> str:  # the key of rows in [cuts[lo-1], cuts[hi])
        if lo >= hi:
            return str(before)
        mid = (lo + hi) // 2
        return f"CASE WHEN b.__t < {cuts[mid]} THEN {search(lo, mid, before)} ELSE {search(mid + 1, hi, cuts[mid])} END"

    return "", search(0, len(cuts), 0)


def cut_buckets(con: duckdb.DuckDBPyConnection, start_ns: int, end_ns: int) -> int:
    """Create ft_cut_buckets over [start_ns, end_ns] and return its bucket width in ns.

    One row per bucket b (its start is b * width): `p` the last cut (ft_cuts, any IP) at or
    before the bucket's start (0 if none), `c` the one cut inside it (a far future if none),
    or `cuts` when it holds several. Buckets are 100 ms (wider on long tapes: at most ~1M
    buckets): the table stays in cache (10 ms buckets probed 8 % slower on 50M flows), and a
    bucket rarely holds more than one cut.
    """
    width = max(100_000_000, (end_ns - start_ns) // 1_000_000 + 1)
    lo, hi = start_ns // width, end_ns // width
    con.execute(f"""
CREATE OR REPLACE TEMP TABLE ft_cut_buckets AS
WITH cuts AS (SELECT DISTINCT t FROM ft_cuts),
inside AS (SELECT t // {width} AS b, list(t ORDER BY t) AS cuts FROM cuts WHERE t // {width} BETWEEN {lo} AND {hi} GROUP BY ALL)
SELECT r.b, coalesce(prev.t, 0) AS p,
       CASE WHEN i.cuts IS NULL THEN {_FAR} WHEN len(i.cuts) = 1 THEN i.cuts[1] END AS c,
       CASE WHEN len(i.cuts) > 1 THEN i.cuts END AS cuts
FROM range({lo}, {hi} + 1) r(b)
LEFT JOIN inside i ON i.b = r.b
ASOF LEFT JOIN cuts prev ON r.b * {width} >= prev.t""")
    return width


def segment_sums_sql(base: str, ts: str, endpoints: list[tuple[str, str]], group: str, aggregates: str, segment: tuple[str, str]) -> str:
    """The rows of `base` summed per (`group`, endpoint ips, segment) with `aggregates`, each endpoint
    resolved (NAME_FIELDS) at the segment's start: exact, with no per-IP lookup per row.

    A segment is an interval between two consecutive cuts of any IP (ft_cuts): no IP changes name
    inside one, so every row in it is named as at its start. `segment` is segment_start_sql's
    (join, key expression).
    """
    ips = ", ".join(ip for _, ip in endpoints)
    ks = ", ".join(f"__k AS __k{i}" for i in range(len(endpoints)))
    join, key = segment
    return f"""
WITH b AS (SELECT *, epoch_ns({ts}) AS __t FROM {base}),
g AS MATERIALIZED (
    SELECT {group}, {ips}, {key} AS __k, {aggregates}
    FROM b {join}
    GROUP BY ALL
),
g2 AS (SELECT *, {ks} FROM g),
{_named_sql("g2", endpoints, NAME_FIELDS, "__k, " + ", ".join(f"__k{i}" for i in range(len(endpoints))))}"""


_HTTP_X = """
-- The client row of an exchange when it was recorded, else the server row: one scan, the
-- server rows of paired connections dropped by a hash probe (a correlated NOT EXISTS cost 1.2 s
-- on 5.6M rows, a second scan of the table for the server side 0.8 s). The client side looks
-- up only the pairs that substitute a pod for a ClusterIP (nothing, when none do).
CREATE OR REPLACE TEMP VIEW ft_http_x AS
SELECT h.ts_request AS ts, h.client_ip, {server_ip} AS server_ip, h.server_ip AS seen_server_ip,
       h.server_port, h.method, h.host, h.path, h.status, h.latency_ns, h.request_bytes, h.response_bytes, h.side, h.tls, h.node,
       -- the rest of the row, for readers that describe each exchange (analyze.export's spans);
       -- unread columns cost nothing (projection pushdown)
       h.client_port, h.conn_id, h.ts_response, h.pid, h.comm, h.http_version, h.traceparent, h.user_agent
FROM http h
LEFT JOIN ft_paired_servers sp ON sp.server_node = h.node AND sp.server_conn_id = h.conn_id {subst_join}
WHERE h.side = 'client' OR (h.side = 'server' AND sp.server_conn_id IS NULL);
"""


_FLOW_REAL = f"""
-- a flow addressed to a ClusterIP (or answered from one) takes the pod behind it when the
-- tape paired the connection's two ends
CREATE OR REPLACE TEMP VIEW ft_flow_real AS
SELECT f.*,
       coalesce(fwd.server_pod_ip, f.dst_ip) AS dst_real,
       coalesce(rev.server_pod_ip, f.src_ip) AS src_real
FROM flows f
LEFT JOIN ft_conn_subst fwd
  ON f.l4 = 'tcp' AND f.src_ip = fwd.client_ip AND f.src_port = fwd.client_port
 AND f.dst_ip = fwd.seen_server_ip AND f.dst_port = fwd.seen_server_port
 AND f.ts_start >= fwd.ts_start - INTERVAL 5 SECOND AND f.ts_start <= coalesce(fwd.ts_end, {FOREVER})
LEFT JOIN ft_conn_subst rev
  ON f.l4 = 'tcp' AND f.dst_ip = rev.client_ip AND f.dst_port = rev.client_port
 AND f.src_ip = rev.seen_server_ip AND f.src_port = rev.seen_server_port
 AND f.ts_start >= rev.ts_start - INTERVAL 5 SECOND AND f.ts_start <= coalesce(rev.ts_end, {FOREVER});"""

# With socket-level load balancing (or no Services) nothing is addressed to a ClusterIP: skip the joins.
_FLOW_PLAIN = """
CREATE OR REPLACE TEMP VIEW ft_flow_real AS SELECT f.*, f.dst_ip AS dst_real, f.src_ip AS src_real FROM flows f;"""


def named_exchanges_sql(base: str, substitutions: bool) -> str:
    """Every row of `base` (rows shaped like ft_http_x or ft_conn_x, by `ts`) with its client,
    server and addressed server (`seen_*`) resolved at that time: what enriched_http and
    enriched_connections hold. Without `substitutions` (nobody addressed a ClusterIP) what the
    client saw is the server."""
    if substitutions:
        return keyed_sql(base, "ts", [("client", "client_ip"), ("server", "server_ip"), ("seen", "seen_server_ip")])
    seen = ", ".join(f"server_{f} AS seen_{f}" for f in ENDPOINT_FIELDS)
    return f"SELECT *, {seen} FROM ({keyed_sql(base, 'ts', [('client', 'client_ip'), ('server', 'server_ip')])})"


def has_substitutions(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether any connection of the tape addressed a ClusterIP and was paired to its pod."""
    return con.execute("SELECT count(*) FROM ft_conn_subst").fetchall()[0][0] > 0


def enriched_dns_sql(base: str = "ft_dns_x") -> str:
    """The rows of enriched_dns from `base`, rows shaped like ft_dns_x (analyze.sums passes its
    materialised copy: ft_dns_x reads the dns table twice to pair each exchange's two sightings)."""
    return keyed_sql(base, "ts_query", [("client", "client_ip")])


def _enriched_views(substitutions: bool = True) -> str:
    http, conns = named_exchanges_sql("ft_http_x", substitutions), named_exchanges_sql("ft_conn_x", substitutions)
    dns = enriched_dns_sql()
    flows = keyed_sql("ft_flow_real", "ts_start", [("src", "src_real"), ("dst", "dst_real")])
    flow_real = _FLOW_REAL if substitutions else _FLOW_PLAIN
    subst_join = "LEFT JOIN ft_conn_subst p ON h.side = 'client' AND h.node = p.client_node AND h.conn_id = p.client_conn_id" if substitutions else ""
    server_ip = "coalesce(p.server_pod_ip, h.server_ip)" if substitutions else "h.server_ip"
    http_x = _HTTP_X.format(subst_join=subst_join, server_ip=server_ip)
    return f"""
{http_x}
CREATE OR REPLACE TEMP VIEW enriched_http AS {http};

CREATE OR REPLACE TEMP VIEW enriched_connections AS {conns};

CREATE OR REPLACE TEMP VIEW enriched_dns AS {dns};

{flow_real}

CREATE OR REPLACE TEMP VIEW enriched_flows AS
SELECT * FROM ({flows})
-- each packet once: at the source's node when that node was recorded, else where it was seen
WHERE node = src_node OR src_node IS NULL OR src_node NOT IN (SELECT node FROM ft_flow_nodes);
"""


_STATE = """
CREATE OR REPLACE TEMP TABLE ft_change_minutes AS
SELECT ip, epoch_ns(t) // {minute} AS m, list(DISTINCT epoch_ns(t)) AS points FROM (
    SELECT ip, valid_from AS t FROM ft_ip_owner UNION ALL SELECT ip, valid_to FROM ft_ip_owner
    UNION ALL SELECT ip, valid_from FROM ft_dns_names_x UNION ALL SELECT ip, valid_to FROM ft_dns_names_x
) WHERE t < {forever} GROUP BY ALL;

CREATE OR REPLACE TEMP TABLE ft_node_change_minutes AS
SELECT epoch_ns(t) // {minute} AS m, list(DISTINCT epoch_ns(t)) AS points FROM (
    SELECT valid_from AS t FROM ft_nodes UNION ALL SELECT valid_to FROM ft_nodes
) WHERE t < {forever} GROUP BY ALL;

CREATE OR REPLACE TEMP TABLE ft_conn_subst AS SELECT * FROM ft_conn_pairs WHERE seen_server_ip <> server_pod_ip;

CREATE OR REPLACE TEMP TABLE ft_paired_servers AS SELECT DISTINCT server_node, server_conn_id FROM ft_conn_pairs;

CREATE OR REPLACE TEMP TABLE ft_flow_nodes AS SELECT DISTINCT node FROM flows;
"""

def _cuts_sql() -> str:
    """ft_cuts (ip, t epoch ns): the instants at which the name of an IP (NAME_FIELDS) changes.

    Candidates are the IP's change points and the changes of every node that one of its owners
    ran on (a pod's zone is its node's); a candidate is a cut when the IP resolves differently at
    t and at t - 1 ns.
    Most change points are not cuts (a DNS answer for an IP that a pod or Service owns, a relabel),
    and between two cuts every row of that IP is named alike: the aggregates in analyze.sums key
    rows by cut instead of looking each row up.
    """
    j_at, c_at = resolve_sql("q", "ip", "at", "a")
    j_before, c_before = resolve_sql("q", "ip", "before", "b")
    differ = " OR ".join(f"a.a_{f} IS DISTINCT FROM b.b_{f}" for f in NAME_FIELDS)
    return f"""
CREATE OR REPLACE TEMP TABLE ft_cuts AS
WITH p AS (
    SELECT DISTINCT ip, t FROM (
        SELECT ip, unnest(points) AS t FROM ft_change_minutes
        UNION ALL
        -- an IP's zone and region are those of its owner's node: only those nodes' changes
        SELECT o.ip, epoch_ns(n.t) AS t FROM (SELECT DISTINCT ip, node FROM ft_ip_owner WHERE node IS NOT NULL) o
        JOIN (SELECT node, valid_from AS t FROM ft_nodes UNION ALL SELECT node, valid_to FROM ft_nodes) n ON n.node = o.node
        WHERE n.t < {FOREVER}
    )
),
q AS (SELECT ip, t, make_timestamp_ns(t)::TIMESTAMPTZ_NS AS at, make_timestamp_ns(t - 1)::TIMESTAMPTZ_NS AS before FROM p),
a AS (SELECT q.ip, q.t, {c_at} FROM q {j_at}),
b AS (SELECT q.ip, q.t, {c_before} FROM q {j_before})
SELECT a.ip, a.t FROM a JOIN b ON a.ip = b.ip AND a.t = b.t WHERE {differ};

CREATE OR REPLACE TEMP TABLE ft_ip_cuts AS
SELECT ip, max(t) AS last, list(t ORDER BY t) AS cuts FROM ft_cuts GROUP BY ip"""


_MATERIALISED = ("ft_ip_owner", "ft_nodes", "ft_dns_names", "ft_dns_names_x", "ft_conn_pairs")


def create_views(con: duckdb.DuckDBPyConnection, labels: tuple[str, ...] = DEFAULT_LABELS) -> None:
    """Create the enrichment views on a tape's connection.

    The small state derived from Kubernetes versions, DNS answers and connection pairs is
    materialised once per connection (a tape does not change while it is open); the row-level
    views stay lazy.
    """
    ready = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'ft_ready'").fetchall()[0][0]
    if ready and con.execute("SELECT labels FROM ft_ready").fetchall()[0][0] == list(labels):
        return
    con.execute(_base_views(labels))
    for name in _MATERIALISED:  # in dependency order: each reads the previous ones' tables
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name}__m AS SELECT * FROM {name}")
        con.execute(f"DROP VIEW {name}")
        con.execute(f"CREATE TEMP VIEW {name} AS SELECT * FROM {name}__m")
    con.execute(_STATE.format(forever=FOREVER, minute=MINUTE_NS))
    con.execute(_cuts_sql())
    substitutions = has_substitutions(con)
    con.execute(_enriched_views(substitutions))
    con.execute("CREATE OR REPLACE TEMP TABLE ft_ready AS SELECT ?::VARCHAR[] AS labels", [list(labels)])


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
