"""Every table survives write -> read exactly: values, nulls, nested columns, UTC ns timestamps."""

from __future__ import annotations

import pyarrow as pa
import pytest

import flowtape
from flowtape.schema import PARTITION_KEY, TABLES, Table
from flowtape.writer import TapeWriter

T0 = 1_767_225_600_123_456_789  # ns precision on purpose: a µs round-trip would lose the 789


def _value(t: pa.DataType, name: str, i: int):
    """A deterministic value of type `t`; row 2 holds edge values."""
    edge = i == 2
    if pa.types.is_timestamp(t):
        return T0 + i * 1_000_000_007
    if pa.types.is_string(t):
        return "" if edge else f"{name}-{i}-é"
    if pa.types.is_boolean(t):
        return i % 2 == 0
    if pa.types.is_unsigned_integer(t):
        return (1 << t.bit_width) - 1 if edge else i + 1
    if pa.types.is_signed_integer(t):
        return -(1 << (t.bit_width - 1)) if edge else i * 1000 + 1
    if pa.types.is_map(t):
        return {} if edge else {"app": f"a{i}", "team": "net"}
    if pa.types.is_list(t):
        if edge:
            return []
        return [_value(t.value_type, name, 0), _value(t.value_type, name, 1)]
    if pa.types.is_struct(t):
        # the last field null: nulls inside nested values must survive too
        return {f.name: (None if j == t.num_fields - 1 and i == 1 else _value(f.type, f.name, i)) for j, f in enumerate(t)}
    raise AssertionError(f"no generator for {t}")


def rows_for(decl: Table) -> list[dict]:
    rows = []
    for i in range(3):
        row = {}
        for c in decl.columns:
            if c.name == PARTITION_KEY:
                continue
            row[c.name] = None if (i == 1 and c.nullable) else _value(c.type, c.name, i)
        rows.append(row)
    return rows


def _canonical(table: pa.Table, decl: Table) -> list[dict]:
    out = table.select([c for c in decl.column_names]).cast(decl.view_schema)
    # timestamps compared as int64 ns so that no library's datetime conversion hides a loss
    cols = {}
    for f in out.schema:
        col = out.column(f.name)
        cols[f.name] = col.cast(pa.int64()).to_pylist() if pa.types.is_timestamp(f.type) else col.to_pylist()
    return [dict(zip(cols, vals)) for vals in zip(*cols.values())]


@pytest.mark.parametrize("name", list(TABLES))
def test_round_trip(tmp_path, name):
    decl = TABLES[name]
    rows = rows_for(decl)
    with TapeWriter(tmp_path / "t.tape", node="node-1") as w:
        assert w.append(name, rows) == 3
    expected = [{**r, PARTITION_KEY: "node-1"} for r in rows]
    expected = _canonical(pa.Table.from_pylist(expected, schema=decl.view_schema), decl)

    tape = flowtape.open(tmp_path / "t.tape")
    assert tape.problems == []
    via_duckdb = _canonical(tape.table(name).to_arrow_table(), decl)
    via_polars = _canonical(tape.lazy(name).collect().to_arrow(), decl)
    assert via_duckdb == expected
    assert via_polars == expected
    # the view exposes exactly the declared columns, in order
    assert tape.table(name).columns == decl.column_names


def test_timestamps_are_utc_nanoseconds(tmp_path):
    with TapeWriter(tmp_path / "t.tape", node="n") as w:
        w.append("tls", [{"ts": T0, "client_ip": "198.18.0.1", "client_port": 1, "server_ip": "2001:db8::1", "server_port": 443, "version": "TLS 1.3"}])
    tape = flowtape.open(tmp_path / "t.tape")
    assert tape.sql("select epoch_ns(ts) from tls").fetchall() == [(T0,)]
    assert tape.sql("select typeof(ts) from tls").fetchall() == [("TIMESTAMPTZ_NS",)]
    lf = tape.lazy("tls").collect()
    assert str(lf.schema["ts"].time_zone) == "UTC" and lf.schema["ts"].time_unit == "ns"
    assert lf["ts"].cast(int).to_list() == [T0]


def test_session_is_utc_and_draws_no_progress_bar(tmp_path):
    # DuckDB's own progress bar would print into report output on a terminal (queries over 2 s)
    TapeWriter(tmp_path / "t.tape", node="n").close()
    tape = flowtape.open(tmp_path / "t.tape")
    assert tape.sql("select current_setting('TimeZone'), current_setting('enable_progress_bar')").fetchall() == [("UTC", False)]


def test_empty_tables_have_their_schema(tmp_path):
    TapeWriter(tmp_path / "t.tape", node="n").close()
    tape = flowtape.open(tmp_path / "t.tape")
    for name, decl in TABLES.items():
        assert tape.sql(f"select count(*) from {name}").fetchall() == [(0,)]
        assert tape.table(name).columns == decl.column_names
        assert tape.lazy(name).collect().columns == decl.column_names


def test_arrow_and_polars_input_round_trip(tmp_path):
    import polars as pl

    decl = TABLES["flows"]
    rows = rows_for(decl)
    arrow = pa.Table.from_pylist(rows, schema=decl.arrow_schema)
    with TapeWriter(tmp_path / "t.tape", node="n") as w:
        w.append("flows", arrow)
        w.append("flows", pl.from_arrow(arrow))
        w.append("flows", {k: [r[k] for r in rows] for k in rows[0]})
    tape = flowtape.open(tmp_path / "t.tape")
    assert tape.rows("flows") == 9
    assert tape.sql("select sum(packets::hugeint) from flows").fetchall() == [(3 * (1 + 2 + (2**64 - 1)),)]
