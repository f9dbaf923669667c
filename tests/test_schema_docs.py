"""The schema reference in docs/ is generated from flowtape/schema.py and must not be stale."""

from __future__ import annotations

from conftest import ROOT

from flowtape import schema


def test_docs_schema_is_current():
    assert (ROOT / "docs/schema.md").read_text() == schema.markdown(), "docs/schema.md is stale: run `make docs`"


def test_every_column_is_documented():
    for t in schema.TABLES.values():
        assert t.doc
        names = [c.name for c in t.columns]
        assert len(names) == len(set(names)), t.name
        for c in t.columns:
            assert len(c.doc) > 10 and c.doc.endswith("."), f"{t.name}.{c.name}: document meaning, unit and when null"
    assert all(m.doc for m in schema.MANIFEST)
