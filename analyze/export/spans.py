"""Spans: one per side of every HTTP exchange and one per DNS lookup, written as OTLP JSON by SQL.

HTTP. `tape.enriched("http")` holds one row per exchange (the client side when it was recorded,
else the server side), with both ends named as the tape named them at that time. The server
rows it leaves out (the connection's two ends were paired, so the client row stands for the
exchange) are spans too: each is named like the client row of the same exchange, the one the
request-journeys view links it to (analyze.reports.traces: by traceparent, TCP sequence
numbers, else the socket and the nearest time, pairing.nearest_clients). Every `http` row gives
exactly one span, and both halves of an exchange carry the same names.

Ids: every HTTP span's trace id, span id and parent span id are the request-journeys view's
(`traces.span_ids`, keyed by the row key `m`), so an exported trace is the one `flowtape report
traces -f json` prints: a server span's parent is the client span of its exchange, a client
span's the server span of the request that caused it; the applications' ids where they
propagated them, else ids derived from the rows (the same tape gives the same ids).

DNS: one CLIENT span per lookup (`tape.enriched("dns")`: a query seen on two nodes counts once).

Memory: the enriched rows are copied once, narrow and sorted by time, into tables of the
in-memory database (DuckDB keeps them within its memory limit and spills the rest to its
temporary folder); spans are then made one time slice at a time, ordered within it, so the
stream is the same on every run (what resuming relies on, see checkpoint.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ...reader import Tape
from ..analysis import HTTP_KEYED_ENDPOINTS
from ..enrich import GRPC_ERROR_CODES, NAME_FIELDS, key_names_sql
from ..reports.filters import Filters
from ..reports.traces import span_ids
from ..sums import ROUTE
from .semconv import HTTP_METHODS, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, STATUS_ERROR, Attr, attribute_items_sql, attributes_json_sql, endpoint_service_sql

SKEW_NS = 1_000_000_000
"""How far apart in time (clock skew between nodes included) the two sides of one exchange may be
seen and still be paired. The nearest candidate wins, so keep-alive neighbours are confused only
when two nodes' clocks disagree by half the gap between two requests."""

SLICE_ROWS = 200_000
"""Rows per time slice: each slice is paired and ordered on its own (bounded work and memory)."""

_E_COLS = ("method", "path", "status", "host", "http_version", "tls", "pid", "comm", "user_agent", "request_bytes", "response_bytes", "traceparent",
           "grpc_service", "grpc_method", "grpc_status", "grpc_message", "stream_error")


def _names_hash(prefix: str) -> str:
    # an id for one endpoint's names, to carry 8 bytes per row instead of ten strings; only ever
    # joined back to ftx_names in the same process (never exported), so DuckDB's hash() will do
    return f"hash({', '.join(f'{prefix}_{x}' for x in NAME_FIELDS)})"


def _key(node: str, side: str, t: str, cip: str, cport: str, sip: str, sport: str, sid: str = "stream_id") -> str:
    """The text a row's ids are derived from: who recorded it, which side, when, which socket, and
    an HTTP/2 stream's id (its connection's streams may start at one instant; concat_ws skips a
    null, so an HTTP/1 row's key is as it was)."""
    return f"concat_ws('|', {node}, {side}, {t}, {cip}, {cport}, {sip}, {sport}, {sid})"


@dataclass(frozen=True)
class Slice:
    start_ns: int
    end_ns: int
    rows: int


class HttpSides:
    """The HTTP rows of a tape in the window of `filters`, as time slices of `ftx_slice` rows:
    every `http` row once, both ends named (`c_*`, `s_*`), with its ids' inputs."""

    def __init__(self, tape: Tape, filters: Filters, slice_rows: int = SLICE_ROWS, naming: str = "keyed"):
        self.tape, self.filters, self.slice_rows, self.naming = tape, filters, slice_rows, naming
        self.slices: list[Slice] = []

    def build(self) -> None:
        t, f = self.tape, self.filters
        ids = span_ids(t.analysis)  # every http row's ids and its exchange's client row (parent_m), keyed by m
        t.sql(f"CREATE OR REPLACE TABLE ftx_routes AS SELECT path, {ROUTE.format(path='path')} AS route FROM (SELECT DISTINCT path FROM http)")
        # the exchange rows (pairing candidates included) a little beyond the window, so a server
        # side just inside it still finds its client side
        lo = _widened(f)
        e_cols = ", ".join(_E_COLS)
        if self.naming == "keyed":
            # each row carries the cut key of its client and server IP (enrich.cut_keyed_sql), and
            # each distinct (ip, key) is named once: naming every row (enriched_http, twice: for
            # ftx_names and for ftx_e) was a third of the export's CPU time
            src, cn, sn, keys = self.tape.analysis.http_keyed(), "hash(client_ip, __k0)", "hash(server_ip, __k1)", ", __k0, __k1"
        else:
            t.enriched("http").create_view("ftx_http", replace=True)
            src, cn, sn, keys = "ftx_http", _names_hash("client"), _names_hash("server"), ""
        t.sql(f"""CREATE OR REPLACE TABLE ftx_e AS
            SELECT e.*, i.trace_id AS tr_trace, i.span_id AS tr_span, i.parent_span_id AS tr_parent FROM (
            SELECT t, side, node, client_ip, client_port, sock_ip, sock_port, server_ip, t1, {e_cols}, cn, sn,
                   md5({_key('node', 'side', 't', 'client_ip', 'client_port', 'sock_ip', 'sock_port')}) AS m{keys}
            FROM (SELECT epoch_ns(ts) AS t, side, node, client_ip, client_port, seen_server_ip AS sock_ip, server_port AS sock_port, server_ip,
                         epoch_ns(ts_response) AS t1, stream_id, {e_cols}, {cn} AS cn, {sn} AS sn{keys}
                  FROM {src} WHERE {lo.time_sql('ts')})) e LEFT JOIN {ids} i ON i.m = e.m
            ORDER BY t""")
        if self.naming == "keyed":
            ends = HTTP_KEYED_ENDPOINTS
            t.sql(f"""CREATE OR REPLACE TABLE ftx_names AS
                SELECT hash(ip, k) AS nid, {', '.join(f'r_{x} AS {x}' for x in NAME_FIELDS)} FROM ({key_names_sql('ftx_e', ends, NAME_FIELDS)})""")
            t.sql("ALTER TABLE ftx_e DROP COLUMN __k0")
            t.sql("ALTER TABLE ftx_e DROP COLUMN __k1")
        else:
            names = ", ".join(f"{{p}}_{x} AS {x}" for x in NAME_FIELDS)
            t.sql(f"""CREATE OR REPLACE TABLE ftx_names AS
                SELECT DISTINCT {_names_hash('client')} AS nid, {names.format(p='client')} FROM ftx_http
                UNION SELECT DISTINCT {_names_hash('server')} AS nid, {names.format(p='server')} FROM ftx_http""")
        h_cols = ", ".join(f"h.{c}" for c in _E_COLS)
        # each paired server side with its ids and the names of its exchange's client row (the
        # view's link; a client row outside the widened window, or none: no names)
        t.sql(f"""CREATE OR REPLACE TABLE ftx_b AS
            SELECT b.*, i.trace_id AS tr_trace, i.span_id AS tr_span, i.parent_span_id AS tr_parent, pe.m AS pair_m, pe.cn AS pair_cn, pe.sn AS pair_sn FROM (
            SELECT t, 'server' AS side, node, client_ip, client_port, sock_ip, sock_port, sock_ip AS server_ip, t1, {e_cols},
                   md5({_key('node', "'server'", 't', 'client_ip', 'client_port', 'sock_ip', 'sock_port')}) AS m
            FROM (SELECT epoch_ns(h.ts_request) AS t, h.node, h.client_ip, h.client_port, h.server_ip AS sock_ip, h.server_port AS sock_port,
                         epoch_ns(h.ts_response) AS t1, h.stream_id, {h_cols}
                  FROM http h
                  -- the server rows the enriched view leaves out: those of connections whose two
                  -- ends the tape paired (analyze.enrich's ft_paired_servers, made with the view);
                  -- a join with those few thousand connections, where a NOT EXISTS against ftx_e
                  -- cost 7 CPU-s on 3.7M rows
                  JOIN ft_paired_servers sp ON sp.server_node = h.node AND sp.server_conn_id = h.conn_id
                  WHERE h.side = 'server' AND {f.time_sql('h.ts_request')})) b
            LEFT JOIN {ids} i ON i.m = b.m
            LEFT JOIN (SELECT m, min(cn) AS cn, min(sn) AS sn FROM ftx_e WHERE side = 'client' GROUP BY m) pe ON pe.m = i.parent_m
            ORDER BY t""")
        t.sql(f"DROP TABLE IF EXISTS {ids}")  # joined into ftx_e and ftx_b: 3.7M rows of ids not kept while the spans are made
        self.slices = self._plan()

    def _plan(self) -> list[Slice]:
        """Slices of about slice_rows rows, cut at whole seconds (a second is never split)."""
        inside = self.filters.time_sql("make_timestamp_ns(t)::TIMESTAMPTZ_NS")
        per_second = self.tape.sql(f"""SELECT s, sum(n)::BIGINT FROM (
                SELECT t // 1000000000 AS s, count(*) AS n FROM ftx_e WHERE {inside} GROUP BY 1
                UNION ALL SELECT t // 1000000000, count(*) FROM ftx_b GROUP BY 1) GROUP BY s ORDER BY s""").fetchall()
        slices: list[Slice] = []
        start, n = None, 0
        for s, c in per_second:
            if start is None:
                start = s
            n += c
            if n >= self.slice_rows:
                slices.append(Slice(start * 1_000_000_000, (s + 1) * 1_000_000_000, n))
                start, n = None, 0
        if start is not None:
            slices.append(Slice(start * 1_000_000_000, (per_second[-1][0] + 1) * 1_000_000_000, n))
        return slices

    def materialize(self, sl: Slice, table: bool, con=None, wide: bool = False) -> None:
        """Create ftx_slice on `con` (a cursor of the tape's connection; default the tape's): the
        rows of `sl`, server sides paired and every row's peer named (`q_*`: the server of a
        client row, the client of a server row); `wide`: both ends named too (`c_*`, `s_*`: the
        metrics read them); a table when several queries read it, else a view. A table's width
        is what writing it costs: the spans need the peer's names only (13 columns, where both
        ends' were 26 and took a third of the slice's time). ftx_e, ftx_b, ftx_names and ftx_routes are plain (not TEMP) tables of the
        in-memory database so that two cursors can each work on a slice: a slice is a row group or
        two, which DuckDB scans on one thread, so two slices at a time use both cores."""
        a, b = sl.start_ns, sl.end_ns
        inside = self.filters.time_sql("make_timestamp_ns(t)::TIMESTAMPTZ_NS")
        common = "side, node, t, t1, client_ip, client_port, sock_ip, sock_port, server_ip, " + ", ".join(_E_COLS) + ", m, tr_trace, tr_span, tr_parent"
        if wide:  # LOCAL_PEER makes q_* from these
            names = ", ".join(f"nc.{x} AS c_{x}" for x in NAME_FIELDS) + ", " + ", ".join(f"ns.{x} AS s_{x}" for x in NAME_FIELDS)
            peer_join = ""
        else:
            names = ", ".join(f"nq.{x} AS q_{x}" for x in NAME_FIELDS)
            peer_join = "LEFT JOIN ftx_names nq ON nq.nid = CASE WHEN x.side = 'client' THEN x.sn ELSE x.cn END"
        ns_filter = self.filters.namespace_sql('nc.namespace', 'ns.namespace')
        both = wide or bool(self.filters.namespace)
        end_joins = "LEFT JOIN ftx_names nc ON nc.nid = x.cn LEFT JOIN ftx_names ns ON ns.nid = x.sn" if both else ""
        run = con.execute if con is not None else self.tape.sql
        run("DROP VIEW IF EXISTS ftx_slice")
        run("DROP TABLE IF EXISTS ftx_slice")
        # the server sides were paired once, by the request-journeys view (build): a slice is a union
        run(f"""CREATE TEMP {'TABLE' if table else 'VIEW'} ftx_slice AS
WITH
x AS (
    SELECT {common}, cn, sn, NULL::VARCHAR AS pair_m, true AS exchange
    FROM ftx_e WHERE t >= {a} AND t < {b} AND {inside}
    UNION ALL
    -- `exchange`: the row stands for its exchange (the enriched view's row); a paired server side does not
    SELECT {common}, pair_cn, pair_sn, pair_m, false FROM ftx_b WHERE t >= {a} AND t < {b}
)
SELECT x.*, r.route, {names}
FROM x LEFT JOIN ftx_routes r ON r.path = x.path {peer_join} {end_joins}
WHERE {ns_filter if both else 'true'}""")

    def close(self) -> None:
        self.tape.sql("DROP VIEW IF EXISTS ftx_slice")
        for name in ("ftx_slice", "ftx_e", "ftx_b", "ftx_names", "ftx_routes"):
            self.tape.sql(f"DROP TABLE IF EXISTS {name}")

    def names(self) -> dict[int, tuple]:
        """nid -> the endpoint's NAME_FIELDS values (as analyze.enrich names them)."""
        return {r[0]: tuple(r[1:]) for r in self.tape.sql(f"SELECT nid, {', '.join(NAME_FIELDS)} FROM ftx_names").fetchall()}


def _widened(f: Filters) -> Filters:
    """`f`'s window widened by SKEW_NS each way, without its namespace (pairing candidates)."""
    pad = dt.timedelta(seconds=SKEW_NS / 1e9)
    return Filters(f.since - pad if f.since else None, f.until + pad if f.until else None, None)


def _hex_trace(m: str) -> str:
    """A trace id from a row's md5 (hex): all of it."""
    return m


def _hex_span(m: str) -> str:
    """A span id from a row's md5 (hex): its first half (md5's text form: md5_number and its
    128-bit arithmetic cost 8x more on 3.7M rows)."""
    return f"left({m}, 16)"


CLIENT = "side = 'client'"
KNOWN = "method IN (" + ", ".join(f"'{m}'" for m in HTTP_METHODS) + ")"
ERROR_TYPE = f"CASE WHEN status IS NULL THEN '_OTHER' WHEN status >= 500 OR ({CLIENT} AND status >= 400) THEN status::VARCHAR END"
"""error.type by the HTTP conventions: the status code when it is an error for this side (5xx for
a server, 4xx too for a client), `_OTHER` when no response was recorded."""

GRPC = "grpc_service IS NOT NULL"
GRPC_STATUS_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
                     "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                     "UNAUTHENTICATED")
"""gRPC status codes by number (grpc/doc/statuscodes.md): rpc.response.status_code is the name."""
GRPC_STATUS_NAME = ("CASE grpc_status " + " ".join(f"WHEN {i} THEN '{n}'" for i, n in enumerate(GRPC_STATUS_NAMES))
                    + " ELSE grpc_status::VARCHAR END")
GRPC_ERROR = f"CASE WHEN {CLIENT} THEN grpc_status <> 0 ELSE grpc_status IN {GRPC_ERROR_CODES} END"
"""A gRPC status that makes the span an Error (the gRPC conventions): any but OK on a client span;
on a server span only those that blame the server (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
INTERNAL, UNAVAILABLE, DATA_LOSS: analyze.enrich.GRPC_ERROR_CODES, as the reports count them)."""
SPAN_ERROR_TYPE = (f"CASE WHEN {GRPC} AND grpc_status IS NOT NULL AND ({GRPC_ERROR}) THEN {GRPC_STATUS_NAME} "
                   f"WHEN {GRPC} AND grpc_status IS NULL AND stream_error IS NOT NULL THEN '_OTHER' "
                   f"WHEN stream_error NOT IN ('NO_ERROR', 'CANCEL') THEN stream_error ELSE {ERROR_TYPE} END")
"""error.type of a span (NULL: not an error): the gRPC status name of a failed call; `_OTHER` for a
call reset before any grpc-status (typically a client's deadline); the HTTP/2 error code of a
stream reset by an error (not NO_ERROR or CANCEL); else the HTTP rule (ERROR_TYPE). The HTTP
duration metrics keep ERROR_TYPE: their error.type is the HTTP conventions'."""

_HOST_ADDR = ("CASE WHEN host LIKE '[%' THEN nullif(split_part(substr(host, 2), ']', 1), '') WHEN host LIKE '%:%:%' THEN host "
              "ELSE nullif(split_part(host, ':', 1), '') END")
_HOST_PORT = ("CASE WHEN host LIKE '[%]:%' THEN TRY_CAST(split_part(host, ']:', 2) AS INTEGER) "
              "WHEN host LIKE '%:%' AND host NOT LIKE '%:%:%' AND host NOT LIKE '[%' THEN TRY_CAST(split_part(host, ':', 2) AS INTEGER) END")
_SCHEME = "CASE WHEN tls THEN 'https' ELSE 'http' END"
# where the client sent the request: its Host header, else the name the tape had for the address
# it connected to, else that address
_PEER_ADDR = "coalesce(q_dns, sock_ip)"  # read on client rows only, whose peer (q_) is the server
_AUTHORITY = f"coalesce(host, CASE WHEN contains({_PEER_ADDR}, ':') THEN '[' || {_PEER_ADDR} || ']' ELSE {_PEER_ADDR} END || ':' || sock_port)"

HTTP_CLASS_ATTRS = (
    Attr("http.request.method", "S", f"CASE WHEN {KNOWN} THEN method ELSE '_OTHER' END"),
    Attr("http.request.method_original", "s", f"CASE WHEN NOT {KNOWN} THEN method END"),
    Attr("http.response.status_code", "i", "status"),
    Attr("error.type", "S", SPAN_ERROR_TYPE),
    # gRPC calls (HTTP/2 rows with grpc_service): the RPC conventions' current attributes, then the
    # ones they replace (rpc.system, rpc.service, rpc.grpc.status_code: what backends read today)
    Attr("rpc.system.name", "S", f"CASE WHEN {GRPC} THEN 'grpc' END"),
    Attr("rpc.method", "s", f"CASE WHEN {GRPC} THEN concat(grpc_service, '/', grpc_method) END"),
    Attr("rpc.response.status_code", "S", f"CASE WHEN {GRPC} THEN {GRPC_STATUS_NAME} END"),
    Attr("rpc.system", "S", f"CASE WHEN {GRPC} THEN 'grpc' END"),
    Attr("rpc.service", "s", f"CASE WHEN {GRPC} THEN grpc_service END"),
    Attr("rpc.grpc.status_code", "i", f"CASE WHEN {GRPC} THEN grpc_status END"),
    Attr("url.scheme", "S", _SCHEME),
    Attr("url.template", "s", f"CASE WHEN {CLIENT} THEN route END"),
    Attr("http.route", "s", f"CASE WHEN NOT {CLIENT} THEN route END"),
    Attr("server.address", "s", f"coalesce({_HOST_ADDR}, CASE WHEN {CLIENT} THEN {_PEER_ADDR} ELSE sock_ip END)"),
    Attr("server.port", "i", f"coalesce({_HOST_PORT}, sock_port)"),
    Attr("client.address", "S", f"CASE WHEN NOT {CLIENT} THEN client_ip END"),
    Attr("network.peer.address", "S", f"CASE WHEN {CLIENT} THEN sock_ip ELSE client_ip END"),
    Attr("network.protocol.version", "s", "nullif(replace(http_version, 'HTTP/', ''), '')"),
    Attr("network.transport", "S", "'tcp'"),
    Attr("user_agent.original", "s", "user_agent"),
    Attr("peer.service", "s", endpoint_service_sql("q", "peer_ip")),
)
"""The attributes that many spans share (an exchange class: side, method, route, status, host,
peer...): written once per class and slice, not once per span."""

HTTP_ROW_ATTRS = (
    Attr("url.path", "s", "split_part(path, '?', 1)"),
    Attr("url.query", "s", f"CASE WHEN NOT {CLIENT} AND contains(path, '?') THEN substr(path, strpos(path, '?') + 1) END"),
    Attr("url.full", "s", f"CASE WHEN {CLIENT} THEN concat({_SCHEME}, '://', {_AUTHORITY}, path) END"),
    Attr("client.port", "i", f"CASE WHEN NOT {CLIENT} THEN client_port END"),
    Attr("network.peer.port", "i", f"CASE WHEN {CLIENT} THEN sock_port ELSE client_port END"),
    Attr("http.request.size", "i", "request_bytes"),
    Attr("http.response.size", "i", "response_bytes"),
)
"""The attributes particular to one span (its path, its connection's port, its sizes)."""

HTTP_ATTRS = HTTP_CLASS_ATTRS + HTTP_ROW_ATTRS

_CLASS = ("side", "method", "status", "tls", "route", "host", "http_version", "user_agent", "sock_ip", "sock_port", "client_ip",
          "grpc_service", "grpc_method", "grpc_status", "grpc_message", "stream_error",
          "q_kind", "q_workload", "q_service", "q_node", "q_dns", "peer_ip")
"""Every column HTTP_CLASS_ATTRS, the span's name and its status read."""

# The local endpoint (l_*: the side that recorded the row) and its peer (q_*), from both ends'
# names (a wide slice: the metrics).
LOCAL_PEER = ", ".join(f"CASE WHEN {CLIENT} THEN c_{x} ELSE s_{x} END AS l_{x}, CASE WHEN {CLIENT} THEN s_{x} ELSE c_{x} END AS q_{x}" for x in NAME_FIELDS) + \
    f", CASE WHEN {CLIENT} THEN client_ip ELSE sock_ip END AS local_ip, CASE WHEN {CLIENT} THEN server_ip ELSE client_ip END AS peer_ip"

RESOURCE_COLUMNS = ("nid", "pid", "comm", "node", "local_ip")
"""What a span's resource is made of (resources.py): the local endpoint's names (by nid), its
process and node, its IP. The span queries also give `rid`, a hash of these, so that Python
handles one integer per span (64-bit: a collision among a tape's few thousand resources has a
chance around 1e-12)."""


def http_span_exprs() -> dict[str, str]:
    """SQL of a span's parts over ftx_slice's rows (hex ids; `frag` and `status` per class)."""
    # the ids are the request-journeys view's (build); a row it could not find again would keep
    # ids derived from itself (none does: tests/test_export_otlp.py checks every span against the view)
    trace = f"coalesce(tr_trace, {_hex_trace('m')})"
    span = f"coalesce(tr_span, {_hex_span('m')})"
    parent = "tr_parent"
    # a gRPC call is named by its method (the RPC conventions: `{rpc.method}`), an HTTP one by
    # method and route
    name = f"CASE WHEN {GRPC} THEN concat(grpc_service, '/', grpc_method) ELSE concat(CASE WHEN {KNOWN} THEN method ELSE 'HTTP' END, ' ' || route) END"
    kind = f"CASE WHEN {CLIENT} THEN {SPAN_KIND_CLIENT} ELSE {SPAN_KIND_SERVER} END"
    # the message: why there is no response, or a failed gRPC call's grpc-message
    status = (f"CASE WHEN ({SPAN_ERROR_TYPE}) IS NULL THEN '' WHEN status IS NULL THEN ',\"status\":{{\"message\":\"no response recorded\",\"code\":{STATUS_ERROR}}}' "
              f"WHEN {GRPC} AND grpc_message IS NOT NULL AND grpc_message <> '' THEN concat(',\"status\":{{\"message\":', to_json(grpc_message), ',\"code\":{STATUS_ERROR}}}') "
              f"ELSE ',\"status\":{{\"code\":{STATUS_ERROR}}}' END")
    # a class's fragment: name and kind, chr(31) -- never in JSON text, which escapes control
    # characters -- then the shared attributes
    frag = (f"concat(',\"name\":', to_json({name}), ',\"kind\":', {kind}, chr(31), {attribute_items_sql(HTTP_CLASS_ATTRS)})")
    return {"trace": trace, "span": span, "parent": parent, "frag": frag, "status": status}


def http_rows_cte() -> str:
    """CTEs s, s2 over ftx_slice: every row with its local and peer names (l_*, q_*), its
    resource's nid and its class id `cid` (a hash of the class's columns: a 64-bit collision
    among a slice's few thousand classes has a chance about 1e-12)."""
    cls = ", ".join(_CLASS)
    ends = (f"CASE WHEN {CLIENT} THEN client_ip ELSE sock_ip END AS local_ip, CASE WHEN {CLIENT} THEN server_ip ELSE client_ip END AS peer_ip, "
            f"CASE WHEN {CLIENT} THEN cn ELSE sn END AS nid")
    return f"""s AS (SELECT *, {ends} FROM ftx_slice),
s2 AS (SELECT *, hash({cls}) AS cid FROM s)"""


def http_classes_cte() -> str:
    """http_rows_cte and c: (cid, frag, status) of every class."""
    e = http_span_exprs()
    return f"""{http_rows_cte()},
c AS (SELECT cid, {e['frag']} AS frag, {e['status']} AS status FROM (SELECT DISTINCT ON (cid) * FROM s2))"""


def http_spans_sql() -> str:
    """The spans of ftx_slice, ordered (time, then row id: the same order on every run): the
    RESOURCE_COLUMNS and span_json. The reference encoding (columnar.py is the fast one)."""
    e = http_span_exprs()
    # a span = its ids and times + its class's fragment (name, kind, shared attributes) and
    # status + its own attributes
    span_json = (f"concat('{{\"traceId\":\"', {e['trace']}, '\",\"spanId\":\"', {e['span']}, '\"', ',\"parentSpanId\":\"' || ({e['parent']}) || '\"', "
                 f"split_part(c.frag, chr(31), 1), ',\"startTimeUnixNano\":\"', t, '\",\"endTimeUnixNano\":\"', coalesce(t1, t), "
                 f"'\",\"attributes\":[', concat_ws(',', substr(c.frag, strpos(c.frag, chr(31)) + 1), {attribute_items_sql(HTTP_ROW_ATTRS)}), ']', c.status, '}}')")
    return f"""WITH {http_classes_cte()}
SELECT hash(nid, pid, comm, node, local_ip) AS rid, nid, pid, comm, node, local_ip, {span_json} AS span_json
FROM s2 JOIN c USING (cid) ORDER BY t, m"""


DNS_KEY = "concat_ws('|', 'dns', node, epoch_ns(ts_query), client_ip, client_port, server_ip, server_port, txid, qname, qtype)"
DNS_ERROR_TYPE = "CASE WHEN rcode IS NULL THEN 'timeout' WHEN rcode <> 0 THEN rcode_name END"
DNS_ATTRS = (
    Attr("dns.question.name", "s", "qname"),
    Attr("dns.answers", "as", "list_transform(list_filter(answers, lambda a: a.type IN ('A', 'AAAA')), lambda a: a.data)"),
    Attr("error.type", "s", DNS_ERROR_TYPE),
    Attr("flowtape.dns.question.type", "s", "qtype_name"),
    Attr("flowtape.dns.response_code", "s", "rcode_name"),
    Attr("server.address", "S", "server_ip"),
    Attr("server.port", "i", "server_port"),
    Attr("network.peer.address", "S", "server_ip"),
    Attr("network.peer.port", "i", "server_port"),
    Attr("network.transport", "s", "transport"),
)
DNS_RESOURCE_COLUMNS = tuple(f"client_{x}" for x in NAME_FIELDS) + ("pid", "comm", "node", "client_ip")


def dns_source_sql(f: Filters) -> str:
    """The DNS lookups of the window, one per exchange, each with its id input `m`."""
    return (f"SELECT *, md5({DNS_KEY}) AS m FROM ftx_dns "
            f"WHERE ({f.time_sql('ts_query')}) AND ({f.namespace_sql('client_namespace')})")


def dns_spans_sql(f: Filters) -> str:
    """The DNS spans (DNS_RESOURCE_COLUMNS, span_json), ordered by time then id."""
    status = (f"CASE WHEN rcode IS NULL THEN ',\"status\":{{\"message\":\"no answer recorded\",\"code\":{STATUS_ERROR}}}' "
              f"WHEN rcode <> 0 THEN ',\"status\":{{\"code\":{STATUS_ERROR}}}' ELSE '' END")
    span_json = (f"concat('{{\"traceId\":\"', {_hex_trace('m')}, '\",\"spanId\":\"', {_hex_span('m')}, '\",\"name\":', to_json('DNS ' || qtype_name), "
                 f"',\"kind\":{SPAN_KIND_CLIENT},\"startTimeUnixNano\":\"', epoch_ns(ts_query), '\",\"endTimeUnixNano\":\"', "
                 f"epoch_ns(coalesce(ts_answer, ts_query)), '\",\"attributes\":', {attributes_json_sql(DNS_ATTRS)}, {status}, '}}')")
    return f"""SELECT hash({', '.join(DNS_RESOURCE_COLUMNS)}) AS rid, {', '.join(DNS_RESOURCE_COLUMNS)}, {span_json} AS span_json
FROM ({dns_source_sql(f)}) ORDER BY ts_query, m"""


def prepare_dns(tape: Tape) -> None:
    tape.enriched("dns").create_view("ftx_dns", replace=True)
