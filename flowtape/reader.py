"""Tape: a recorded tape opened for reading, as DuckDB views and Polars LazyFrames.

Opening never modifies or deletes anything. Parts that cannot be read (a temporary part left
by a killed recorder, a truncated file, a part whose schema does not match) are left out of
the views and listed in `tape.problems`, so a crashed recording is still usable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:  # imported where used: the recorder writes tapes through this package and reads none,
    import duckdb  # and the two libraries' code pages were ~45 MiB of its resident memory
    import polars as pl

from . import storage
from .errors import QueryError, TapeError
from .manifest import read_manifest
from .schema import PARTITION_KEY, TABLES, Table
from .writer import PART_RE

# Made by flowtape/__init__.py, which wires the analysis half to the core without the core
# importing it: Tape -> flowtape.analyze.analysis.Analysis (see Tape.analysis).
ANALYSIS: Callable[["Tape"], Any] | None = None


@dataclass(frozen=True)
class Problem:
    """Something about a tape that is not as it should be, as one line for the user."""

    path: str  # relative to the tape, or "" for the tape as a whole
    message: str
    severity: str = "error"  # "error": data was left out or does not match; "warning": usable

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def where(self, tape: Path | str) -> str:
        """The problem as one line naming the file: `TAPE/PATH: message`."""
        return f"{tape}/{self.path}: {self.message}" if self.path else f"{tape}: {self.message}"


@dataclass(frozen=True)
class Part:
    table: str
    node: str
    path: Path
    rel: str
    rows: int
    bytes: int
    listed: bool  # listed in the manifest
    columns: frozenset[str] = frozenset()  # stored columns (a part older than a column lacks it: schema.Column.added)


def schema_mismatch(decl: Table, found: pa.Schema) -> str | None:
    """Describe how a part's stored schema differs from the table's, or None if it fits."""
    want = decl.arrow_schema
    added = {c.name for c in decl.columns if c.added}
    for f in want:
        idx = found.get_field_index(f.name)
        if idx < 0:
            if f.name in added:
                continue  # a part written before the column existed: read, the column null there
            return f"schema mismatch: column {f.name!r} is missing"
        got = found.field(idx).type
        if not got.equals(f.type):
            return f"schema mismatch: column {f.name!r} is {got}, expected {f.type}"
    extra = [n for n in found.names if n not in want.names]
    if extra:
        return f"schema mismatch: unexpected column {extra[0]!r}"
    return None


def scan_parts(path: Path, manifest: dict[str, Any]) -> tuple[list[Part], list[Problem]]:
    """Find the readable parts of a tape and describe everything else."""
    parts: list[Part] = []
    problems: list[Problem] = []
    files = manifest["files"]
    seen: set[str] = set()
    if not manifest.get("complete"):
        problems.append(Problem("", "tape was not closed cleanly (recorder stopped or still recording); complete parts are read", "warning"))
    for table_dir in sorted(p for p in path.iterdir() if p.is_dir()):
        decl = TABLES.get(table_dir.name)
        if decl is None:
            if not table_dir.name.startswith("."):
                problems.append(Problem(table_dir.name, "unknown table folder; ignored", "warning"))
            continue
        for node_dir in sorted(table_dir.iterdir()):
            if not node_dir.is_dir() or not node_dir.name.startswith(f"{PARTITION_KEY}="):
                problems.append(Problem(str(node_dir.relative_to(path)), f"not a {PARTITION_KEY}=<name> partition; ignored", "warning"))
                continue
            node = node_dir.name.split("=", 1)[1]
            for f in sorted(node_dir.iterdir()):
                rel = str(f.relative_to(path))
                if f.name.endswith(".tmp"):
                    problems.append(Problem(rel, "incomplete part (the writer stopped before finishing it); not read"))
                    continue
                if not PART_RE.match(f.name):
                    problems.append(Problem(rel, "not a part file; ignored", "warning"))
                    continue
                seen.add(rel)
                size = f.stat().st_size
                entry = files.get(rel)
                if entry is not None and entry["bytes"] != size:
                    problems.append(Problem(rel, f"truncated or modified part ({size} bytes, manifest says {entry['bytes']}); not read"))
                    continue
                try:
                    meta = pq.read_metadata(f)  # one footer read gives rows and schema
                    stored = meta.schema.to_arrow_schema()
                except (OSError, pa.ArrowException) as e:
                    why = "truncated part" if "magic" in str(e).lower() or "size" in str(e).lower() else "unreadable part"
                    problems.append(Problem(rel, f"{why} ({str(e).splitlines()[0][:120]}); not read"))
                    continue
                mismatch = schema_mismatch(decl, stored)
                if mismatch:
                    problems.append(Problem(rel, f"{mismatch}; not read"))
                    continue
                if entry is None:
                    problems.append(Problem(rel, "complete part not yet listed in the manifest (written after its last update); read", "warning"))
                parts.append(Part(decl.name, node, f, rel, meta.num_rows, size, entry is not None, frozenset(stored.names)))
    for rel in files:
        if rel not in seen:
            problems.append(Problem(rel, "listed in the manifest but missing on disk"))
    imported = (manifest.get("extra") or {}).get("import") or {}
    if imported.get("problems"):  # an importer read a damaged or odd input: the tape says so
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(imported["problems"].items()) if k != "garbage_bytes")
        what = "a damaged capture" if imported.get("damaged") else "a capture with oddities"
        problems.append(Problem("", f"imported from {what} ({kinds}); everything readable was kept (manifest extra.import)", "warning"))
    return parts, problems


class Tape:
    """A tape opened for reading.

    Example:
        >>> import flowtape
        >>> tape = flowtape.open("fixtures/tiny.tape")
        >>> tape.sql("select count(*) from flows").fetchall()
        [(7,)]
    """

    def __init__(self, path: str | os.PathLike):
        # s3://BUCKET/PREFIX/NAME.tape/: read from the local cache, fetched first (flowtape/storage.py)
        url = storage.remote_url(path)
        self.remote = storage.parse_url(url).url if url else None  # one spelling: s3://BUCKET/PREFIX/
        self.path = storage.cached(self.remote)[0] if self.remote else Path(path)
        self.manifest = read_manifest(self.path)
        self.parts, self.problems = scan_parts(self.path, self.manifest)
        for rel in (self.manifest.get("extra", {}).get("pulled_from") or {}).get("parts_missing") or []:
            self.problems.append(Problem(rel, "listed in the bucket's manifest but not in the bucket (a manifest newer than its parts); not read"))
        import duckdb

        self.con = duckdb.connect(":memory:")
        self._analysis: Any = None
        # Reports must not depend on the reader's local time zone (date_trunc, display, .pl()).
        self.con.execute("SET TimeZone = 'UTC'")
        # DuckDB draws its own progress bar on a terminal for queries over 2 s, into the middle of
        # our output (`flowtape report html` on a big tape): progress is ours to report.
        try:
            self.con.execute("SET enable_progress_bar = false")
        except duckdb.Error:  # in Jupyter, DuckDB wants ipywidgets to change it (its bar is a widget there)
            pass
        self._files: dict[str, list[str]] = {name: [] for name in TABLES}
        # columns added after some parts were written (schema.Column.added): absent from every
        # part -> a typed null in the view; absent from some -> read by column name
        self._absent: dict[str, list[Any]] = {name: [] for name in TABLES}
        self._mixed: dict[str, bool] = {name: False for name in TABLES}
        for p in self.parts:
            self._files[p.table].append(str(p.path))
        for name, decl in TABLES.items():
            mine = [p.columns for p in self.parts if p.table == name]
            for c in decl.columns:
                if c.added and mine:
                    have = sum(c.name in cols for cols in mine)
                    if have == 0:
                        self._absent[name].append(c)
                    elif have < len(mine):
                        self._mixed[name] = True
        for name, decl in TABLES.items():
            self._create_view(decl)

    # --- views -------------------------------------------------------------------------

    def _create_view(self, decl: Table) -> None:
        absent = {c.name: c for c in self._absent[decl.name]}
        cols = ", ".join(f'CAST(NULL AS {_DUCK_TYPES[str(absent[c].type)]}) AS "{c}"' if c in absent else f'"{c}"' for c in decl.column_names)
        files = self._files[decl.name]
        if files:
            source = (
                f"read_parquet({_sql_list(files)}, hive_partitioning = true, "
                f"hive_types = {{'{PARTITION_KEY}': VARCHAR}}{', union_by_name = true' if self._mixed[decl.name] else ''})"
            )
        else:
            empty = decl.view_schema.empty_table()
            self.con.register(f"__empty_{decl.name}", empty)
            source = f"__empty_{decl.name}"
        if files and decl.key:
            source = source.replace("hive_partitioning = true", "hive_partitioning = true, filename = true, file_row_number = true")
            source = _latest_version(decl, source)
        self.con.execute(f'CREATE OR REPLACE VIEW "{decl.name}" AS SELECT {cols} FROM {source}')

    @property
    def tables(self) -> list[str]:
        return list(TABLES)

    @property
    def nodes(self) -> list[str]:
        return sorted(self.manifest["nodes"])

    @property
    def window(self) -> tuple[int | None, int | None]:
        w = self.manifest["window"]
        return w.get("start_ns"), w.get("end_ns")

    @property
    def origin(self) -> str:
        """Where the rows came from: 'recorded', or 'imported from pcap: a.pcap, b.pcap' (the
        manifest's extra.import, written by an importer with each source's path and sha256)."""
        imported = (self.manifest.get("extra") or {}).get("import") or {}
        if not imported:
            return "recorded"
        names = ", ".join(Path(f.get("path", "?")).name for f in imported.get("files") or [])
        return f"imported from {imported.get('source', '?')}: {names}"

    def files(self, table: str) -> list[str]:
        """Paths of the readable parts of `table`."""
        return list(self._files[_known(table)])

    def rows(self, table: str) -> int:
        """Rows of `table` in the readable parts (from part footers, no scan)."""
        name = _known(table)
        return sum(p.rows for p in self.parts if p.table == name)

    def table(self, name: str) -> duckdb.DuckDBPyRelation:
        """The table as a lazy DuckDB relation (call .pl(), .to_arrow_table() or .fetchall())."""
        return self.con.table(_known(name))

    def lazy(self, name: str) -> pl.LazyFrame:
        """The table as a Polars LazyFrame (nothing is read until .collect())."""
        import polars as pl

        decl = TABLES[_known(name)]
        files = self._files[decl.name]
        if not files:
            return pl.from_arrow(decl.view_schema.empty_table()).lazy()
        if self._mixed[decl.name]:  # parts with and without added columns: read them all by the full schema
            lf = pl.scan_parquet(files, hive_partitioning=True, hive_schema={PARTITION_KEY: pl.String}, missing_columns="insert",
                                 schema=pl.from_arrow(decl.arrow_schema.empty_table()).schema)
        else:
            lf = pl.scan_parquet(files, hive_partitioning=True, hive_schema={PARTITION_KEY: pl.String})
        for c in self._absent[decl.name]:
            lf = lf.with_columns(pl.lit(None, dtype=pl.from_arrow(pa.array([], c.type)).dtype).alias(c.name))
        if decl.key:  # a version's closing row replaces its opening row (see schema.Table.key)
            group = [PARTITION_KEY, *decl.key, "valid_from"]
            closed = pl.col("valid_to").is_not_null()
            lf = lf.filter(closed | (closed.sum().over(group) == 0))
        return lf.select(decl.column_names)

    def sql(self, query: str, params: Any = None) -> duckdb.DuckDBPyRelation:
        """Run SQL over the tape's views; a lazy relation (QueryError with DuckDB's message on failure)."""
        import duckdb

        try:
            return self.con.sql(query, params=params) if params is not None else self.con.sql(query)
        except duckdb.Error as e:
            raise QueryError.failed(e) from None

    @property
    def analysis(self) -> Any:
        """The tape's analysis state (flowtape.analyze.analysis.Analysis: enrichment views and shared
        sums), made on first use and kept while the tape is open."""
        if self._analysis is None:
            if ANALYSIS is None:
                raise TapeError("flowtape.analyze is not available in this installation")
            self._analysis = ANALYSIS(self)
        return self._analysis

    @property
    def report(self) -> Any:
        """Every report as a method returning a Polars DataFrame: `tape.report.topology(by="zone")`."""
        return self.analysis.report

    def enriched(self, name: str) -> duckdb.DuckDBPyRelation:
        """`http`, `connections`, `flows` or `dns` with every endpoint named as it was at that time
        (`client_*`/`server_*` or `src_*`/`dst_*` columns); `.pl(lazy=True)` for a LazyFrame."""
        return self.analysis.enriched(name)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Tape":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Tape {self.remote or str(self.path)!r} nodes={self.nodes} parts={len(self.parts)} problems={len(self.problems)}>"


# DuckDB's names of the Arrow types of columns a part may lack (schema.Column.added)
_DUCK_TYPES = {"uint32": "UINTEGER", "int32": "INTEGER", "string": "VARCHAR", "bool": "BOOLEAN", "int64": "BIGINT", "uint64": "UBIGINT"}


def _latest_version(decl: Table, source: str) -> str:
    """State tables: a version's closing row replaces its opening row (valid_to null); rows keep
    the order they were written in (file, then row)."""
    group = ", ".join(f'"{c}"' for c in (PARTITION_KEY, *decl.key, "valid_from"))
    return (
        f'(SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY {group} ORDER BY "valid_to" IS NULL, "valid_to" DESC) AS __version_rank '
        f"FROM {source}) WHERE __version_rank = 1 ORDER BY filename, file_row_number)"
    )


def _known(name: str) -> str:
    if name not in TABLES:
        raise TapeError(f"unknown table {name!r} (tables: {', '.join(TABLES)})")
    return name


def _sql_list(items: list[str]) -> str:
    return "[" + ", ".join("'" + s.replace("'", "''") + "'" for s in items) + "]"


def open_tape(path: str | os.PathLike) -> Tape:
    """Open the tape at `path` (TapeError with a one-line message if it is not a readable tape)."""
    return Tape(path)
