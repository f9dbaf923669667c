"""The traces view (analyze.reports.traces) rebuilds the call trees that `flowtape synth
--journeys` wrote and listed in truth.json: every link right and none missing (precision and
recall 1.0), with the applications' traceparent and, stripped of it, from TCP sequence numbers
and threads alone. Plus the view's ids, filters and command line."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest

import flowtape
from flowtape.capture.synth import Params, read_truth, synthesize
from flowtape.cli import main

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture(scope="module")
def journeys(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("j") / "journeys.tape"
    synthesize(out, Params(seed=5, duration_ns=30 * 10**9, rps=20.0, journeys=4.0))
    return out


@pytest.fixture(scope="module")
def journeys_bare(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("jb") / "bare.tape"
    synthesize(out, Params(seed=5, duration_ns=30 * 10**9, rps=20.0, journeys=4.0, journeys_traceparent=False))
    return out


def _keys(df: pl.DataFrame) -> pl.DataFrame:
    """Each span with the truth's key of its row and of its parent's row."""
    df = df.with_columns(key=pl.concat_str([pl.col("node"), pl.col("kind"), pl.col("start").dt.epoch("ns").cast(pl.String),
                                            pl.col("client_ip"), pl.col("client_port").cast(pl.String)], separator="|"))
    parents = df.select(pl.col("trace_id"), pl.col("span_id").alias("parent_span_id"), pl.col("key").alias("parent_key"))
    return df.join(parents, on=["trace_id", "parent_span_id"], how="left")


def _truth_links(tape: Path) -> dict[str, str | None]:
    return {s["key"]: s["parent"] for j in read_truth(tape)["journeys"]["journeys"] for s in j["spans"]}


def _check_trees(tape: Path) -> pl.DataFrame:
    truth = _truth_links(tape)
    assert len(truth) > 300
    got = _keys(flowtape.open(tape).report.traces())
    mine = got.filter(pl.col("key").is_in(list(truth)))
    assert mine.height == len(truth)  # every journey span is a span of the view, once
    found = dict(zip(mine["key"], mine["parent_key"]))
    links = {k: p for k, p in truth.items() if p is not None}
    right = sum(found[k] == p for k, p in links.items())
    wrong = sum(found[k] is not None and found[k] != truth[k] for k in found)
    assert right == len(links)  # recall 1.0
    assert wrong == 0  # precision 1.0
    # the roots of the journeys are roots of the view, and nothing else hangs below a journey span
    assert all(found[k] is None for k, p in truth.items() if p is None)
    assert got.filter(pl.col("parent_key").is_in(list(truth)) & ~pl.col("key").is_in(list(truth))).is_empty()
    # one trace per journey
    by_trace = mine.group_by("trace_id").agg(pl.col("key"))
    assert by_trace.height == read_truth(tape)["journeys"]["count"]
    return mine


def test_traceparent_trees_equal_the_truth(journeys):
    mine = _check_trees(journeys)
    truth = read_truth(journeys)["journeys"]["journeys"]
    # the applications' ids: trace ids and client span ids are the propagated ones
    want = {s["key"]: (j["trace_id"], s["span_id"]) for j in truth for s in j["spans"]}
    for key, trace, span, kind in mine.select("key", "trace_id", "span_id", "kind").iter_rows():
        assert trace == want[key][0]
        if kind == "client":
            assert span == want[key][1]
    assert set(mine["source"].drop_nulls()) == {"traceparent"}


def test_without_traceparent_seq_and_threads_give_the_same_trees(journeys_bare):
    mine = _check_trees(journeys_bare)
    src = dict(mine.group_by("kind").agg(pl.col("source").drop_nulls().unique()).iter_rows())
    assert set(src["server"]) == {"tcp-seq"}
    assert set(src["client"]) == {"thread"}


def test_socket_rule_alone_pairs_each_server_side_with_its_client(journeys_bare, tmp_path):
    """Exchanges of the regular traffic (no seq, no tid) are paired by socket and nearest time:
    each server span's parent is a client span with the same socket."""
    df = _keys(flowtape.open(journeys_bare).report.traces())
    srv = df.filter((pl.col("kind") == "server") & (pl.col("source") == "socket"))
    assert srv.height > 1000
    cp = srv["parent_key"].str.split("|")
    assert (srv["client_port"].cast(pl.String) == cp.list.get(4)).all()
    assert (srv["client_ip"] == cp.list.get(3)).all()


def test_same_tape_same_ids(journeys_bare):
    a = flowtape.open(journeys_bare).report.traces()
    b = flowtape.open(journeys_bare).report.traces()
    assert a.equals(b)
    assert a["trace_id"].str.contains("^[0-9a-f]{32}$").all() and a["span_id"].str.contains("^[0-9a-f]{16}$").all()
    assert a.group_by("trace_id", "span_id").len()["len"].max() == 1


def test_filters_and_critical_path(journeys):
    t = flowtape.open(journeys)
    top = t.report.traces(slowest=3)
    assert top["trace_id"].n_unique() == 3
    every = t.report.traces()
    roots = every.filter(pl.col("parent_span_id").is_null()).sort("duration_ms", descending=True)
    assert set(top["trace_id"]) == set(roots["trace_id"].head(3))
    one = t.report.traces(trace_id=top["trace_id"][0])
    assert one.equals(top.filter(pl.col("trace_id") == top["trace_id"][0]))
    path = t.report.critical_path(one)
    # root first; every other span on it is a child of one on it; the children of one span on it
    # do not overlap in time and the last of them is the one that ended last
    assert path[0] == one.filter(pl.col("parent_span_id").is_null())["span_id"][0]
    par = dict(zip(one["span_id"], one["parent_span_id"]))
    start = dict(zip(one["span_id"], one["start"]))
    end = {k: start[k] + dt.timedelta(milliseconds=d) for k, d in zip(one["span_id"], one["duration_ms"])}
    assert all(par[b] in path for b in path[1:])
    for p in path:
        kids = sorted((k for k in path if par[k] == p), key=start.get)
        assert all(end[a] <= start[b] for a, b in zip(kids, kids[1:]))
        if kids:
            assert end[kids[-1]] == max(end[k] for k in par if par[k] == p)
    step, own = t.report.slowest_step(one, path)
    assert step in path and 0 < own <= one["duration_ms"].max()
    nothing = t.report.traces(namespace="no-such-ns")
    assert nothing.is_empty()
    assert set(t.report.traces(namespace="shop", slowest=2)["trace_id"]) == set(top["trace_id"].head(2))


def test_command_line(journeys, capsys):
    assert main(["report", "traces", str(journeys), "--slowest", "2", "-f", "json"]) == 0
    spans = json.loads(capsys.readouterr().out)
    assert {"trace_id", "span_id", "parent_span_id", "kind", "client", "server", "start", "duration_ms", "status", "method", "path", "source"} <= set(spans[0])
    assert len({s["trace_id"] for s in spans}) == 2 and spans[0]["start"].endswith("Z")
    tid = read_truth(journeys)["journeys"]["journeys"][0]["trace_id"]
    assert main(["report", "traces", str(journeys), "--trace-id", tid.upper()]) == 0
    text = capsys.readouterr().out
    assert text.startswith("trace ") and "critical path: shop/frontend > shop/api" in text and "shop/loadgen -> shop/frontend" in text
    assert main(["report", "traces", str(journeys), "--trace-id", "xyz"]) == 2
    assert "--trace-id 'xyz': a trace id is 32 hex digits" in capsys.readouterr().err


def test_tapes_without_the_new_columns(capsys):
    """The fixture tapes predate tid, seq and go_spawns: they read as null, pairs by socket."""
    df = flowtape.open(FIXTURES / "tiny.tape").report.traces()
    assert df.height == 8 and df.filter(pl.col("kind") == "server")["source"].to_list() == ["traceparent"] * 4
    assert df["tid"].is_null().all()


_ASOF_PAIRS = """
WITH pc AS (SELECT sk, t, t1, m FROM rows WHERE cli), bs AS (SELECT sk, t, m FROM rows WHERE NOT cli),
bp AS (SELECT bs.m, bs.t, p.t AS p_t, nullif(p.t1, -1) AS p_t1, p.m AS p_m, n.t AS n_t, n.m AS n_m FROM bs
       ASOF LEFT JOIN pc p ON bs.sk = p.sk AND bs.t >= p.t ASOF LEFT JOIN pc n ON bs.sk = n.sk AND bs.t <= n.t),
bq AS (SELECT *, p_t IS NOT NULL AND t <= coalesce(p_t1, p_t) + {skew} AS prev_ok, n_t IS NOT NULL AND n_t - t <= {skew} AS next_ok FROM bp)
SELECT m, CASE WHEN prev_ok AND (NOT next_ok OR t - p_t <= n_t - t) THEN p_m WHEN next_ok AND NOT (prev_ok AND t - p_t <= n_t - t) THEN n_m END
FROM bq"""
"""The nearest-time rule as the OTLP exporter wrote it in SQL (two ASOF joins) before it took its
pairs from the traces view: the oracle pairing.nearest_clients is held to."""


@pytest.mark.parametrize("name", ["tiny.tape", "synth-incident.tape"])
def test_nearest_time_pairs_are_the_exporters(name):
    """pairing.nearest_clients gives the pairs of the ASOF-join formulation of the rule (the
    exporter's own SQL until it used the traces view); and the exporter's paired server sides
    (HttpSides, which names them like their client side) take the traces view's pairs, which on
    these tapes are those."""
    from flowtape.analyze.export.spans import HttpSides
    from flowtape.analyze.reports.filters import Filters
    from flowtape.analyze.reports.pairing import SKEW_NS, nearest_clients

    t = flowtape.open(FIXTURES / name)
    t.analysis  # noqa: B018 (the enrichment views: ft_conn_subst)
    rows = t.sql("""SELECT md5(concat_ws('|', h.node, h.side, epoch_ns(h.ts_request), h.client_ip, h.client_port, h.server_ip, h.server_port)) AS m,
                           hash(h.client_ip, h.client_port, CASE WHEN h.side = 'client' THEN coalesce(p.server_pod_ip, h.server_ip) ELSE h.server_ip END) AS sk,
                           epoch_ns(h.ts_request) AS t, coalesce(epoch_ns(h.ts_response), -1) AS t1, h.side = 'client' AS cli
                    FROM http h LEFT JOIN ft_conn_subst p ON h.node = p.client_node AND h.conn_id = p.client_conn_id""").fetchnumpy()
    pick = nearest_clients(rows["sk"], rows["t"], rows["t1"], rows["cli"])
    mine = {rows["m"][i]: rows["m"][j] for i, j in enumerate(pick) if j >= 0}
    t.con.register("rows", pl.DataFrame({k: rows[k] for k in ("m", "sk", "t", "t1", "cli")}))
    oracle = {m: c for m, c in t.sql(_ASOF_PAIRS.format(skew=SKEW_NS)).fetchall() if c is not None}
    t.con.unregister("rows")
    assert len(oracle) > (2 if name == "tiny.tape" else 5000)
    assert mine == oracle
    sides = HttpSides(t, Filters())
    sides.build()
    theirs = {}
    for sl in sides.slices:
        sides.materialize(sl, table=False)
        theirs.update(dict(t.sql("SELECT m, pair_m FROM ftx_slice WHERE NOT exchange").fetchall()))
    sides.close()
    assert len(theirs) > (2 if name == "tiny.tape" else 5000)
    assert {m: oracle.get(m) for m in theirs} == theirs
    if name == "synth-incident.tape":  # no traceparent: span ids are the rows' (the exporter's too)
        spans = t.report.traces()
        parent = dict(zip(spans["span_id"], spans["parent_span_id"]))
        assert all(parent[m[:16]] == c[:16] for m, c in theirs.items())


MS = 1_000_000
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


def _row(side, t, t1, cip, cport, sip, sport, pid, **kw):
    return {"ts_request": T0 + t * MS, "ts_response": T0 + t1 * MS, "latency_ns": (t1 - t) * MS, "client_ip": cip, "client_port": cport,
            "server_ip": sip, "server_port": sport, "pid": pid, "comm": kw.pop("comm", f"p{pid}"), "side": side, "tls": False,
            "http_version": "HTTP/1.1", "method": "GET", "path": kw.pop("path", "/"), "status": 200, **kw}


@pytest.fixture(scope="module")
def handmade(tmp_path_factory) -> Path:
    """Rows as a recorder with every journeys fact would write them: goroutines and their spawns,
    wire trace ids on connections, and an event loop serving two requests at once on one thread."""
    path = tmp_path_factory.mktemp("hand") / "hand.tape"
    w = flowtape.TapeWriter(path, node="n1")
    a, b, c = "10.9.0.1", "10.9.0.2", "10.9.0.3"
    w.append("http", [
        # a Go server: the request served on goroutine 0x1000, a call made two spawns below it
        _row("server", 100, 200, a, 40000, b, 8080, 500, goroutine=0x1000, path="/go"),
        _row("client", 130, 150, b, 41000, c, 9000, 500, goroutine=0x3000, path="/go-call"),
        # g 0x3000 reused later by a goroutine of another family: its call is nobody's child
        _row("server", 305, 400, a, 40001, b, 8080, 500, goroutine=0x1000, path="/go2"),
        _row("client", 310, 320, b, 41001, c, 9000, 500, goroutine=0x3000, path="/go2-call"),
        # wire trace ids (IPv4 option) on both connections of a process that propagates nothing
        _row("server", 1000, 1100, a, 40002, b, 8081, 600, conn_id="W1", path="/legacy"),
        _row("client", 1010, 1020, b, 41002, c, 9001, 600, conn_id="W2", path="/legacy-call"),
        # an event loop: two requests open at once on thread 700; a call while both are open is
        # nobody's child, a call when only the second is open is its child
        _row("server", 2000, 2100, a, 40003, b, 8082, 700, tid=700, path="/ev1"),
        _row("server", 2020, 2120, a, 40004, b, 8082, 700, tid=700, path="/ev2"),
        _row("client", 2030, 2040, b, 41003, c, 9002, 700, tid=700, path="/ev-both"),
        _row("client", 2105, 2110, b, 41004, c, 9002, 700, tid=700, path="/ev-second"),
    ])
    w.append("go_spawns", [
        {"ts": T0 + 110 * MS, "pid": 500, "parent_g": 0x1000, "child_g": 0x2000},
        {"ts": T0 + 120 * MS, "pid": 500, "parent_g": 0x2000, "child_g": 0x3000},
        {"ts": T0 + 300 * MS, "pid": 500, "parent_g": 0x9999, "child_g": 0x3000},
    ])
    conn = {"ts_start": T0 + 900 * MS, "ts_end": T0 + 1200 * MS, "close_state": "closed", "pid": 600, "comm": "p600",
            "wire_trace_id": "ab" * 16, "wire_span_id": "cd" * 8, "wire_trace_source": "ip-option"}
    w.append("connections", [
        {**conn, "conn_id": "W1", "role": "server", "client_ip": a, "client_port": 40002, "server_ip": b, "server_port": 8081},
        {**conn, "conn_id": "W2", "role": "client", "client_ip": b, "client_port": 41002, "server_ip": c, "server_port": 9001},
    ])
    w.close()
    return path


def test_goroutine_wire_and_event_loop_rules(handmade):
    df = flowtape.open(handmade).report.traces(by="process")
    by_path = {r["path"]: r for r in df.iter_rows(named=True)}
    span = {p: r["span_id"] for p, r in by_path.items()}
    assert by_path["/go-call"]["parent_span_id"] == span["/go"] and by_path["/go-call"]["source"] == "goroutine"
    assert by_path["/go2-call"]["parent_span_id"] is None  # g reused: not /go2's descendant
    assert by_path["/legacy-call"]["parent_span_id"] == span["/legacy"] and by_path["/legacy-call"]["source"] == "ip-option"
    assert by_path["/legacy-call"]["trace_id"] == by_path["/legacy"]["trace_id"] == "ab" * 16
    assert by_path["/ev-both"]["parent_span_id"] is None  # two exchanges open on the thread: cannot tell
    assert by_path["/ev-second"]["parent_span_id"] == span["/ev2"] and by_path["/ev-second"]["source"] == "thread"


def test_span_ids_for_the_exporter():
    """span_ids: every http row's ids keyed by the exporter's row key, the same as the view's."""
    from flowtape.analyze.reports.traces import span_ids

    t = flowtape.open(FIXTURES / "synth-incident.tape")
    view = t.report.traces().select("trace_id", "span_id", "parent_span_id", "source").sort("span_id")
    ids = t.sql(f"SELECT * FROM {span_ids(t.analysis)}").pl()
    assert ids.height == t.sql("SELECT count(*) FROM http").fetchall()[0][0] == view.height
    assert (ids["m"].str.slice(0, 16) == ids["span_id"]).all()  # no traceparent in this tape: the rows' ids
    assert ids.select("trace_id", "span_id", "parent_span_id", "source").sort("span_id").equals(view)


def _h2_tape(path: Path) -> Path:
    """HTTP/2 rows as the TC programs write them: a client opens three streams on one connection
    in one segment (one request instant on each side, the server's 1 ms later), whose responses
    come in another order; later a new connection on the same 4-tuple starts at stream 1 again."""
    w = flowtape.TapeWriter(path, node="n1")
    a, b = "10.6.0.1", "10.6.0.2"
    h2 = {"http_version": "HTTP/2"}
    rows = []
    for sid, end in ((1, 180), (3, 120), (5, 150)):
        rows.append(_row("client", 100, end + 1, a, 43000, b, 8443, 800, stream_id=sid, path=f"/s{sid}", **h2))
        rows.append(_row("server", 101, end, a, 43000, b, 8443, 801, stream_id=sid, path=f"/s{sid}", **h2))
    rows.append(_row("client", 5000, 5020, a, 43000, b, 8443, 800, stream_id=1, path="/again", **h2))
    rows.append(_row("server", 5001, 5019, a, 43000, b, 8443, 801, stream_id=1, path="/again", **h2))
    w.append("http", rows)
    w.close()
    return path


NO_STREAM_RULE = "h2 AS (SELECT NULL::BIGINT AS rid, NULL::BIGINT AS prid, 3 AS prio, NULL::VARCHAR AS source WHERE false)"


def test_http2_streams_pair_by_connection_and_stream_id(tmp_path, monkeypatch):
    """Each server stream's parent is the client row of the same stream (source `stream`), and each
    stream is its own span (the row key carries the stream id); without the rule the socket's
    nearest time cannot tell three streams of one instant apart."""
    from flowtape.analyze.reports import traces as tr

    path = _h2_tape(tmp_path / "h2.tape")

    def links() -> dict[str, tuple[str | None, str | None]]:
        df = flowtape.open(path).report.traces(by="process")
        assert df.height == 8 and df["span_id"].n_unique() == 8  # every stream once, each its own span
        kind = dict(zip(df["span_id"], df["kind"] + ":" + df["path"]))
        return {k + ":" + p: (kind.get(par), src) for k, p, par, src in df.select("kind", "path", "parent_span_id", "source").iter_rows()}

    got = links()
    for p in ("/s1", "/s3", "/s5", "/again"):
        assert got["server:" + p] == ("client:" + p, "stream")
        assert got["client:" + p] == (None, None)
    monkeypatch.setattr(tr, "_stream_pairs", lambda skew: NO_STREAM_RULE)
    bare = links()
    assert sum(bare["server:" + p][0] == "client:" + p for p in ("/s1", "/s3", "/s5")) < 3  # the rule is what pairs them


def _cycles_tape(path: Path) -> Path:
    """Rows whose links make cycles (a server side's client and that client's cause each point at
    the other: one clock, one process calling itself through two others), of 4 and 6 rows, each
    with a call hanging from it: the forest cuts them, the same way at any partitioning."""
    w = flowtape.TapeWriter(path, node="n1")
    rows = []
    for k, t in ((2, 5000), (3, 6000)):
        base = 900 + 10 * k
        pids = [base + i for i in range(k)]
        for i in range(k):
            sock = (f"10.8.{k}.{i}", 50000 + i, f"10.7.{k}.{i}")
            caller = pids[(i + 1) % k]
            rows.append(_row("server", t, t + 50, sock[0], sock[1], sock[2], 8080, pids[i], tid=pids[i], path=f"/cyc{k}-s{i}"))
            rows.append(_row("client", t, t + 50, sock[0], sock[1], sock[2], 8080, caller, tid=caller, path=f"/cyc{k}-c{i}"))
        rows.append(_row("client", t + 10, t + 20, f"10.8.{k}.9", 51000, f"10.7.{k}.9", 8080, pids[0], tid=pids[0], path=f"/cyc{k}-tail"))
        rows.append(_row("server", t + 10, t + 20, f"10.8.{k}.9", 51000, f"10.7.{k}.9", 8080, 999, tid=999, path=f"/cyc{k}-tail-s"))
    w.append("http", rows)
    w.close()
    return path


def _keyed(a, table: str) -> pl.DataFrame:
    """A stitch table with each row, parent and root named by its row (node, request ns, client
    port, side, HTTP/2 stream) instead of its rid: rids number the rows in the order a join produced them, which
    may differ between two builds of ft_tr_rows_t."""
    key = ("nk", "t", "cport", "cli", "sid")
    df = a.sql(f"""SELECT {', '.join(f'r.{k}' for k in key)}, {', '.join(f'p.{k} AS p_{k}' for k in key)}, {', '.join(f'o.{k} AS o_{k}' for k in key)},
                          f.src, f.root_t, f.root_ns
                   FROM {table} f JOIN ft_tr_rows r ON r.rid = f.rid LEFT JOIN ft_tr_rows p ON p.rid = f.prid JOIN ft_tr_rows o ON o.rid = f.root
                   ORDER BY ALL""").pl()
    assert df.select(key).unique().height == df.height  # the key names one row
    return df


@pytest.mark.parametrize("name", ["tiny.tape", "synth-incident.tape", "journeys", "journeys_bare", "handmade", "cycles", "h2"])
def test_partitioned_stitching_equals_the_whole(name, request, tmp_path):
    """The stitching with bounded memory (socket rule by partitions of sockets, pointer jumping
    on the deeper trees only) gives the table the in-memory version gives, row for row (rows
    named by their key), at one partition and at many."""
    from flowtape.analyze.reports import traces as tr

    if name.endswith(".tape"):
        path = FIXTURES / name
    elif name == "cycles":
        path = _cycles_tape(tmp_path / "cycles.tape")
    elif name == "h2":
        path = _h2_tape(tmp_path / "h2.tape")
    else:
        path = request.getfixturevalue(name)
    a = flowtape.open(path).analysis
    tr._build_whole(a, "ft_test_whole")
    whole = a.sql("SELECT * FROM ft_test_whole ORDER BY rid").pl()
    whole_keyed = _keyed(a, "ft_test_whole")
    n = whole.height
    for part_rows in (n + 1, max(1, n // 13), 3):
        if part_rows == 3 and n > 5000:
            continue
        tr._build(a, "ft_test_parts", part_rows=part_rows)
        got = a.sql("SELECT * FROM ft_test_parts ORDER BY rid").pl()
        assert got.schema == whole.schema and got.height == n
        assert _keyed(a, "ft_test_parts").equals(whole_keyed), part_rows
    linked = whole.filter(pl.col("prid") >= 0)
    if name in ("journeys", "journeys_bare"):
        assert linked.filter(pl.col("root") != pl.col("prid")).height > 0  # trees deeper than one link were checked
    if name == "cycles":
        # the cycles formed (each of the 14 rows has a link), and were cut: the 4-cycle's rows are roots, its tail (a call and
        # its server side) keeps its 2 links; the 6-cycle never settles, its rows and its tail are all cut
        assert a.sql("SELECT count(*) FROM ft_tr_rows_t").fetchall()[0][0] == n == 14
        assert linked.height == 2 and (whole["root"] == whole["rid"]).sum() == n - 2
        tr._rules(a)  # 5 calls in the cycles and 2 tails caused by a cycle's request (the 7 servers pair by socket)
        assert a.sql("SELECT count(*) FROM ft_tr_cause").fetchall()[0][0] == 7
