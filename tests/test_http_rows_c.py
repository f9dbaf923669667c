"""capture/decode/_http_rows.c's HttpColumns against its reference, http_rows.HttpRows, row for row:
the plain HTTP join (L7Decoder._take_plain against _expand_plain, threads and Go goroutines, HTTP/2
exchanges among them), whole decoder runs over plain and TLS-plaintext records
(FLOWTAPE_HTTP_ROWS=python against the compiled rows), values that do not fit the schema, and the
same under AddressSanitizer."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pytest
from ebpf_support import in_ci

from flowtape.capture.decode import http_rows
from flowtape.capture.decode.http_pairing import EXCHANGE_FIELDS
from flowtape.capture.decode.http_rows import H2_FIELDS, HttpRows
from flowtape.capture.live.l7 import Endpoint, L7Decoder, c_header_class
from flowtape.errors import SchemaError

import sanitizer

HERE = Path(__file__).resolve().parent
OFFSET = 1_000_000_000_000

if http_rows._http_rows is None:
    reason = "capture/decode/_http_rows.c is not built (no C compiler when flowtape was installed)"
    if in_ci():
        pytest.fail(f"CI host: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

HttpColumns = http_rows.HttpColumns


def _exchange(rnd: random.Random, ts: int, resp: int | None) -> tuple:
    """A decoder tuple: HTTP/1 (EXCHANGE_FIELDS) or HTTP/2 (h2c: H2_FIELDS after them)."""
    full = (ts + OFFSET, None if resp is None else resp + OFFSET, None if resp is None else resp - ts, "1.1", rnd.choice(["GET", "POST", None]),
            f"/p{ts}", rnd.choice([200, 404, None]), rnd.randrange(0, 5000), rnd.choice([0, 123, None]), rnd.choice(["lab", None, "ünïcode"]),
            None, "curl/8", rnd.choice(["text/html", None]), None, rnd.randrange(2**32), rnd.choice([None, 2**32 - 1]))
    assert len(full) == len(EXCHANGE_FIELDS)
    if rnd.random() < 0.15:
        return full + (rnd.randrange(1, 2**31), "pkg.Svc", "Get", rnd.choice([0, 14, None]), None, rnd.choice([None, "RST_STREAM"]),
                       rnd.choice([True, False, None]))[: len(EXCHANGE_FIELDS) + len(H2_FIELDS)]
    return full


def _world(go: bool, seed: int) -> tuple[L7Decoder, list[tuple]]:
    """tests/test_l7_rows_inline.py's endpoints and turns: closed and reused socket addresses, cookies or
    none, turns of both directions; and exchanges joined to them (some to no endpoint)."""
    rnd = random.Random(seed)
    dec = L7Decoder("n1", OFFSET, event_class=c_header_class())
    joins = []
    for k in range(12):
        cport = 40000 + k
        join = ("10.0.0.2", cport, "10.0.0.1", 80)
        joins.append(join)
        t = 0
        for life in range(rnd.randrange(1, 4)):
            start = t + rnd.randrange(1, 1000)
            end = start + rnd.randrange(100, 5000) if life < 2 and rnd.random() < 0.7 else None
            for role, sk in (("client", 0x1000 + k), ("server", 0x2000 + (k % 5))):
                local, remote = (("10.0.0.2", cport), ("10.0.0.1", 80)) if role == "client" else (("10.0.0.1", 80), ("10.0.0.2", cport))
                if rnd.random() < 0.85:
                    dec.add_endpoint(Endpoint(sk, role, start, *local, *remote, pid=rnd.choice([100 + k, None]), comm=rnd.choice(["p", None]),
                                              cookie=rnd.choice([0, 77 + k]), ts_end=end))
            t = (end or start + 5000) + 1
    for sk in [0x1000 + k for k in range(12)] + [0x2000 + k for k in range(5)]:
        ts = 0
        for _ in range(rnd.randrange(0, 60)):
            ts += rnd.randrange(1, 300)
            g = rnd.choice([0, 0xC000001000 + sk]) if go and ts > 3000 else 0
            dec.turns.add(sk, ts, rnd.random() < 0.5, rnd.randrange(1, 5), g)
    items = []
    for _ in range(3000):
        ts = rnd.randrange(0, 15000)
        resp = None if rnd.random() < 0.1 else ts + rnd.randrange(0, 400)
        items.append((rnd.choice(joins + [("10.9.9.9", 1, "10.0.0.1", 80)]), _exchange(rnd, ts, resp), rnd.random() < 0.5))
    return dec, items


@pytest.mark.parametrize("go", [False, True], ids=["threads", "goroutines"])
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_take_plain_writes_the_rows_of_expand_plain(go, seed):
    dec, items = _world(go, seed)
    dec.http_rows = HttpColumns()
    got = [dec._take_plain(*it) for it in items]
    c_table, c_lost = dec.http_rows.to_arrow(), dec.counters["l7.http_no_endpoint"]
    dec.http_rows, dec.counters["l7.http_no_endpoint"] = HttpRows(), 0
    ref = [dec._expand_plain(*it) for it in items]
    ref_table = dec.http_rows.to_arrow()
    assert got == ref and c_lost == dec.counters["l7.http_no_endpoint"] > 100
    assert c_table.schema == ref_table.schema and c_table.num_rows == ref_table.num_rows > 2000
    for name in ref_table.column_names:  # column by column, so a failure names it
        assert c_table.column(name).equals(ref_table.column(name)), name
    assert c_table.column("tid").null_count < c_table.num_rows  # the oracle saw turns
    assert (c_table.column("goroutine").null_count < c_table.num_rows) == go
    assert c_table.column("stream_id").null_count < c_table.num_rows  # HTTP/2 exchanges among them
    assert list(HttpColumns.__iter__(_columns_of(items[:50], dec))) == list(_rows_of(items[:50], dec))


def _columns_of(items: list[tuple], dec: L7Decoder) -> HttpColumns:
    h = HttpColumns()
    for join, row, _ in items:
        h.add(h.exchange(row, (*join, False)), "cid", 1, "comm", "client", 5, None)
    return h


def _rows_of(items: list[tuple], dec: L7Decoder) -> HttpRows:
    h = HttpRows()
    for join, row, _ in items:
        h.add(h.exchange(row, (*join, False)), "cid", 1, "comm", "client", 5, None)
    return h


def _decode(monkeypatch, records: list[bytes], endpoints: list[Endpoint], rows: str, batch: int) -> tuple:
    monkeypatch.setenv("FLOWTAPE_HTTP_ROWS", rows)
    dec = L7Decoder("n", 0)
    assert dec._rows_class is (HttpRows if rows == "python" else HttpColumns)
    dec.skip_body = lambda *a: True
    for e in endpoints:
        dec.add_endpoint(e)
    tables = []
    for i in range(0, len(records), batch):
        dec.feed_batch(records[i : i + batch])
        tables.append(dec.take_rows(dec.last_ts)["http"].to_arrow())
    tables.append(dec.take_rows(dec.last_ts + 10 * 10**9, final=True)["http"].to_arrow())
    return pa.concat_tables(tables), dec.lost_counters()


def test_decoder_runs_plain_and_tls_plaintext_give_the_reference_rows(monkeypatch):
    from test_l7_fast_path import flows_records

    rng = random.Random(7)
    total = tls = 0
    for _ in range(25):
        records, endpoints = flows_records(rng, 5)
        c, c_lost = _decode(monkeypatch, records, endpoints, "c", 37)
        ref, ref_lost = _decode(monkeypatch, records, endpoints, "python", 37)
        assert c.equals(ref) and c_lost == ref_lost
        total += ref.num_rows
        tls += ref.column("tls").to_pylist().count(True)
    assert total > 300 and tls > 50, (total, tls)


def test_rows_factory_and_the_switch(monkeypatch):
    monkeypatch.delenv("FLOWTAPE_HTTP_ROWS", raising=False)
    assert http_rows.rows_factory() is HttpColumns and http_rows.rows_in_use() == "c"
    monkeypatch.setenv("FLOWTAPE_HTTP_ROWS", "python")
    assert http_rows.rows_factory() is HttpRows and http_rows.rows_in_use().startswith("python")


def test_an_empty_hand_over_is_the_empty_table():
    h = HttpColumns()
    assert not h and len(h) == 0
    assert h.to_arrow().equals(HttpRows().to_arrow()) or h.to_arrow().num_rows == 0
    assert h.to_arrow().schema == HttpRows().to_arrow().schema


@pytest.mark.parametrize("index,value,column", [(6, 70000, "status"), (6, "200", "status"), (4, 5, "method"), (7, 2**63, "request_bytes"),
                                                (14, -1, "request_seq"), (5, "\udcff", "path"), (6, True, "status")])
def test_a_value_that_does_not_fit_is_a_schema_error_naming_its_column(index, value, column):
    row = list(_exchange(random.Random(1), 5, 9)[: len(EXCHANGE_FIELDS)])
    row[index] = value
    h = HttpColumns()
    h.add(h.exchange(tuple(row), ("a", 1, "b", 2, False)), "c", 1, "x", "client")
    h.add(h.exchange(_exchange(random.Random(2), 5, 9)[: len(EXCHANGE_FIELDS)], ("a", 1, "b", 2, False)), "c", 1, "x", "client")
    with pytest.raises(SchemaError, match=f"'{column}'"):
        h.to_arrow()


def test_wrong_arguments_raise_not_crash():
    h = HttpColumns()
    with pytest.raises(TypeError):
        h.add_row([1], ("a",), "c", 1, "x", "client")
    with pytest.raises(TypeError):  # conns not a list
        h.take_plain(("a", 1, "b", 2), (1, None), (1, 2), 0, 1, {}, {}, str)
    ep = Endpoint(5, "server", 0, "b", 2, "a", 1)
    with pytest.raises(ValueError):  # no ts_response
        h.take_plain(("a", 1, "b", 2), (1,), [ep], 0, 1, {}, {}, str)
    with pytest.raises(TypeError):  # a turns entry of the wrong shape
        h.take_plain(("a", 1, "b", 2), (10, None), [ep], 0, 1, {5: ([1], [2])}, {}, lambda c: "cid")
    with pytest.raises(RuntimeError):
        type(h).__mro__[1].__init__(h, ())  # the C type's, set up twice
    with pytest.raises(ValueError):
        http_rows._http_rows.HttpColumns(((9, 0, 0),))
    assert h.take_plain(("a", 1, "b", 2), (10, None), None, 0, 1, {}, {}, str) == 0


ASAN_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import _http_rows_asan
import flowtape.capture.decode.http_rows as hr
Cols = hr.columns_class(_http_rows_asan.HttpColumns)
import test_http_rows_c as t
t.HttpColumns = Cols
for go in (False, True):
    for seed in (11, 12):
        t.test_take_plain_writes_the_rows_of_expand_plain(go, seed)
for args in [(6, 70000, "status"), (5, "\\udcff", "path"), (14, -1, "request_seq")]:
    t.test_a_value_that_does_not_fit_is_a_schema_error_naming_its_column(*args)
t.test_wrong_arguments_raise_not_crash()
import pytest
hr.HttpColumns = Cols  # rows_factory's, for the decoder runs (take_pending)
with pytest.MonkeyPatch.context() as mp:
    t.test_decoder_runs_plain_and_tls_plaintext_give_the_reference_rows(mp)
print("ok")
"""


@pytest.mark.slow
def test_under_address_sanitizer(tmp_path):
    sanitizer.require_gcc("capture/decode/_http_rows.c")
    # a write past the end of every growth: the harness must catch it
    anchor = "    b->p = p;\n    b->cap = cap;"
    sanitizer.build(tmp_path, "capture/decode/_http_rows.c", "_http_rows_planted", (anchor, anchor + " p[cap] = 0;"))
    planted = sanitizer.run(tmp_path, "import _http_rows_planted as m; from flowtape.capture.decode.http_rows import column_spec; "
                                      "h = m.HttpColumns(column_spec()); h.add_row((1, None), ('a', 1, 'b', 2, False), 'c', 1, 'x', 'client')")
    assert planted.returncode == 86 and "heap-buffer-overflow" in planted.stderr, planted.stderr[-2000:]
    sanitizer.build(tmp_path, "capture/decode/_http_rows.c", "_http_rows_asan")
    result = sanitizer.run(tmp_path, ASAN_SCRIPT.format(tests=str(HERE)))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "ok" in result.stdout


def test_the_pcap_importer_writes_the_reference_rows(tmp_path, monkeypatch):
    from test_import_pcap import DATA, do_import, rows, sample_frames, write_pcap

    files = [DATA / "http.pcap", DATA / "tls.pcap", write_pcap(tmp_path / "s.pcap", sample_frames())]
    tapes = {}
    for mode in ("c", "python"):
        monkeypatch.setenv("FLOWTAPE_HTTP_ROWS", mode)
        tapes[mode], _ = do_import(tmp_path, files, name=f"{mode}.tape")
    got, ref = (rows(tapes[m], "http", "order by all") for m in ("c", "python"))
    assert got == ref and len(ref) >= 4
