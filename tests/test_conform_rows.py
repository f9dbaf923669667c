"""conform's two readers of row dicts (pyarrow's from_pylist in the recorder, which never loads
Polars; Polars' dict reader where it is loaded) against its column-list path, on every table of
the fixture tapes: the same Arrow table, value for value; and the same refusals."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowtape.conform import _columns_from_rows, conform, rows_by_polars, rows_by_pyarrow
from flowtape.errors import SchemaError
from flowtape.schema import PARTITION_KEY, TABLES

FIXTURES = ["fixtures/tiny.tape", "fixtures/synth-incident.tape"]


def _rows_of(tape: str, name: str, limit: int = 3000) -> list[dict]:
    from pathlib import Path

    rows: list[dict] = []
    for part in sorted(Path(tape).rglob(f"{name}/**/*.parquet")) + sorted(Path(tape).glob(f"{name}/*.parquet")):
        t = pq.read_table(part)
        # times as the recorder hands them over: integer nanoseconds (datetime stops at µs)
        t = t.cast(pa.schema([f.with_type(pa.int64()) if pa.types.is_timestamp(f.type) else f for f in t.schema]))
        rows += [{k: v for k, v in r.items() if k != PARTITION_KEY} for r in t.to_pylist()]
        if len(rows) >= limit:
            break
    return rows[:limit]


CASES = [(tape, name) for tape in FIXTURES for name in sorted(TABLES)]


@pytest.mark.parametrize(("tape", "name"), CASES, ids=[f"{t.split('/')[-1]}:{n}" for t, n in CASES])
def test_both_row_readers_give_the_column_paths_table(tape, name):
    rows = _rows_of(tape, name)
    if not rows:
        return  # this fixture has no such table; the other fixture or the list below covers it
    table = TABLES[name]
    reference = conform(table, _columns_from_rows(table, rows))
    by_pyarrow, by_polars = rows_by_pyarrow(table, rows), rows_by_polars(table, rows)
    assert by_pyarrow is not None and by_pyarrow.equals(reference)
    if by_polars is not None:  # Polars refuses some nested values: conform then takes the column path
        assert by_polars.cast(table.arrow_schema).equals(reference)


def test_every_table_with_rows_is_covered():
    covered = {name for tape, name in CASES if _rows_of(tape, name, limit=1)}
    assert {"flows", "connections", "dns", "http", "tls"} <= covered


def test_a_value_that_does_not_fit_is_refused_and_named():
    table = TABLES["tls"]
    rows = _rows_of("fixtures/tiny.tape", "tls", limit=2) or _rows_of("fixtures/synth-incident.tape", "tls", limit=2)
    bad = dict(rows[0])
    column = next(f.name for f in table.arrow_schema if str(f.type).startswith(("int", "uint")))
    bad[column] = "not a number"
    assert rows_by_pyarrow(table, [rows[0], bad]) is None  # the slow path names it:
    with pytest.raises(SchemaError, match=column):
        conform(table, [rows[0], bad])
