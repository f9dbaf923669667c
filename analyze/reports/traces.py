"""Request journeys: every HTTP exchange side of a tape as a span, linked into causal trees.

A span is one `http` row (one side of one exchange). Two kinds of links make the trees:

- a server span's parent is the client span of its own exchange, found by, in order of trust:
  the traceparent's parent id when it is the id of exactly one client row of the tape (the
  application's own ids; a proxy that forwards the header unchanged, as nginx does, leaves two
  client rows with one id, and the next rules decide); the TCP sequence numbers of the request's
  and response's first bytes (`request_seq`/`response_seq`, shared by the two sides through NAT,
  source `tcp-seq`); for an HTTP/2 stream, its connection as both ends see it (client ip and
  port, server ip: the socket's key) and its stream id, with the nearest request time (source
  `stream`: HTTP/2 rows have no request_seq, and the socket rule's nearest time cannot tell the
  concurrent streams of one connection apart; _stream_pairs); the trace id written into the connection's packets (IPv4 option 136 from
  `record --inject-trace-context ip-option` or OBI, TCP option 25), the same on both rows, with
  the same client port and the nearest request time (source `ip-option`/`tcp-option`: TLS and
  HTTP/2 rows have no request_seq); the connection's socket and the nearest time (pairing.nearest_client_sql,
  the OTLP exporter's rule, source `socket`);
- a client span's parent is the server span of the same process that caused it, by, in order
  of trust: the same trace id (the traceparent's, source `traceparent`, else the connection's
  wire option ids, `ip-option`/`tcp-option`) in a server exchange of that process open at the
  time of the call (the one started last); the same thread (`tid`) in the one server exchange of
  that thread open at the time, when no other is (a thread-per-request server: `thread`; an
  event loop that overlaps exchanges on one thread, as nginx and Node do, gets no link then:
  the call cannot be told apart); the nearest ancestor of the call's goroutine (go_spawns, each
  child g valid from its spawn) that served an exchange open at the time (`goroutine`).

Ids: a client span takes the traceparent's span id when its request carried one (the first
client row carrying it, when a proxy forwarded it); every other span id is the first half of the
md5 of its row (node, side, request time, 4-tuple as the local socket saw it, an HTTP/2 stream's id), the same as the
OTLP exporter's. A tree's trace id is its root's traceparent trace id, else the smallest one in
the tree, else the wire trace id, else the root row's md5: the same tape gives the same traces.

Stitching (the links and ids of every row) is done once per open tape, whatever the filters;
names are given only to the spans selected (naming core: analyze.enrich). Its memory is bounded:
every table of one row per http row is DuckDB's (spilled past its memory_limit); Python holds one
hash partition of sockets for the socket rule (PART_ROWS rows: the rule never pairs rows of two
sockets, so nothing is carried between partitions) and the rows of trees deeper than one link
(the calls caused by requests), whose roots are found by pointer jumping (_build).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ..analysis import Analysis
from ..enrich import EXCHANGE_PKEYS, has_processes, has_substitutions, keyed_sql, name_sql, server_name_sql
from .filters import Filters, check_by
from .pairing import SKEW_NS, nearest_clients

GO_DEPTH = 6
"""How many goroutine generations a call is followed back to the goroutine of its request."""

SOURCES = ("traceparent", "ip-option", "tcp-option", "tcp-seq", "stream", "socket", "thread", "goroutine")

_END = 9_000_000_000_000_000_000  # epoch ns far in the future: "no response recorded"


def _tp_ok(tp: str) -> str:
    return (f"({tp} IS NOT NULL AND regexp_full_match({tp}, '00-[0-9a-f]{{32}}-[0-9a-f]{{16}}-[0-9a-f]{{2}}') "
            f"AND substr({tp}, 4, 32) <> repeat('0', 32) AND substr({tp}, 37, 16) <> repeat('0', 16))")


def _rows_sql(substitutions: bool, wire: bool) -> str:
    """ft_tr_rows: every http row, narrow: what linking needs, as integers where it can (the
    socket and the process as 64-bit hashes), numbered `rid` (scan order: links and the spans'
    ids never depend on it), with what finds the row again (nk, t, cport, cli, sid: the
    HTTP/2 streams of one connection may start at one instant, in one segment); the view
    ft_tr_rows adds rid."""
    subst = "LEFT JOIN ft_conn_subst p ON h.side = 'client' AND h.node = p.client_node AND h.conn_id = p.client_conn_id" if substitutions else ""
    server_ip = "CASE WHEN h.side = 'client' THEN coalesce(p.server_pod_ip, h.server_ip) ELSE h.server_ip END" if substitutions else "h.server_ip"
    wire_join = "LEFT JOIN connections w ON w.node = h.node AND w.conn_id = h.conn_id" if wire else ""
    wire_cols = ("CASE WHEN regexp_full_match(w.wire_trace_id, '[0-9a-f]{32}') THEN w.wire_trace_id END AS wire_trace, w.wire_trace_source AS wire_source"
                 if wire else "NULL::VARCHAR AS wire_trace, NULL::VARCHAR AS wire_source")
    tp = "h.traceparent"
    wire_any = " OR w.wire_trace_id IS NOT NULL" if wire else ""
    return f"""
CREATE OR REPLACE TEMP TABLE ft_tr_rows_t AS
SELECT * FROM (
    SELECT epoch_ns(h.ts_request) AS t, epoch_ns(h.ts_response) AS t1, h.side = 'client' AS cli, hash(h.node) AS nk, h.client_port AS cport,
           hash(h.client_ip, h.client_port, {server_ip}) AS sk,
           -- the process, for the links inside one (only rows that carry something to link by)
           CASE WHEN h.pid IS NOT NULL AND (h.tid IS NOT NULL OR h.goroutine IS NOT NULL OR h.traceparent IS NOT NULL{wire_any})
                THEN hash(h.node, h.pid) END AS pk,
           h.tid, h.goroutine, h.request_seq AS qseq, h.response_seq AS rseq, h.stream_id AS sid,
           CASE WHEN {_tp_ok(tp)} THEN substr({tp}, 4, 32) END AS tp_trace,
           CASE WHEN {_tp_ok(tp)} THEN substr({tp}, 37, 16) END AS tp_span,
           {wire_cols}
    FROM http h {subst} {wire_join}
);
-- rid: the row's number in the table (its rowid: 0..n-1, no numbering pass)
CREATE OR REPLACE TEMP VIEW ft_tr_rows AS SELECT rowid AS rid, * FROM ft_tr_rows_t"""


_XPAIR = """
CREATE OR REPLACE TEMP TABLE ft_tr_xpair AS
WITH
srv AS (SELECT rid, t, t1, sk, tp_trace, tp_span, qseq, rseq FROM ft_tr_facts WHERE NOT cli),
cl AS (SELECT rid, t, t1, sk, tp_trace, tp_span, qseq, rseq FROM ft_tr_facts WHERE cli),
-- the application's ids: a server row whose traceparent names exactly one client row's span
tpc AS (SELECT tp_span, any_value(tp_trace) AS tp_trace, any_value(rid) AS rid, any_value(t) AS t FROM cl WHERE tp_span IS NOT NULL
        GROUP BY tp_span HAVING count(*) = 1),
a AS (SELECT s.rid, c.rid AS prid, 1 AS prio, 'traceparent' AS source FROM srv s JOIN tpc c ON s.tp_span = c.tp_span AND s.tp_trace = c.tp_trace
      WHERE abs(s.t - c.t) <= {skew}),
-- the same request bytes: the TCP sequence numbers of the request (and response) first byte
b0 AS (SELECT s.rid, c.rid AS prid FROM (SELECT * FROM srv WHERE qseq IS NOT NULL) s
       JOIN (SELECT * FROM cl WHERE qseq IS NOT NULL) c ON s.qseq = c.qseq
        AND abs(s.t - c.t) <= {skew} AND (s.rseq IS NULL OR c.rseq IS NULL OR s.rseq = c.rseq)),
b AS (SELECT rid, prid, 2 AS prio, 'tcp-seq' AS source FROM b0
      WHERE rid IN (SELECT rid FROM b0 GROUP BY rid HAVING count(*) = 1) AND prid IN (SELECT prid FROM b0 GROUP BY prid HAVING count(*) = 1)),
-- the same connection on two nodes: the trace id written into its packets (ip-option: --inject-trace-context gives one per
-- connection; OBI one per trace, hence the client port too, which DNAT keeps) on both rows, and the nearest request in it.
-- For TLS and HTTP/2 rows, which have no request_seq, and through NAT, where the socket rule's 4-tuple differs.
w0 AS (SELECT s.rid, c.rid AS prid, s.wire_source AS source, abs(s.t - c.t) AS d
       FROM (SELECT rid, t, cport, wire_trace, wire_source FROM ft_tr_facts WHERE NOT cli AND wire_trace IS NOT NULL) s
       JOIN (SELECT rid, t, cport, wire_trace FROM ft_tr_facts WHERE cli AND wire_trace IS NOT NULL) c
         ON s.wire_trace = c.wire_trace AND s.cport = c.cport AND abs(s.t - c.t) <= {skew}),
w AS (SELECT rid, arg_min(prid, d) AS prid, 4 AS prio, any_value(source) AS source FROM w0 GROUP BY rid),
{stream}
-- (the same socket and the nearest time, the OTLP exporter's rule, comes last: pairing.nearest_clients)
SELECT rid, arg_min(prid, prio) AS prid, arg_min(source, prio) AS source
FROM (SELECT * FROM a UNION ALL SELECT * FROM b UNION ALL SELECT * FROM h2 UNION ALL SELECT * FROM w) GROUP BY rid
"""


def _stream_pairs(skew: int) -> str:
    """The CTEs `h2s` and `h2` of ft_tr_xpair: a server row of an HTTP/2 stream -> the client row of
    the same stream: the same connection as both ends see it (`sk`: client ip and port, server ip,
    the client's after DNAT's substitution) and the same stream id, the nearest request time
    within the skew (a 4-tuple that a later connection reuses starts at stream 1 again); a client
    row claimed by two server rows (a stream recorded twice) pairs neither. Source `stream`, after
    tcp-seq (which HTTP/2 rows never carry) and before the wire's trace ids (one per connection)."""
    return f"""h2s AS (SELECT s.rid, c.rid AS prid, abs(s.t - c.t) AS d
        FROM (SELECT rid, t, sk, sid FROM ft_tr_facts WHERE NOT cli AND sid IS NOT NULL) s
        JOIN (SELECT rid, t, sk, sid FROM ft_tr_facts WHERE cli AND sid IS NOT NULL) c ON s.sk = c.sk AND s.sid = c.sid AND abs(s.t - c.t) <= {skew}),
h2n AS (SELECT rid, arg_min(prid, d) AS prid FROM h2s GROUP BY rid),
h2 AS (SELECT rid, prid, 3 AS prio, 'stream' AS source FROM h2n WHERE prid IN (SELECT prid FROM h2n GROUP BY prid HAVING count(*) = 1))"""


def _cause_sql(goroutines: bool) -> str:
    """ft_tr_cause: client rid -> the server rid of the same process (`pk`) that made the call."""
    go = ""
    if goroutines:
        # each generation: the goroutine that spawned g (its latest spawn before the call, at `born`),
        # and a server exchange of that goroutine open at the call and at that spawn
        levels = ["g0 AS (SELECT rid, pk, t, goroutine AS g, NULL::BIGINT AS born, 0 AS k FROM cl WHERE goroutine IS NOT NULL)"]
        for k in range(1, GO_DEPTH + 1):
            levels.append(f"""g{k} AS (SELECT c.rid, c.pk, c.t, sp.parent_g AS g, sp.st AS born, {k} AS k FROM g{k - 1} c
    ASOF JOIN (SELECT hash(node, pid) AS pk, child_g, parent_g, epoch_ns(ts) AS st FROM go_spawns) sp
      ON c.pk = sp.pk AND c.g = sp.child_g AND c.t >= sp.st)""")
        gs = " UNION ALL ".join(f"SELECT * FROM g{k}" for k in range(GO_DEPTH + 1))
        go = f""",
{', '.join(levels)},
ga AS ({gs}),
sg AS (SELECT pk, goroutine AS g, t, coalesce(t1, {_END}) AS e, rid FROM ft_tr_facts WHERE NOT cli AND goroutine IS NOT NULL AND pk IS NOT NULL),
gm AS (SELECT c.rid, s.rid AS prid, c.k, c.born, s.t AS st, s.e FROM ga c ASOF JOIN sg s ON c.pk = s.pk AND c.g = s.g AND c.t >= s.t
       WHERE c.t <= s.e),
-- the goroutine that served the exchange spawned the call's line while serving it (g pointers are reused)
gr AS (SELECT rid, arg_min(prid, k) AS prid, 6 AS prio, 'goroutine' AS source FROM gm WHERE born IS NULL OR born BETWEEN st AND e GROUP BY rid)"""
    union = " UNION ALL SELECT * FROM gr" if goroutines else ""
    return f"""
CREATE OR REPLACE TEMP TABLE ft_tr_cause AS
WITH
cl AS (SELECT rid, pk, tid, goroutine, t, coalesce(tp_trace, wire_trace) AS ctx,
              CASE WHEN tp_trace IS NOT NULL THEN 'traceparent' ELSE wire_source END AS ctx_source
       FROM ft_tr_facts WHERE cli AND pk IS NOT NULL),
sx AS (SELECT pk, coalesce(tp_trace, wire_trace) AS ctx, t, coalesce(t1, {_END}) AS e, rid FROM ft_tr_facts
       WHERE NOT cli AND pk IS NOT NULL AND coalesce(tp_trace, wire_trace) IS NOT NULL),
x AS (SELECT c.rid, s.rid AS prid, CASE c.ctx_source WHEN 'traceparent' THEN 1 WHEN 'ip-option' THEN 2 ELSE 3 END AS prio, c.ctx_source AS source
      FROM (SELECT * FROM cl WHERE ctx IS NOT NULL) c ASOF JOIN sx s ON c.pk = s.pk AND c.ctx = s.ctx AND c.t >= s.t
      WHERE c.t <= s.e),
st AS (SELECT pk, tid, t, e, rid,
              max(e) OVER (PARTITION BY pk, tid ORDER BY t, rid ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_e
       -- (not Go's sides: a goroutine moves between threads and another one writes a client's request)
       FROM (SELECT pk, tid, t, coalesce(t1, {_END}) AS e, rid FROM ft_tr_facts WHERE NOT cli AND tid IS NOT NULL AND goroutine IS NULL AND pk IS NOT NULL)),
th AS (SELECT c.rid, s.rid AS prid, 5 AS prio, 'thread' AS source
       FROM (SELECT * FROM cl WHERE tid IS NOT NULL AND goroutine IS NULL) c ASOF JOIN st s ON c.pk = s.pk AND c.tid = s.tid AND c.t >= s.t
       -- inside that exchange, and no other exchange of the thread still open then (an event loop)
       WHERE c.t <= s.e AND (s.prev_e IS NULL OR s.prev_e < c.t)){go}
SELECT rid, arg_min(prid, prio) AS prid, arg_min(source, prio) AS source
FROM (SELECT * FROM x UNION ALL SELECT * FROM th{union}) GROUP BY rid
"""


def _roots(parent: np.ndarray) -> np.ndarray:
    """The root of every row of a forest given each row's parent (-1: none), by pointer jumping.
    A cycle (clock skew can make two links point at each other) is cut: its rows are roots."""
    n = len(parent)
    idx = np.arange(n)
    up = np.where(parent >= 0, parent, idx)
    for _ in range(64):
        nxt = up[up]
        if np.array_equal(nxt, up):
            break
        up = nxt
    stuck = up[up] != up
    return np.where(stuck, idx, up)


def stitch(a: Analysis) -> str:
    """The name of the temporary table of every row's link (built once per open tape): rid, prid (the
    parent's rid, -1 for a root), root (the root's rid), src (the link's source: source_sql),
    root_t and root_ns (a root's start and duration). ft_tr_rows holds the rows."""
    return a.cached("traces", "all", lambda name: _build(a, name))


def _count(a: Analysis, sql: str) -> int:
    return a.sql(sql).fetchall()[0][0]


PART_ROWS = 1_000_000
"""Rows per partition of the socket rule (pairing.nearest_clients runs on one at a time): what
bounds the stitching's memory outside DuckDB (about 100 bytes per row of a partition)."""


def _build(a: Analysis, name: str, part_rows: int = PART_ROWS) -> None:
    """The stitch table `name`, with memory bounded: every per-row table is DuckDB's (which
    spills past its memory_limit); Python holds one partition of the socket rule at a time (the
    rows of the sockets whose hash falls in it: a socket's rows are all in one partition, so no
    row's pair crosses a partition edge and nothing is carried over), the links of the other
    rules (rows that carry facts: a few percent) and the rows of the trees deeper than one link
    (the caused calls), whose roots are found in numpy. Each partition appends its rows' final
    links (a row's root is its parent, or itself), less the rows that may be in a deeper tree,
    which are held and appended last with their roots: no join of every row, no UPDATE (DuckDB's
    costs ~20 us a row)."""
    _rules(a)
    con = a.con
    ov_rid, ov_prid, ov_src, cause = _overrides(a)
    callers = np.sort(ov_rid[cause])  # client rows with a parent: parents that may have one
    targets = np.unique(ov_prid[cause])  # server rows that caused a call: parents that may have one
    near = np.unique(np.concatenate([callers, targets]))
    n = _count(a, "SELECT count(*) FROM ft_tr_rows_t")
    parts = max(1, -(-n // max(1, part_rows)))
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} (rid BIGINT, prid BIGINT, root BIGINT, src TINYINT, root_t BIGINT, root_ns BIGINT)")
    held = []  # rows that may be in a tree deeper than one link, or its parents: written last, with their roots
    sock = SOURCES.index("socket")
    for k in range(parts):
        # in rowid order (a scan keeps it): ties at one instant are broken as over the whole table
        where = f"WHERE sk % {parts} = {k}" if parts > 1 else ""
        cols = con.execute(f"SELECT rowid AS rid, sk, t, coalesce(t1, -1) AS t1, cli FROM ft_tr_rows_t {where}").fetchnumpy()
        rid = cols["rid"].astype(np.int64)
        t, t1 = cols["t"].astype(np.int64), cols["t1"].astype(np.int64)
        par = nearest_clients(cols["sk"], t, t1, cols["cli"])
        del cols
        linked = par >= 0
        prid = np.where(linked, rid[np.maximum(par, 0)], -1)
        src = np.where(linked, sock, -1).astype(np.int8)
        del par, linked
        if len(ov_rid):
            pos = np.minimum(np.searchsorted(ov_rid, rid), len(ov_rid) - 1)
            hit = ov_rid[pos] == rid
            prid[hit], src[hit] = ov_prid[pos[hit]], ov_src[pos[hit]]
            keep = (prid >= 0) & (_isin(prid, near) | _isin(rid, near))
            if keep.any():
                held.append(pl.DataFrame({"rid": rid[keep], "prid": prid[keep], "src": src[keep], "t": t[keep], "t1": t1[keep]}))
                rest = ~keep
                rid, prid, src, t, t1 = rid[rest], prid[rest], src[rest], t[rest], t1[rest]
        _insert(con, name, rid, prid, np.where(prid < 0, rid, prid), src, t, t1)
        del rid, prid, src, t, t1
    if held:
        h = pl.concat(held)
        del held
        fix = _deep_roots(h["rid"].to_numpy(), h["prid"].to_numpy())
        h = h.join(fix, on="rid", how="left").with_columns(pl.col("cut").fill_null(False))
        # a moved row keeps its link, its root further up; a cut row (a cycle's) becomes a root
        h = h.with_columns(pl.when("cut").then(-1).otherwise("prid").alias("prid"), pl.when("cut").then(-1).otherwise("src").cast(pl.Int8).alias("src"),
                           pl.col("root").fill_null(pl.col("prid")))
        _insert(con, name, h["rid"].to_numpy(), h["prid"].to_numpy(), h["root"].to_numpy(), h["src"].to_numpy(), h["t"].to_numpy(), h["t1"].to_numpy())


def _insert(con, name: str, rid: np.ndarray, prid: np.ndarray, root: np.ndarray, src: np.ndarray, t: np.ndarray, t1: np.ndarray) -> None:
    """Append final links to the stitch table: a root's start and duration (null: not a root, or no response)."""
    is_root = root == rid
    part = pl.DataFrame({"rid": rid, "prid": prid, "root": root, "src": src, "root_t": t, "root_ns": t1 - t, "ok": is_root, "done": is_root & (t1 >= 0)})
    part = part.select("rid", "prid", "root", "src", pl.when("ok").then("root_t").alias("root_t"), pl.when("done").then("root_ns").alias("root_ns"))
    con.register("ft_tr_part_df", part)
    con.execute(f"INSERT INTO {name} SELECT * FROM ft_tr_part_df")
    con.unregister("ft_tr_part_df")


def _overrides(a: Analysis) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The links of the more trusted rules, over the socket's, sorted by rid: rid, prid, src (index
    in SOURCES) and whether it is a cause link (a client row's). A row is a client (cause) or a
    server (xpair) row, never both."""
    codes = "[" + ", ".join(f"'{x}'" for x in SOURCES) + "]"
    ov = a.con.execute(f"""SELECT rid, prid, (list_position({codes}, source) - 1)::TINYINT AS src, cause FROM (
        SELECT rid, prid, source, false AS cause FROM ft_tr_xpair UNION ALL SELECT rid, prid, source, true FROM ft_tr_cause) ORDER BY rid""").fetchnumpy()
    return ov["rid"].astype(np.int64), ov["prid"].astype(np.int64), ov["src"].astype(np.int8), ov["cause"].astype(bool)


def _deep_roots(rid: np.ndarray, prid: np.ndarray) -> pl.DataFrame:
    """The rows whose root is not their parent (nor themselves): rid, root, cut (the link was cut:
    a cycle made the row a root). `rid`/`prid`: the links of the rows that may be in a tree
    deeper than one link, and of their parents. A row without a parent is its own root, a row
    whose parent has none hangs from that parent; only the rows whose parent has a parent (a
    caller, or a server that caused a call and was linked itself) need pointer jumping, done on
    them and their ancestors alone (the same jumps as over the whole forest: a row's result
    depends on its ancestors only)."""
    linked = np.unique(rid)
    deep = _isin(prid, linked)
    closure = np.unique(np.concatenate([rid[deep], prid[deep]]))
    inside = _isin(rid, closure)
    rid, prid = rid[inside], prid[inside]
    nodes = np.unique(np.concatenate([rid, prid]))
    local = np.full(len(nodes), -1, np.int64)
    local[np.searchsorted(nodes, rid)] = np.searchsorted(nodes, prid)
    root = nodes[_roots(local)]
    moved = root != nodes
    cut = rid[~_isin(rid, nodes[moved])]  # rows whose link was cut (a cycle made them roots)
    return pl.DataFrame({"rid": np.concatenate([nodes[moved], cut]).astype(np.int64), "root": np.concatenate([root[moved], cut]).astype(np.int64),
                         "cut": np.concatenate([np.zeros(moved.sum(), bool), np.ones(len(cut), bool)])})


def _isin(x: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Whether each value of x is in sorted_set (sorted, unique)."""
    if len(sorted_set) == 0:
        return np.zeros(len(x), bool)
    pos = np.minimum(np.searchsorted(sorted_set, x), len(sorted_set) - 1)
    return sorted_set[pos] == x


def _rules(a: Analysis) -> None:
    """ft_tr_rows (every http row, narrow), ft_tr_facts (those that carry something more than
    their socket to link by) and the links of every rule but the socket's: ft_tr_xpair (server
    rows: traceparent, TCP seq) and ft_tr_cause (client rows: trace id, thread, goroutine)."""
    con = a.con
    wire = _count(a, "SELECT count(*) FROM (SELECT 1 FROM connections WHERE wire_trace_id IS NOT NULL LIMIT 1)") > 0
    con.execute(_rows_sql(has_substitutions(con), wire))
    con.execute("""CREATE OR REPLACE TEMP TABLE ft_tr_facts AS SELECT * FROM ft_tr_rows
        WHERE tp_span IS NOT NULL OR qseq IS NOT NULL OR sid IS NOT NULL OR tid IS NOT NULL OR goroutine IS NOT NULL OR wire_trace IS NOT NULL""")
    con.execute(_XPAIR.format(skew=SKEW_NS, stream=_stream_pairs(SKEW_NS)))
    goroutines = _count(a, "SELECT count(*) FROM (SELECT 1 FROM ft_tr_facts WHERE goroutine IS NOT NULL LIMIT 1)") > 0
    con.execute(_cause_sql(goroutines))


def _build_whole(a: Analysis, name: str) -> None:
    """The stitch table `name` as the first version made it, every row's arrays in numpy at once
    (about 190 bytes per row): the reference _build is checked equal to (tests/test_traces.py)."""
    _rules(a)
    cols = a.con.execute("SELECT sk, t, coalesce(t1, -1) AS t1, cli FROM ft_tr_rows_t").fetchnumpy()  # in rowid order
    n = len(cols["t"])
    parent = nearest_clients(cols["sk"], cols["t"], cols["t1"], cols["cli"])
    t, t1 = cols["t"], cols["t1"]
    del cols
    source = np.where(parent >= 0, SOURCES.index("socket"), -1).astype(np.int8)  # index into SOURCES
    codes = "[" + ", ".join(f"'{x}'" for x in SOURCES) + "]"
    for table in ("ft_tr_cause", "ft_tr_xpair"):  # a row is a client (cause) or a server (xpair) row: never both
        links = a.sql(f"SELECT rid, prid, (list_position({codes}, source) - 1)::TINYINT AS src FROM {table}").pl()
        rid = links["rid"].to_numpy()
        parent[rid] = links["prid"].to_numpy()
        source[rid] = links["src"].to_numpy()
    root = _roots(parent)
    idx = np.arange(n)
    parent = np.where((parent >= 0) & (root == idx), -1, parent)  # a row left a root by cutting a cycle
    forest = pl.DataFrame({"rid": idx, "prid": parent, "root": root, "src": np.where(parent >= 0, source, -1).astype(np.int8),
                           "root_t": np.where(root == idx, t, -1), "root_ns": np.where((root == idx) & (t1 >= 0), t1 - t, -1)})
    forest = forest.with_columns(pl.when(pl.col("root_t") >= 0).then(pl.col("root_t")).alias("root_t"),
                                 pl.when(pl.col("root_ns") >= 0).then(pl.col("root_ns")).alias("root_ns"))
    a.con.register("ft_tr_forest_df", forest)
    a.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM ft_tr_forest_df")
    a.con.unregister("ft_tr_forest_df")


def source_sql(col: str) -> str:
    """The name of a link's source from its index in SOURCES (the stitch table's `src`)."""
    return "CASE WHEN {c} >= 0 THEN [{names}][{c} + 1] END".format(c=col, names=", ".join(f"'{x}'" for x in SOURCES))


def traces(a: Analysis, by: str = "workload", filters: Filters | None = None, trace_id: str | None = None,
           slowest: int | None = None, min_spans: int = 1) -> pl.DataFrame:
    """One row per span: trace_id, span_id, parent_span_id (null for a root), kind, client, server
    (named `by`), start, duration_ms, status, method, path, source (of the link to its parent),
    and the row's node, pid, tid and socket. A trace is kept whole when its root started inside
    the time filter, one of its spans has an endpoint in the namespace, it is `trace_id` or one
    of the `slowest` (by root duration), and it has at least `min_spans` spans. Ordered by trace
    (root start; with `slowest`, the slowest first), then span start."""
    check_by(by)
    f = filters or Filters()
    st = stitch(a)
    where = [f.time_sql("make_timestamp_ns(l.root_t)::TIMESTAMPTZ_NS")] if f.since or f.until else []
    if min_spans > 1:
        where.append(f"l.root IN (SELECT root FROM {st} GROUP BY root HAVING count(*) >= {int(min_spans)})")
    if trace_id is not None:
        # the trees that may carry that id: a row of it carries it, or (a derived id) no row carries any
        where.append(f"(l.root IN (SELECT l2.root FROM {st} l2 JOIN ft_tr_rows r2 ON r2.rid = l2.rid WHERE r2.tp_trace = $tid OR r2.wire_trace = $tid) "
                     f"OR l.root NOT IN (SELECT l3.root FROM {st} l3 JOIN ft_tr_rows r3 ON r3.rid = l3.rid WHERE r3.tp_trace IS NOT NULL OR r3.wire_trace IS NOT NULL))")
    top = f"ORDER BY root_ns DESC NULLS LAST, root_t, root LIMIT {int(slowest)}" if slowest is not None and not f.namespace and trace_id is None else ""
    a.con.execute(f"""CREATE OR REPLACE TEMP TABLE ft_tr_pick AS
        SELECT l.root, l.root_t, l.root_ns FROM {st} l WHERE {' AND '.join(["l.root_t IS NOT NULL"] + where)} {top}""",
                  {"tid": trace_id.lower()} if trace_id is not None else None)
    df = _named(a, st, by, slowest is not None)
    if trace_id is not None:
        df = df.filter(pl.col("trace_id") == trace_id.lower())
    if f.namespace:
        ns = f.namespace_sql("client_namespace", "server_namespace")
        a.con.register("ft_tr_named_df", df)
        keep = a.sql(f"SELECT DISTINCT root FROM ft_tr_named_df WHERE {ns}").pl()["root"]
        a.con.unregister("ft_tr_named_df")
        df = df.filter(pl.col("root").is_in(keep.implode()))
    if slowest is not None and (f.namespace or trace_id is not None):
        top = (df.filter(pl.col("rid") == pl.col("root")).sort(["duration_ms", "start", "trace_id"], descending=[True, False, False], nulls_last=True)
               .head(int(slowest))["root"])
        df = df.filter(pl.col("root").is_in(top.implode()))
    return df.drop("client_namespace", "server_namespace", "rid", "root")


def span_ids(a: Analysis) -> str:
    """The name of a temporary table of every http row's ids, keyed by `m`, the md5 its span id
    derives from (the OTLP exporter's row key: node|side|request ns|client ip|client port|server
    ip|server port as the socket saw it|the HTTP/2 stream id, for a stream): m, trace_id, span_id, parent_span_id, parent_m (the
    parent's row key: for a server row, the client row of its exchange), source. What the OTLP
    exporter's spans take their ids from (analyze.export.spans.HttpSides.build), and how it finds
    the client side of a server side it names. A key two rows share (one node, side, request
    nanosecond and socket: rows no id can tell apart) is listed once."""
    st = stitch(a)
    a.con.execute(f"CREATE OR REPLACE TEMP TABLE ft_tr_pick AS SELECT root, root_t, root_ns FROM {st} WHERE root_t IS NOT NULL")
    _select(a, st, lean=True)
    a.con.execute("""CREATE OR REPLACE TEMP TABLE ft_tr_span_ids AS
        SELECT s.m, min(i.trace_id) AS trace_id, min(i.span_id) AS span_id, min(i.parent_span_id) AS parent_span_id,
               min(i.parent_m) AS parent_m, min(s.source) AS source
        FROM ft_tr_sel s JOIN ft_tr_ids i USING (rid) GROUP BY s.m""")
    # the scratch tables are every row of the tape, wide: gone now, not at the next report (the
    # exporter holds its own copies of the rows while it runs)
    for scratch in ("ft_tr_sel", "ft_tr_ids", "ft_tr_pick"):
        a.con.execute(f"DROP TABLE IF EXISTS {scratch}")
    return "ft_tr_span_ids"


def _named(a: Analysis, st: str, by: str, slowest_first: bool = False) -> pl.DataFrame:
    """The spans of the picked traces with their ids and names (analyze.enrich's core)."""
    processes = _select(a, st)
    named = _exchange_names_sql("(SELECT s.*, i.span_id, i.parent_span_id, i.trace_id FROM ft_tr_sel s JOIN ft_tr_ids i USING (rid))",
                                has_substitutions(a.con), processes)
    return a.sql(f"""
SELECT trace_id, span_id, parent_span_id, side AS kind, {name_sql('client', by)} AS client, {server_name_sql(by)} AS server,
       ts AS start, (t1 - t) / 1e6 AS duration_ms, status, method, path, source, node, pid, tid,
       client_ip, client_port, seen_server_ip AS server_ip, server_port, client_namespace, server_namespace, rid, root
FROM ({named}) ORDER BY {"root_ns DESC NULLS LAST, " if slowest_first else ""}root_t, trace_id, t, parent_span_id IS NOT NULL, kind, span_id""").pl()


def _select(a: Analysis, st: str, lean: bool = False) -> bool:
    """ft_tr_sel: the rows of the picked traces (ft_tr_pick) found again in `http` (by node, side,
    request time and client port), and ft_tr_ids: their ids. Returns whether rows carry process keys.
    lean: only what the ids and the row key `m` need (span_ids: every row of the tape, where
    reading the names' and processes' columns back cost a third of the select)."""
    if lean:
        a.con.execute(f"""CREATE OR REPLACE TEMP TABLE ft_tr_sel AS
            WITH s AS (SELECT r.rid, r.t, r.cport, r.cli, r.nk, r.sid, r.tp_trace, r.tp_span, r.wire_trace, l.prid, l.root, {source_sql('l.src')} AS source
                       FROM ft_tr_pick p JOIN {st} l ON l.root = p.root JOIN ft_tr_rows r ON r.rid = l.rid)
            SELECT s.rid, s.t, s.prid, s.root, s.source, s.tp_trace, s.tp_span, s.wire_trace, s.cli,
                   md5(concat_ws('|', h.node, h.side, s.t, h.client_ip, h.client_port, h.server_ip, h.server_port, h.stream_id)) AS m
            FROM s JOIN http h ON epoch_ns(h.ts_request) = s.t AND h.client_port = s.cport AND (h.side = 'client') = s.cli AND hash(h.node) = s.nk
                           AND h.stream_id IS NOT DISTINCT FROM s.sid""")
        _ids(a)
        return False
    processes = has_processes(a.con)
    pk = "LEFT JOIN ft_conn_pkeys pk ON pk.node = h.node AND pk.conn_id = h.conn_id" if processes else ""
    pkc = "pk.client_pkey, pk.server_pkey" if processes else "NULL::INTEGER AS client_pkey, NULL::INTEGER AS server_pkey"
    subst = "LEFT JOIN ft_conn_subst cs ON h.side = 'client' AND h.node = cs.client_node AND h.conn_id = cs.client_conn_id" if has_substitutions(a.con) else ""
    server_ip = "CASE WHEN h.side = 'client' THEN coalesce(cs.server_pod_ip, h.server_ip) ELSE h.server_ip END" if subst else "h.server_ip"
    a.con.execute(f"""CREATE OR REPLACE TEMP TABLE ft_tr_sel AS
        WITH s AS (SELECT r.*, l.prid, l.root, {source_sql('l.src')} AS source, p.root_t, p.root_ns FROM ft_tr_pick p JOIN {st} l ON l.root = p.root JOIN ft_tr_rows r ON r.rid = l.rid)
        SELECT h.ts_request AS ts, s.rid, s.t, s.t1, s.prid, s.root, s.source, s.root_t, s.root_ns, s.tp_trace, s.tp_span, s.wire_trace, s.cli,
               h.side, h.node, h.pid, h.tid, h.conn_id, h.client_ip, h.client_port, {server_ip} AS server_ip, h.server_ip AS seen_server_ip, h.server_port,
               h.method, h.path, h.status,
               md5(concat_ws('|', h.node, h.side, s.t, h.client_ip, h.client_port, h.server_ip, h.server_port, h.stream_id)) AS m, {pkc}
        FROM s JOIN http h ON epoch_ns(h.ts_request) = s.t AND h.client_port = s.cport AND (h.side = 'client') = s.cli AND hash(h.node) = s.nk
                       AND h.stream_id IS NOT DISTINCT FROM s.sid
        {subst} {pk}""")
    _ids(a)
    return processes


def _ids(a: Analysis) -> None:
    """ft_tr_ids: the ids of ft_tr_sel's rows. A client span takes its request's traceparent span
    id when it is the first client row of the tape to carry it; a tree's trace id is its root's
    traceparent's, else the smallest in the tree, else a wire trace id, else the root row's md5."""
    a.con.execute("""CREATE OR REPLACE TEMP TABLE ft_tr_ids AS
        WITH firsts AS (SELECT tp_span, arg_min(rid, (t, nk)) AS rid FROM ft_tr_rows
                        WHERE cli AND tp_span IN (SELECT tp_span FROM ft_tr_sel WHERE cli AND tp_span IS NOT NULL) GROUP BY tp_span),
        ids AS (SELECT s.rid, s.m, CASE WHEN fi.rid IS NOT NULL THEN s.tp_span ELSE left(s.m, 16) END AS span_id FROM ft_tr_sel s LEFT JOIN firsts fi ON fi.rid = s.rid),
        tr AS (SELECT root, min(tp_trace) AS any_tp, min(wire_trace) AS any_wire FROM ft_tr_sel GROUP BY root)
        SELECT s.rid, i.span_id, p.span_id AS parent_span_id, p.m AS parent_m, coalesce(r.tp_trace, tr.any_tp, r.wire_trace, tr.any_wire, r.m) AS trace_id
        FROM ft_tr_sel s JOIN ids i ON i.rid = s.rid LEFT JOIN ids p ON p.rid = s.prid JOIN tr ON tr.root = s.root JOIN ft_tr_sel r ON r.rid = s.root""")


def _exchange_names_sql(base: str, substitutions: bool, processes: bool) -> str:
    """Rows of `base` (ts, client_ip, server_ip, seen_server_ip, pkeys) named: enrich's
    named_exchanges_sql, but keeping the socket's server IP (`seen_server_ip`) as it was."""
    pkeys = EXCHANGE_PKEYS if processes else None
    if substitutions:
        return keyed_sql(base, "ts", [("client", "client_ip"), ("server", "server_ip"), ("seen", "seen_server_ip")], pkeys=pkeys)
    from ..enrich import ENDPOINT_FIELDS, PROCESS_FIELDS

    seen = ", ".join(f"server_{x} AS seen_{x}" for x in ENDPOINT_FIELDS + PROCESS_FIELDS)
    return f"SELECT *, {seen} FROM ({keyed_sql(base, 'ts', [('client', 'client_ip'), ('server', 'server_ip')], pkeys=pkeys)})"


def _times(spans: pl.DataFrame) -> dict[str, tuple[float, float, str | None]]:
    """span id -> (start ns, end ns, parent id); a span without a response ends at its start."""
    out = {}
    cols = spans.select("span_id", "parent_span_id", pl.col("start").dt.epoch("ns"), "duration_ms")
    for sid, par, s, d in cols.iter_rows():
        out[sid] = (s, s + round((d or 0.0) * 1e6), par)
    return out


def critical_path(spans: pl.DataFrame) -> list[str]:
    """The span ids of one trace's critical path, in time order (root first): from the end of a
    span back to its start, the child that ended last (what the span waited for last), then
    before that child began the one that ended last before it, and so on, each child's own
    critical path included. Spans without a response end at their start."""
    if spans.is_empty():
        return []
    tm = _times(spans)
    kids: dict[str, list[str]] = {}
    for sid, (_, _, par) in tm.items():
        if par in tm:
            kids.setdefault(par, []).append(sid)
    roots = sorted((s for s, (_, _, p) in tm.items() if p not in tm), key=lambda s: (tm[s][0], s))
    path: list[str] = []
    seen: set[str] = set()

    def walk(sid: str) -> None:
        if sid in seen:
            return
        seen.add(sid)
        path.append(sid)
        left = kids.get(sid, [])
        # a child seen ending after its parent (clocks of two nodes) still ends the parent's wait
        t = max([tm[sid][1]] + [tm[k][1] for k in left])
        chosen: list[str] = []
        while True:
            before = [k for k in left if tm[k][1] <= t and k not in chosen]
            if not before:
                break
            k = max(before, key=lambda k: (tm[k][1], -tm[k][0], k))
            chosen.append(k)
            t = tm[k][0]
        for k in sorted(chosen, key=lambda k: (tm[k][0], k)):
            walk(k)

    if roots:
        walk(roots[0])
    return path


def slowest_step(spans: pl.DataFrame, path: list[str]) -> tuple[str, float] | None:
    """The span of the critical path that explains most of the latency: the largest time of its
    own (its duration less its children's on the path), with that time in ms."""
    if not path:
        return None
    tm = _times(spans)
    on = set(path)
    own = {}
    for sid in path:
        s, e, _ = tm[sid]
        own[sid] = (e - s) - sum(tm[k][1] - tm[k][0] for k in path if tm[k][2] == sid and k in on)
    best = max(path, key=lambda k: (own[k], k))
    return best, own[best] / 1e6
