"""Tapes written before the HTTP/2 columns of `http` (schema.Column.added) still read: a part
without them shows nulls, in a tape of old parts only and in one that mixes old and new parts."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq

import flowtape
from flowtape.schema import table

ADDED = [c.name for c in table("http").columns if c.added]


def test_old_fixture_tape_reads_with_null_http2_columns():
    tape = flowtape.open("fixtures/tiny.tape")
    stored = pq.read_schema(tape.files("http")[0]).names
    assert not set(ADDED) & set(stored)  # (the fixture was written before the columns existed)
    assert tape.sql(f"select count(*), {', '.join(f'count({c})' for c in ADDED)} from http").fetchall() == [(8,) + (0,) * len(ADDED)]
    lf = tape.lazy("http").collect()
    assert lf.shape[0] == 8 and all(lf[c].null_count() == 8 for c in ADDED)
    assert not [p for p in tape.problems if "http" in p.where(tape.path)]


def test_a_tape_mixing_old_and_new_parts_reads_both(tmp_path):
    src = tmp_path / "mixed.tape"
    shutil.copytree("fixtures/tiny.tape", src)
    old = sorted((src / "http").rglob("*.parquet"))[0]
    t = pq.read_table(old)
    n = t.num_rows
    import pyarrow as pa

    new = t
    for c in table("http").columns:
        if c.added:
            new = new.append_column(pa.field(c.name, c.type), pa.array([7] * n if c.name == "stream_id" else [None] * n, c.type))
    pq.write_table(new, old.with_name("part-999999.parquet"))
    tape = flowtape.open(src)
    assert tape.sql("select count(*), count(stream_id), sum(stream_id) from http").fetchall() == [(8 + n, n, 7 * n)]
    lf = tape.lazy("http").collect()
    assert lf.shape[0] == 8 + n and lf["stream_id"].drop_nulls().to_list() == [7] * n


def test_writer_keeps_http1_parts_as_before_and_starts_a_part_for_http2_rows(tmp_path):
    from flowtape.writer import TapeWriter

    base = {"client_ip": "198.18.0.2", "client_port": 1, "server_ip": "198.18.0.1", "server_port": 80, "side": "server",
            "tls": False, "method": "GET", "path": "/", "status": 200}
    with TapeWriter(tmp_path / "t.tape", node="n1") as w:
        w.append("http", [{**base, "ts_request": 1}])
        w.append("http", [{**base, "ts_request": 2, "client_port": 2}])  # the same part
        w.append("http", [{**base, "ts_request": 3, "method": None, "path": None, "stream_id": 5, "headers_partial": True}])
    tape = flowtape.open(tmp_path / "t.tape")
    first, second = sorted(tape.files("http"))
    s1, s2 = pq.read_schema(first), pq.read_schema(second)
    assert not set(ADDED) & set(s1.names) and not s1.field("method").nullable  # as written before the HTTP/2 columns
    assert {"stream_id", "headers_partial"} <= set(s2.names) and "grpc_status" not in s2.names and s2.field("method").nullable
    assert tape.sql("select method, stream_id, headers_partial from http order by ts_request").fetchall() == [("GET", None, None)] * 2 + [(None, 5, True)]
