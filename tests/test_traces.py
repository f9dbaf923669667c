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


@pytest.mark.parametrize("name", ["tiny.tape", "synth-incident.tape"])
def test_nearest_time_pairs_are_the_exporters(name):
    """pairing.nearest_clients is the OTLP exporter's rule: on the fixtures, every server side
    the exporter pairs gets the same client row (by the rows' id inputs, which both share); and
    the traces view links those server spans to those client spans."""
    from flowtape.analyze.export.spans import HttpSides
    from flowtape.analyze.reports.filters import Filters
    from flowtape.analyze.reports.pairing import nearest_clients

    t = flowtape.open(FIXTURES / name)
    sides = HttpSides(t, Filters())
    sides.build()
    theirs = {}
    for sl in sides.slices:
        sides.materialize(sl, table=False)
        theirs.update(dict(t.sql("SELECT m, pair_m FROM ftx_slice WHERE NOT exchange").fetchall()))
    sides.close()
    t.analysis  # noqa: B018 (the enrichment views: ft_conn_subst)
    rows = t.sql("""SELECT md5(concat_ws('|', h.node, h.side, epoch_ns(h.ts_request), h.client_ip, h.client_port, h.server_ip, h.server_port)) AS m,
                           hash(h.client_ip, h.client_port, CASE WHEN h.side = 'client' THEN coalesce(p.server_pod_ip, h.server_ip) ELSE h.server_ip END) AS sk,
                           epoch_ns(h.ts_request) AS t, coalesce(epoch_ns(h.ts_response), -1) AS t1, h.side = 'client' AS cli
                    FROM http h LEFT JOIN ft_conn_subst p ON h.node = p.client_node AND h.conn_id = p.client_conn_id""").fetchnumpy()
    pick = nearest_clients(rows["sk"], rows["t"], rows["t1"], rows["cli"])
    mine = {rows["m"][i]: rows["m"][j] for i, j in enumerate(pick) if j >= 0}
    assert len(theirs) > (2 if name == "tiny.tape" else 5000)
    assert {m: mine.get(m) for m in theirs} == theirs
    if name == "synth-incident.tape":  # no traceparent: span ids are the rows' (the exporter's too)
        spans = t.report.traces()
        parent = dict(zip(spans["span_id"], spans["parent_span_id"]))
        assert all(parent[m[:16]] == c[:16] for m, c in theirs.items())
