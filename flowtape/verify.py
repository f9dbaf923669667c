"""Check a tape completely: every part readable, schema, sha256 and row counts as listed."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from .reader import Problem, Tape
from .writer import sha256_file


def verify(path: str | os.PathLike) -> tuple[Tape, list[Problem]]:
    """Open and fully read the tape; return it and every problem found (empty when sound).

    A TapeError (not a tape, corrupt manifest, other format) propagates.
    """
    tape = Tape(path)
    problems = list(tape.problems)
    files = tape.manifest["files"]
    actual: dict[str, int] = {}
    for part in tape.parts:
        entry = files.get(part.rel)
        try:
            data = pq.read_table(part.path)
        except (OSError, pa.ArrowException) as e:
            problems.append(Problem(part.rel, f"unreadable part ({str(e).splitlines()[0][:120]})"))
            continue
        actual[part.table] = actual.get(part.table, 0) + data.num_rows
        if entry is None:
            continue  # already reported as not listed
        if data.num_rows != entry["rows"]:
            problems.append(Problem(part.rel, f"has {data.num_rows} rows, manifest says {entry['rows']}"))
        digest = sha256_file(part.path)
        if digest != entry["sha256"]:
            problems.append(Problem(part.rel, f"sha256 {digest[:12]}… does not match the manifest's {entry['sha256'][:12]}…"))
        if entry.get("table") != part.table or entry.get("node") != part.node:
            problems.append(Problem(part.rel, f"manifest lists it as {entry.get('table')}/{entry.get('node')}"))
    for name, t in tape.manifest["tables"].items():
        listed = sum(e["rows"] for e in files.values() if e["table"] == name)
        if t.get("rows") != listed:
            problems.append(Problem("manifest.json", f"table {name!r} total {t.get('rows')} rows, its files list {listed}"))
    return tape, problems
