"""Enrichment: every endpoint (ip at ts) named as the cluster named it at that moment.

All SQL of the enrichment lives in this file. Views created on a Tape's DuckDB connection:

- `ft_ip_owner`   ip -> what owned it over [valid_from, valid_to): a pod (not host-network),
                  a node (internal/external IPs; host-network pods resolve here) or a Service
                  ClusterIP. Pod labels are kept only for the label allow-list.
- `ft_nodes`      node name -> zone, region over time.
- `ft_host_own`, `ft_local_addrs`, `ft_etc_hosts`  names without Kubernetes, from the manifest's
                  host facts (capture.live.host) and the rows: a recorded host's own addresses;
                  the addresses on a host (its other network namespaces', and the local ends of
                  its connections); each host's /etc/hosts. An address two hosts claim names neither.
- `ft_proc_keys`  the local processes (node, comm, cgroup -> container, runtime, systemd unit)
                  seen at addresses Kubernetes never owned in the tape, numbered `pkey`;
                  `ft_conn_pkeys` gives each connection row (node, conn_id) the pkey of its
                  client and server (its own row's, and the paired row's), `ft_conn_pkeys4` the
                  same per 4-tuple for flows, `ft_dns_pkeys` per DNS client process.
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
                  workload_kind, workload, service, node, zone, region, dns, host, local_node,
                  hosts_name, labels (the address at that time) and process, container,
                  runtime, unit, process_node (the process at that end of that row).

Names, by priority: Kubernetes ownership (pod, node, Service) > a local process (comm; in a
container `runtime:container/comm`) > the DNS name the tape saw for the address (any address,
private ranges included) > the recording host's /etc/hosts > the host the address belongs to >
the address. A process is known for the ends the recorder saw locally (its rows' pid/comm); an
address is a host's when it is one of that host's own addresses (manifest) or a local endpoint
of its connections (a container's, a namespace's).

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

GRANULARITIES = ("pod", "workload", "service", "namespace", "node", "zone", "process", "host")

ENDPOINT_FIELDS = ("kind", "namespace", "pod", "workload_kind", "workload", "service", "node", "zone", "region", "dns",
                   "host", "local_node", "hosts_name", "labels")
"""What an address resolves to at a time (resolve_sql)."""

NAME_FIELDS = ENDPOINT_FIELDS[:-1]
"""The fields that name an address in reports (labels aside)."""

PROCESS_FIELDS = ("process", "container", "runtime", "unit", "process_node")
"""What the row says about the process at one end (with_names_sql, from ft_proc_keys)."""

CONTAINER_RUNTIMES = ("docker", "podman", "containerd", "cri-o", "lxc", "machine", "container")
"""Runtimes whose processes are named `runtime:container/comm` (a systemd service keeps its comm)."""

DNS_MIN_VALID_S = 10
"""A DNS answer names its address for at least this long, whatever its TTL: a client connects
right after its lookup, and local resolvers answer with TTL 0 (dnsmasq's local-ttl default)."""

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
       d.ts_answer + to_seconds(greatest(a.ttl::BIGINT, {DNS_MIN_VALID_S})) AS valid_to
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

"""


def _conn_x_sql(processes: bool) -> str:
    """ft_conn_x: one row per TCP connection (the client row when recorded, else the server
    row), with the pkey of each end's process (ft_conn_pkeys) when the tape has any."""
    pk_c = "LEFT JOIN ft_conn_pkeys pk ON pk.node = c.node AND pk.conn_id = c.conn_id" if processes else ""
    pk_s = "LEFT JOIN ft_conn_pkeys pk ON pk.node = s.node AND pk.conn_id = s.conn_id" if processes else ""
    keys = "pk.client_pkey, pk.server_pkey" if processes else "NULL::INTEGER AS client_pkey, NULL::INTEGER AS server_pkey"
    keys2 = "pk.client_pkey, pk.server_pkey" if processes else "NULL, NULL"
    return f"""
CREATE OR REPLACE TEMP VIEW ft_conn_x AS
SELECT c.ts_start AS ts, c.client_ip, coalesce(p.server_pod_ip, c.server_ip) AS server_ip, c.server_ip AS seen_server_ip,
       c.server_port, c.bytes_sent AS bytes_c2s, c.bytes_received AS bytes_s2c, c.close_state, c.connect_latency_ns,
       c.srtt_us, c.retransmits, c.node, {keys}
FROM connections c LEFT JOIN ft_conn_pairs p ON c.node = p.client_node AND c.conn_id = p.client_conn_id {pk_c}
WHERE c.role = 'client'
UNION ALL
SELECT s.ts_start, s.client_ip, s.server_ip, s.server_ip, s.server_port, s.bytes_received, s.bytes_sent, s.close_state,
       NULL, s.srtt_us, s.retransmits, s.node, {keys2}
FROM connections s {pk_s}
WHERE s.role = 'server'
  AND NOT EXISTS (SELECT 1 FROM ft_conn_pairs p WHERE p.server_node = s.node AND p.server_conn_id = s.conn_id);
"""


def resolve_sql(source: str, ip: str, ts: str, prefix: str) -> tuple[str, str]:
    """Return (joins, columns) naming `source.ip` at `source.ts` with columns `{prefix}_<field>`.

    joins: ASOF LEFT JOINs to append after `FROM <table> <source>`; columns: the select list of
    ENDPOINT_FIELDS, each prefixed. An address Kubernetes owned at ts is what owned it; else it
    is a recorded host's (`host`: one of its own addresses, `local_node`: a local endpoint of its
    connections), or named by DNS, or by /etc/hosts (`hosts_name`), or external (a public
    address), or unknown (a private one).
    """
    o, n, d = f"{prefix}__o", f"{prefix}__n", f"{prefix}__d"
    h, loc, eh = f"{prefix}__h", f"{prefix}__l", f"{prefix}__e"
    joins = f"""
    ASOF LEFT JOIN ft_ip_owner {o} ON {source}.{ip} = {o}.ip AND {source}.{ts} >= {o}.valid_from
    ASOF LEFT JOIN ft_nodes {n} ON {o}.node = {n}.node AND {source}.{ts} >= {n}.valid_from
    ASOF LEFT JOIN ft_dns_names_x {d} ON {source}.{ip} = {d}.ip AND {source}.{ts} >= {d}.valid_from
    LEFT JOIN ft_host_own {h} ON {source}.{ip} = {h}.ip
    LEFT JOIN ft_local_addrs {loc} ON {source}.{ip} = {loc}.ip
    LEFT JOIN ft_etc_hosts {eh} ON {source}.{ip} = {eh}.ip"""
    live = f"coalesce({source}.{ts} < {o}.valid_to, false)"
    named = f"coalesce({source}.{ts} < {d}.valid_to, false)"
    private = f"(regexp_matches({source}.{ip}, '{_PRIVATE_V4}') OR regexp_matches(lower({source}.{ip}), '{_PRIVATE_V6}'))"
    zoned = f"{live} AND coalesce({source}.{ts} < {n}.valid_to, false)"
    cols = f"""
    CASE WHEN {live} THEN {o}.kind WHEN {h}.host IS NOT NULL OR {loc}.host IS NOT NULL THEN 'host'
         WHEN {named} OR {eh}.name IS NOT NULL THEN 'external' WHEN {private} THEN 'unknown' ELSE 'external' END AS {prefix}_kind,
    CASE WHEN {live} THEN {o}.namespace END AS {prefix}_namespace,
    CASE WHEN {live} THEN {o}.pod END AS {prefix}_pod,
    CASE WHEN {live} THEN {o}.workload_kind END AS {prefix}_workload_kind,
    CASE WHEN {live} THEN {o}.workload END AS {prefix}_workload,
    CASE WHEN {live} THEN {o}.service END AS {prefix}_service,
    CASE WHEN {live} THEN {o}.node END AS {prefix}_node,
    CASE WHEN {zoned} THEN {n}.zone END AS {prefix}_zone,
    CASE WHEN {zoned} THEN {n}.region END AS {prefix}_region,
    CASE WHEN NOT {live} AND {named} THEN {d}.name END AS {prefix}_dns,
    CASE WHEN NOT {live} THEN {h}.host END AS {prefix}_host,
    CASE WHEN NOT {live} THEN {loc}.host END AS {prefix}_local_node,
    CASE WHEN NOT {live} THEN {eh}.name END AS {prefix}_hosts_name,
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


Pkeys = dict[str, str]
"""Endpoint prefix -> the column of its process key (ft_proc_keys.pkey) in the rows."""


def _named_sql(src: str, endpoints: list[tuple[str, str]], fields: tuple[str, ...], exclude: str, pkeys: Pkeys | None = None) -> str:
    """CTE res and the final SELECT: each distinct (ip, key) of `src` resolved once, joined back."""
    return f"""res AS ({key_names_sql(src, endpoints, fields)})
{with_names_sql(src, "res", endpoints, fields, exclude, pkeys)}"""


def keyed_sql(base: str, ts: str, endpoints: list[tuple[str, str]], fields: tuple[str, ...] = ENDPOINT_FIELDS, pkeys: Pkeys | None = None) -> str:
    """SELECT every row of `base` with each endpoint `(prefix, ip column)` resolved at `ts`.

    Ownership changes rarely, so instead of joining every row against the versions, rows are
    keyed by (ip, k) and each distinct key is resolved once, then joined back by hash. k is the
    start of the row's minute, or, when that minute holds changes for that IP (a version
    starting or ending, a DNS name appearing or expiring, any node's zone changing), the last
    such change at or before the row's ts: nothing changes between k and ts, so the result is
    exactly the per-row time-aware join, with one key per change instead of one per row.
    `fields` picks the resolved columns (labels are maps: costly to carry when not needed);
    `pkeys` names the process key column of the endpoints that have one (with_names_sql).
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
{_named_sql("b2", endpoints, fields, "__t, __m, " + ks, pkeys)}"""


def ip_keyed_sums_sql(base: str, ts: str, endpoints: list[tuple[str, str]], group: str, aggregates: str) -> str:
    """The rows of `base` summed per (`group`, endpoint ips, key `__k<i>` of each ip) with
    `aggregates`: one hash probe per row and endpoint. key_names_sql names the keys.

    An IP's key is its last cut (ft_cuts: an instant its name changed) at or before ts, 0 when it
    has none: nothing renames it between its key and ts. Rows after the IP's last cut (most: pods
    outlive a tape) take it without searching its cut list.
    """
    ips = ", ".join(ip for _, ip in endpoints)
    joins, k_cols = cut_keys_sql("b", endpoints)
    return f"""
WITH b AS (SELECT *, epoch_ns({ts}) AS __t FROM {base})
SELECT {group}, {ips}, {k_cols}, {aggregates}
FROM b
{joins}
GROUP BY ALL"""


def cut_keys_sql(src: str, endpoints: list[tuple[str, str]]) -> tuple[str, str]:
    """(joins, columns) giving each endpoint's key `__k<i>` for rows of `src` with `__t`
    (epoch ns): the IP's last cut (ft_ip_cuts) at or before __t, 0 when it has none. Nothing
    renames the IP between its key and __t, so key_names_sql names each distinct (ip, key) once
    and every row with it is named as the per-row time-aware join would name it."""
    joins = "\n".join(f"    LEFT JOIN ft_ip_cuts __c{i} ON __c{i}.ip = {src}.{ip}" for i, (_, ip) in enumerate(endpoints))
    k_cols = ", ".join(
        f"CASE WHEN __c{i}.ip IS NULL THEN 0 WHEN __c{i}.last <= {src}.__t THEN __c{i}.last "
        f"ELSE coalesce(list_max(list_filter(__c{i}.cuts, lambda x: x <= {src}.__t)), 0) END AS __k{i}"
        for i in range(len(endpoints))
    )
    return joins, k_cols


def cut_keyed_sql(base: str, ts: str, endpoints: list[tuple[str, str]]) -> str:
    """Every row of `base` with `__t` (epoch ns of `ts`) and each endpoint's key `__k<i>`
    (cut_keys_sql), unnamed: for readers that carry one key per endpoint instead of its names
    (the exporter names each distinct (ip, key) once, key_names_sql)."""
    joins, k_cols = cut_keys_sql("b", endpoints)
    return f"""
WITH b AS (SELECT *, epoch_ns({ts}) AS __t FROM {base})
SELECT b.*, {k_cols}
FROM b
{joins}"""


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
                   exclude: str | None = None, pkeys: Pkeys | None = None) -> str:
    """The rows of `src` with each endpoint's `<prefix>_<field>` columns from `names`
    (key_names_sql) and its PROCESS_FIELDS from ft_proc_keys by the column `pkeys[prefix]`
    (NULL for an endpoint without one), less `exclude` (default: the keys)."""
    pkeys = pkeys or {}
    cols = ", ".join(f"n{i}.r_{f} AS {prefix}_{f}" for i, (prefix, _) in enumerate(endpoints) for f in fields)
    cols += ", " + ", ".join(process_columns_sql(f"pk{i}" if prefix in pkeys else None, prefix) for i, (prefix, _) in enumerate(endpoints))
    exclude = exclude or ", ".join(f"__k{i}" for i in range(len(endpoints)))
    joins = "\n".join(f"LEFT JOIN {names} n{i} ON n{i}.ip = s.{ip} AND n{i}.k = s.__k{i}" for i, (_, ip) in enumerate(endpoints))
    joins += "".join(f"\nLEFT JOIN ft_proc_keys pk{i} ON pk{i}.pkey = s.{pkeys[prefix]}" for i, (prefix, _) in enumerate(endpoints) if prefix in pkeys)
    return f"SELECT s.* EXCLUDE ({exclude}), {cols}\nFROM {src} s\n{joins}"


def process_columns_sql(alias: str | None, prefix: str) -> str:
    """PROCESS_FIELDS of `prefix` from the ft_proc_keys row `alias` (all NULL without one)."""
    source = {"process": "comm", "container": "container", "runtime": "runtime", "unit": "unit", "process_node": "node"}
    return ", ".join(f"{alias}.{source[f]} AS {prefix}_{f}" if alias else f"NULL::VARCHAR AS {prefix}_{f}" for f in PROCESS_FIELDS)


def ip_sums_sql(base: str, ts: str, endpoints: list[tuple[str, str]], group: str, aggregates: str, pkeys: Pkeys | None = None) -> str:
    """ip_keyed_sums_sql's rows with their names, in one statement (see analyze.sums for the
    stored form); `group` holds the process key columns of `pkeys`."""
    return f"""
WITH g AS MATERIALIZED ({ip_keyed_sums_sql(base, ts, endpoints, group, aggregates)}),
{ip_named_sql("g", endpoints, pkeys)}"""


def ip_named_sql(rows: str, endpoints: list[tuple[str, str]], pkeys: Pkeys | None = None) -> str:
    """CTE res and the final SELECT naming `rows` (ip_keyed_sums_sql's rows, a table or CTE)."""
    return f"""res AS ({key_names_sql(rows, endpoints)})
{with_names_sql(rows, "res", endpoints, pkeys=pkeys)}"""


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


def segment_sums_sql(base: str, ts: str, endpoints: list[tuple[str, str]], group: str, aggregates: str, segment: tuple[str, str],
                     pkeys: Pkeys | None = None) -> str:
    """The rows of `base` summed per (`group`, endpoint ips, segment) with `aggregates`, each endpoint
    resolved (NAME_FIELDS) at the segment's start: exact, with no per-IP lookup per row.

    A segment is an interval between two consecutive cuts of any IP (ft_cuts): no IP changes name
    inside one, so every row in it is named as at its start. `segment` is segment_start_sql's
    (join, key expression). In two stages: segment_rows_sql (the per-row pass, the heavy one) and
    segment_named_sql (naming its few rows).
    """
    return f"""
WITH g AS MATERIALIZED ({segment_rows_sql(base, ts, endpoints, group, aggregates, segment)}),
{segment_named_sql("g", endpoints, pkeys)}"""


def segment_rows_sql(base: str, ts: str, endpoints: list[tuple[str, str]], group: str, aggregates: str, segment: tuple[str, str]) -> str:
    """The per-row pass of segment_sums_sql: rows of `base` summed per (`group`, endpoint ips,
    segment start `__k`), unnamed."""
    ips = ", ".join(ip for _, ip in endpoints)
    join, key = segment
    return f"""
WITH b AS (SELECT *, epoch_ns({ts}) AS __t FROM {base})
SELECT {group}, {ips}, {key} AS __k, {aggregates}
FROM b {join}
GROUP BY ALL"""


def segment_named_sql(rows: str, endpoints: list[tuple[str, str]], pkeys: Pkeys | None = None) -> str:
    """CTEs g2, res and the final SELECT naming `rows` (segment_rows_sql's rows, a table or CTE)."""
    ks = ", ".join(f"__k AS __k{i}" for i in range(len(endpoints)))
    return f"""g2 AS (SELECT *, {ks} FROM {rows}),
{_named_sql("g2", endpoints, NAME_FIELDS, "__k, " + ", ".join(f"__k{i}" for i in range(len(endpoints))), pkeys)}"""


# A server error (the `errors_5xx` columns of the reports, diff's and check's error rate; docs/reports.md):
# an HTTP status >= 500; a gRPC call ending with a status that blames the server (the OpenTelemetry
# semantic conventions' server-side error codes: 2 UNKNOWN, 4 DEADLINE_EXCEEDED, 12 UNIMPLEMENTED,
# 13 INTERNAL, 14 UNAVAILABLE, 15 DATA_LOSS), usually inside an HTTP 200; a gRPC call reset without
# a status (a client deadline cancels the stream before the trailers); an HTTP/2 stream reset with
# an error code other than NO_ERROR and CANCEL. NOT_FOUND, INVALID_ARGUMENT, ... are like 4xx: not counted.
GRPC_ERROR_CODES = (2, 4, 12, 13, 14, 15)
SERVER_ERROR_SQL = (f"(h.status >= 500 OR h.grpc_status IN {GRPC_ERROR_CODES} "
                    "OR (h.grpc_service IS NOT NULL AND h.grpc_status IS NULL AND h.stream_error IS NOT NULL) "
                    "OR h.stream_error NOT IN ('NO_ERROR', 'CANCEL')) IS TRUE")

_HTTP_X = """
-- The client row of an exchange when it was recorded, else the server row: one scan, the
-- server rows of paired connections dropped by a hash probe (a correlated NOT EXISTS cost 1.2 s
-- on 5.6M rows, a second scan of the table for the server side 0.8 s). The client side looks
-- up only the pairs that substitute a pod for a ClusterIP (nothing, when none do), and the
-- process keys only when some process was seen outside Kubernetes.
CREATE OR REPLACE TEMP VIEW ft_http_x AS
SELECT h.ts_request AS ts, h.client_ip, {server_ip} AS server_ip, h.server_ip AS seen_server_ip,
       h.server_port, h.method, h.host, h.path, h.status, h.latency_ns, h.request_bytes, h.response_bytes, h.side, h.tls, h.node,
       h.http_version, h.grpc_service, h.grpc_method, h.grpc_status, h.stream_error, {server_error} AS server_error,
       -- the rest of the row, for readers that describe each exchange (analyze.export's spans);
       -- unread columns cost nothing (projection pushdown)
       h.client_port, h.conn_id, h.ts_response, h.pid, h.comm, h.traceparent, h.user_agent, h.stream_id, h.grpc_message,
       {pkeys}
FROM http h
LEFT JOIN ft_paired_servers sp ON sp.server_node = h.node AND sp.server_conn_id = h.conn_id {subst_join} {pkey_join}
WHERE h.side = 'client' OR (h.side = 'server' AND sp.server_conn_id IS NULL);
"""


def _flow_real_sql(substitutions: bool, processes: bool) -> str:
    """ft_flow_real: flows with `src_real`/`dst_real` (a ClusterIP replaced by the pod behind it
    when the tape paired the connection's two ends) and `src_pkey`/`dst_pkey` (the processes
    of the TCP connection the flow belongs to, ft_conn_pkeys4)."""
    cols, joins = [], []
    if substitutions:
        cols += ["coalesce(fwd.server_pod_ip, f.dst_ip) AS dst_real", "coalesce(rev.server_pod_ip, f.src_ip) AS src_real"]
        # a flow addressed to a ClusterIP (or answered from one) takes the pod behind it
        joins.append(f"""LEFT JOIN ft_conn_subst fwd
  ON f.l4 = 'tcp' AND f.src_ip = fwd.client_ip AND f.src_port = fwd.client_port
 AND f.dst_ip = fwd.seen_server_ip AND f.dst_port = fwd.seen_server_port
 AND f.ts_start >= fwd.ts_start - INTERVAL 5 SECOND AND f.ts_start <= coalesce(fwd.ts_end, {FOREVER})
LEFT JOIN ft_conn_subst rev
  ON f.l4 = 'tcp' AND f.dst_ip = rev.client_ip AND f.dst_port = rev.client_port
 AND f.src_ip = rev.seen_server_ip AND f.src_port = rev.seen_server_port
 AND f.ts_start >= rev.ts_start - INTERVAL 5 SECOND AND f.ts_start <= coalesce(rev.ts_end, {FOREVER})""")
    else:
        # with socket-level load balancing (or no Services) nothing is addressed to a ClusterIP
        cols += ["f.dst_ip AS dst_real", "f.src_ip AS src_real"]
    if processes:
        # ASOF: the latest connection of that 4-tuple started by then, one at most (a port reused
        # later is another connection); the flow counts it while it was open
        live = "f.ts_start <= {a}.ts_end"
        cols += [f"coalesce(CASE WHEN {live.format(a='pf')} THEN pf.client_pkey END, CASE WHEN {live.format(a='pr')} THEN pr.server_pkey END) AS src_pkey",
                 f"coalesce(CASE WHEN {live.format(a='pf')} THEN pf.server_pkey END, CASE WHEN {live.format(a='pr')} THEN pr.client_pkey END) AS dst_pkey"]
        joins.append("""ASOF LEFT JOIN ft_conn_pkeys4 pf
  ON f.l4 = pf.l4 AND f.src_ip = pf.client_ip AND f.src_port = pf.client_port AND f.dst_ip = pf.server_ip AND f.dst_port = pf.server_port
 AND f.ts_start + INTERVAL 5 SECOND >= pf.ts_start
ASOF LEFT JOIN ft_conn_pkeys4 pr
  ON f.l4 = pr.l4 AND f.dst_ip = pr.client_ip AND f.dst_port = pr.client_port AND f.src_ip = pr.server_ip AND f.src_port = pr.server_port
 AND f.ts_start + INTERVAL 5 SECOND >= pr.ts_start""")
    else:
        cols += ["NULL::INTEGER AS src_pkey", "NULL::INTEGER AS dst_pkey"]
    return f"CREATE OR REPLACE TEMP VIEW ft_flow_real AS\nSELECT f.*, {', '.join(cols)}\nFROM flows f\n" + "\n".join(joins) + ";"


EXCHANGE_PKEYS = {"client": "client_pkey", "server": "server_pkey", "seen": "server_pkey"}
"""Process keys of ft_http_x / ft_conn_x rows (the server addressed runs the server's process)."""

FLOW_PKEYS = {"src": "src_pkey", "dst": "dst_pkey"}


def named_exchanges_sql(base: str, substitutions: bool, processes: bool = False) -> str:
    """Every row of `base` (rows shaped like ft_http_x or ft_conn_x, by `ts`) with its client,
    server and addressed server (`seen_*`) resolved at that time: what enriched_http and
    enriched_connections hold. Without `substitutions` (nobody addressed a ClusterIP) what the
    client saw is the server; without `processes` (has_processes) no end is named by its process."""
    pkeys = EXCHANGE_PKEYS if processes else None
    if substitutions:
        return keyed_sql(base, "ts", [("client", "client_ip"), ("server", "server_ip"), ("seen", "seen_server_ip")], pkeys=pkeys)
    seen = ", ".join(f"server_{f} AS seen_{f}" for f in ENDPOINT_FIELDS + PROCESS_FIELDS)
    return f"SELECT *, {seen} FROM ({keyed_sql(base, 'ts', [('client', 'client_ip'), ('server', 'server_ip')], pkeys=pkeys)})"


def has_substitutions(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether any connection of the tape addressed a ClusterIP and was paired to its pod."""
    return con.execute("SELECT count(*) FROM ft_conn_subst").fetchall()[0][0] > 0


def has_processes(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether any process was seen at an address Kubernetes never owned (ft_proc_keys): else
    no row looks a process up (a cluster's tape costs what it did before names without it)."""
    return con.execute("SELECT count(*) FROM ft_proc_keys").fetchall()[0][0] > 0


def enriched_dns_sql(base: str = "ft_dns_x", processes: bool = False) -> str:
    """The rows of enriched_dns from `base`, rows shaped like ft_dns_x (analyze.sums passes its
    materialised copy: ft_dns_x reads the dns table twice to pair each exchange's two sightings)."""
    if not processes:
        return keyed_sql(base, "ts_query", [("client", "client_ip")])
    rows = (f"(SELECT b.*, dk.pkey AS client_pkey FROM {base} b "
            "LEFT JOIN ft_dns_pkeys dk ON dk.node = b.node AND dk.pid = b.pid AND dk.comm = b.comm)")
    return keyed_sql(rows, "ts_query", [("client", "client_ip")], pkeys={"client": "client_pkey"})


def _enriched_views(substitutions: bool = True, processes: bool = False) -> str:
    http = named_exchanges_sql("ft_http_x", substitutions, processes)
    conns = named_exchanges_sql("ft_conn_x", substitutions, processes)
    dns = enriched_dns_sql(processes=processes)
    flows = keyed_sql("ft_flow_real", "ts_start", [("src", "src_real"), ("dst", "dst_real")], pkeys=FLOW_PKEYS if processes else None)
    subst_join = "LEFT JOIN ft_conn_subst p ON h.side = 'client' AND h.node = p.client_node AND h.conn_id = p.client_conn_id" if substitutions else ""
    server_ip = "coalesce(p.server_pod_ip, h.server_ip)" if substitutions else "h.server_ip"
    pkey_join = "LEFT JOIN ft_conn_pkeys pk ON pk.node = h.node AND pk.conn_id = h.conn_id" if processes else ""
    pkeys = "pk.client_pkey, pk.server_pkey" if processes else "NULL::INTEGER AS client_pkey, NULL::INTEGER AS server_pkey"
    http_x = _HTTP_X.format(subst_join=subst_join, server_ip=server_ip, server_error=SERVER_ERROR_SQL, pkey_join=pkey_join, pkeys=pkeys)
    return f"""
{http_x}
{_conn_x_sql(processes)}
CREATE OR REPLACE TEMP VIEW enriched_http AS {http};

CREATE OR REPLACE TEMP VIEW enriched_connections AS {conns};

CREATE OR REPLACE TEMP VIEW enriched_dns AS {dns};

{_flow_real_sql(substitutions, processes)}

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

HostFacts = dict[str, dict]
"""Node -> the manifest's `nodes.<node>.host` (capture.live.host: addresses, etc_hosts, cgroups)."""


def _host_tables(con: duckdb.DuckDBPyConnection, hosts: HostFacts) -> None:
    """ft_host_own, ft_etc_hosts and ft_cgroups from the manifest's host facts; ft_local_addrs
    from the connections. Tapes written before these facts existed give empty tables."""
    own: dict[str, set[str]] = {}
    local: list[tuple[str, str]] = []
    named: dict[str, str] = {}
    cgroups = []
    for node in sorted(hosts):
        facts = hosts[node] if isinstance(hosts[node], dict) else {}
        for a in facts.get("addresses") or []:
            if isinstance(a, dict) and isinstance(a.get("ip"), str):
                own.setdefault(a["ip"], set()).add(node)
        for a in facts.get("namespace_addresses") or []:
            if isinstance(a, dict) and isinstance(a.get("ip"), str):
                local.append((node, a["ip"]))
        for e in facts.get("etc_hosts") or []:
            # the first name of the first line for an address, as the resolver's reverse lookup gives;
            # hosts disagreeing: the first node's, in name order
            if isinstance(e, dict) and isinstance(e.get("ip"), str) and e.get("names"):
                named.setdefault(e["ip"], str(e["names"][0]))
        for cid, c in (facts.get("cgroups") or {}).items():
            if isinstance(c, dict) and str(cid).isdigit():
                cgroups.append((node, int(cid), c.get("container"), c.get("runtime"), c.get("unit"), c.get("path")))
    con.execute("CREATE OR REPLACE TEMP TABLE ft_host_own (ip VARCHAR, host VARCHAR)")
    # an address several hosts claim (loopback, a default bridge) names none of them
    unique = [(ip, next(iter(nodes))) for ip, nodes in sorted(own.items()) if len(nodes) == 1]
    if unique:
        con.executemany("INSERT INTO ft_host_own VALUES (?, ?)", unique)
    con.execute("CREATE OR REPLACE TEMP TABLE ft_etc_hosts (ip VARCHAR, name VARCHAR)")
    if named:
        con.executemany("INSERT INTO ft_etc_hosts VALUES (?, ?)", sorted(named.items()))
    con.execute("CREATE OR REPLACE TEMP TABLE ft_cgroups (node VARCHAR, cgroup_id UBIGINT, container VARCHAR, runtime VARCHAR, unit VARCHAR, path VARCHAR)")
    if cgroups:
        con.executemany("INSERT INTO ft_cgroups VALUES (?, ?, ?, ?, ?, ?)", cgroups)
    con.execute("CREATE OR REPLACE TEMP TABLE ft_ns_addrs (node VARCHAR, ip VARCHAR)")
    if local:
        con.executemany("INSERT INTO ft_ns_addrs VALUES (?, ?)", local)
    # on a host: an address of one of its other network namespaces, or a local end of its connections
    con.execute("""
CREATE OR REPLACE TEMP TABLE ft_local_addrs AS
SELECT ip, min(node) AS host FROM (
    SELECT DISTINCT node, CASE role WHEN 'client' THEN client_ip ELSE server_ip END AS ip FROM connections
    UNION SELECT node, ip FROM ft_ns_addrs
) WHERE ip IS NOT NULL GROUP BY ip HAVING count(*) = 1""")


_PROCESSES = """
-- connection ends whose own address Kubernetes never owned in the tape, with their process:
-- only those can be named by it (ownership comes first), and a cluster's tape has none
CREATE OR REPLACE TEMP TABLE ft_proc_ends AS
SELECT e.node, e.conn_id, e.comm, e.cgroup_id, e.container_id FROM (
    SELECT node, conn_id, comm, cgroup_id, container_id, CASE role WHEN 'client' THEN client_ip ELSE server_ip END AS ip
    FROM connections WHERE comm IS NOT NULL
) e WHERE NOT EXISTS (SELECT 1 FROM ft_ip_owner o WHERE o.ip = e.ip);

CREATE OR REPLACE TEMP TABLE ft_dns_clients AS
SELECT DISTINCT d.node, d.pid, d.comm FROM (SELECT DISTINCT node, pid, comm, client_ip FROM dns WHERE comm IS NOT NULL AND pid IS NOT NULL) d
WHERE NOT EXISTS (SELECT 1 FROM ft_ip_owner o WHERE o.ip = d.client_ip);
"""

_PROCESS_KEYS = """
-- DNS clients: their cgroup from a connection of the same process (dns rows carry no cgroup)
CREATE OR REPLACE TEMP TABLE ft_dns_ends AS
SELECT d.node, d.pid, d.comm, any_value(c.cgroup_id) AS cgroup_id, any_value(c.container_id) AS container_id
FROM ft_dns_clients d
LEFT JOIN (SELECT DISTINCT node, pid, comm, cgroup_id, container_id FROM connections WHERE pid IS NOT NULL) c
  ON c.node = d.node AND c.pid = d.pid AND c.comm = d.comm
{none}
GROUP BY d.node, d.pid, d.comm;

CREATE OR REPLACE TEMP TABLE ft_proc_keys AS
WITH t AS (SELECT node, comm, cgroup_id, container_id FROM ft_proc_ends UNION SELECT node, comm, cgroup_id, container_id FROM ft_dns_ends)
SELECT (row_number() OVER (ORDER BY t.node, t.comm, t.cgroup_id, t.container_id))::INTEGER AS pkey, t.node, t.comm, t.cgroup_id, t.container_id,
       coalesce(g.container, left(t.container_id, 12)) AS container,
       coalesce(g.runtime, CASE WHEN t.container_id IS NOT NULL THEN 'container' END) AS runtime, g.unit
FROM t LEFT JOIN ft_cgroups g ON g.node = t.node AND g.cgroup_id = t.cgroup_id;

CREATE OR REPLACE TEMP TABLE ft_dns_pkeys AS
SELECT d.node, d.pid, d.comm, k.pkey FROM ft_dns_ends d
JOIN ft_proc_keys k ON k.node = d.node AND k.comm = d.comm AND k.cgroup_id IS NOT DISTINCT FROM d.cgroup_id
 AND k.container_id IS NOT DISTINCT FROM d.container_id;

-- each connection row: the process of its client and of its server (its own end's, and the
-- paired row's end when both ends were recorded)
CREATE OR REPLACE TEMP TABLE ft_conn_pkeys AS
WITH own AS (
    SELECT e.node, e.conn_id, k.pkey FROM ft_proc_ends e
    JOIN ft_proc_keys k ON k.node = e.node AND k.comm = e.comm AND k.cgroup_id IS NOT DISTINCT FROM e.cgroup_id
     AND k.container_id IS NOT DISTINCT FROM e.container_id
),
r AS (
    SELECT c.node, c.conn_id, o.pkey AS client_pkey, so.pkey AS server_pkey
    FROM connections c LEFT JOIN own o ON o.node = c.node AND o.conn_id = c.conn_id
    LEFT JOIN ft_conn_pairs p ON p.client_node = c.node AND p.client_conn_id = c.conn_id
    LEFT JOIN own so ON so.node = p.server_node AND so.conn_id = p.server_conn_id
    WHERE c.role = 'client' {and_none}
    UNION ALL
    SELECT s.node, s.conn_id, co.pkey, o.pkey
    FROM connections s LEFT JOIN own o ON o.node = s.node AND o.conn_id = s.conn_id
    LEFT JOIN ft_conn_pairs p ON p.server_node = s.node AND p.server_conn_id = s.conn_id
    LEFT JOIN own co ON co.node = p.client_node AND co.conn_id = p.client_conn_id
    WHERE s.role = 'server' {and_none}
)
SELECT node, conn_id, max(client_pkey) AS client_pkey, max(server_pkey) AS server_pkey FROM r
WHERE client_pkey IS NOT NULL OR server_pkey IS NOT NULL GROUP BY node, conn_id;

-- the same per connection 4-tuple, for flows: the client row (or a server row nobody paired)
CREATE OR REPLACE TEMP TABLE ft_conn_pkeys4 AS
SELECT 'tcp' AS l4, c.client_ip, c.client_port, c.server_ip, c.server_port, c.ts_start, coalesce(c.ts_end, {forever}) AS ts_end,
       k.client_pkey, k.server_pkey
FROM connections c JOIN ft_conn_pkeys k ON k.node = c.node AND k.conn_id = c.conn_id
WHERE (c.role = 'client' OR NOT EXISTS (SELECT 1 FROM ft_paired_servers sp WHERE sp.server_node = c.node AND sp.server_conn_id = c.conn_id)) {and_none};
"""


def create_views(con: duckdb.DuckDBPyConnection, labels: tuple[str, ...] = DEFAULT_LABELS, hosts: HostFacts | None = None) -> None:
    """Create the enrichment views on a tape's connection; `hosts` are the manifest's host
    facts of each node (the names a tape recorded without Kubernetes has).

    The small state derived from Kubernetes versions, DNS answers and connection pairs is
    materialised once per connection (a tape does not change while it is open); the row-level
    views stay lazy.
    """
    ready = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'ft_ready'").fetchall()[0][0]
    if ready and con.execute("SELECT labels FROM ft_ready").fetchall()[0][0] == list(labels):
        return
    _host_tables(con, hosts or {})
    con.execute(_base_views(labels))
    for name in _MATERIALISED:  # in dependency order: each reads the previous ones' tables
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name}__m AS SELECT * FROM {name}")
        con.execute(f"DROP VIEW {name}")
        con.execute(f"CREATE TEMP VIEW {name} AS SELECT * FROM {name}__m")
    con.execute(_STATE.format(forever=FOREVER, minute=MINUTE_NS))
    con.execute(_PROCESSES)
    ends = con.execute("SELECT (SELECT count(*) FROM ft_proc_ends) + (SELECT count(*) FROM ft_dns_clients)").fetchall()[0][0]
    # a cluster's tape has no process outside Kubernetes: its tables are made empty, with no scan
    con.execute(_PROCESS_KEYS.format(forever=FOREVER, none="" if ends else "WHERE false", and_none="" if ends else "AND false"))
    con.execute(_cuts_sql())
    substitutions = has_substitutions(con)
    con.execute(_enriched_views(substitutions, has_processes(con)))
    con.execute("CREATE OR REPLACE TEMP TABLE ft_ready AS SELECT ?::VARCHAR[] AS labels", [list(labels)])


def _process_sql(p: str) -> str:
    """A local process: `comm`, or `runtime:container/comm` in a container."""
    runtimes = ", ".join(f"'{r}'" for r in CONTAINER_RUNTIMES)
    return (f"CASE WHEN {p}_runtime IN ({runtimes}) THEN {p}_runtime || ':' || coalesce({p}_container, '?') || '/' || {p}_process "
            f"ELSE {p}_process END")


def _program_sql(p: str) -> str:
    """What deployed a local process: its container (`runtime:container`), its systemd service,
    else its comm."""
    runtimes = ", ".join(f"'{r}'" for r in CONTAINER_RUNTIMES)
    return (f"CASE WHEN {p}_runtime IN ({runtimes}) THEN {p}_runtime || ':' || coalesce({p}_container, '?') "
            f"WHEN {p}_runtime = 'systemd' AND {p}_unit IS NOT NULL THEN {p}_unit ELSE {p}_process END")


def machine_sql(prefix: str) -> str:
    """The recorded host an endpoint outside Kubernetes is on (its own address, the node of
    the process seen there, or where the address was a local endpoint), else NULL."""
    p = prefix
    return f"coalesce({p}_host, {p}_process_node, {p}_local_node)"


def name_sql(prefix: str, by: str, ip: str | None = None) -> str:
    """SQL naming the endpoint with columns `{prefix}_*` at granularity `by` (one of GRANULARITIES).

    Pods name themselves per `by`; ClusterIPs are `svc:ns/name` (or their namespace); node IPs
    `node:<name>`. Outside Kubernetes: a local process is its comm (`runtime:container/comm` in
    a container; by workload or service its container or systemd unit; by namespace `host:<host>`;
    by node or host its host); an address without one is named by DNS, then /etc/hosts, then the
    host it belongs to (`host:<name>`); external IPs are `external:<name or ip>`, the rest
    `unknown:<ip>`. By host: a pod's node, a recorded host's own address, else DNS, /etc/hosts,
    the host a process was seen on.
    """
    p = prefix
    ip = ip or f"{p}_ip"
    pod = {
        "pod": f"{p}_namespace || '/' || {p}_pod",
        "process": f"{p}_namespace || '/' || {p}_pod",
        "workload": f"{p}_namespace || '/' || {p}_workload",
        "service": f"{p}_namespace || '/' || {p}_workload",
        "namespace": f"{p}_namespace",
        "node": f"{p}_node",
        "host": f"{p}_node",
        "zone": f"coalesce({p}_zone, 'zone?')",
    }[by]
    node = {"node": f"{p}_node", "host": f"{p}_node", "zone": f"coalesce({p}_zone, 'zone?')"}.get(by, f"'node:' || {p}_node")
    svc = {"namespace": f"{p}_namespace", "node": "'service'", "host": "'service'", "zone": "'service'"}.get(by, f"'svc:' || {p}_namespace || '/' || {p}_service")
    named = f"coalesce({p}_dns, {p}_hosts_name)"
    machine = machine_sql(p)
    addr = (f"CASE WHEN {p}_kind = 'external' THEN 'external:' || coalesce({named}, {ip}) "
            f"ELSE coalesce({named}, 'host:' || {machine}, 'unknown:' || {ip}) END")
    if by in ("pod", "process"):
        other = f"CASE WHEN {p}_process IS NOT NULL THEN {_process_sql(p)} ELSE {addr} END"
    elif by in ("workload", "service"):
        other = f"CASE WHEN {p}_process IS NOT NULL THEN {_program_sql(p)} ELSE {addr} END"
    elif by == "namespace":
        other = f"CASE WHEN {p}_kind <> 'external' AND {machine} IS NOT NULL THEN 'host:' || {machine} ELSE {addr} END"
    elif by in ("node", "host"):
        # the machine: its own address names it first; a DNS or /etc/hosts name before the host a
        # process was seen on (a container's or namespace's address, looked up by name)
        other = (f"CASE WHEN {p}_kind = 'external' THEN {addr} "
                 f"ELSE coalesce({p}_host, {named}, {p}_process_node, {p}_local_node, 'unknown:' || {ip}) END")
    else:  # zone: a host outside Kubernetes has none the tape knows
        other = f"CASE WHEN {p}_kind <> 'external' AND {machine} IS NOT NULL THEN 'zone?' ELSE {addr} END"
    return f"""CASE {p}_kind WHEN 'pod' THEN {pod} WHEN 'node' THEN {node} WHEN 'service' THEN {svc}
        ELSE {other} END"""


def server_name_sql(by: str) -> str:
    """The server of an exchange: by=service names the Service the client addressed, if any."""
    plain = name_sql("server", by)
    if by != "service":
        return plain
    return f"CASE WHEN seen_kind = 'service' THEN 'svc:' || seen_namespace || '/' || seen_service ELSE {plain} END"
