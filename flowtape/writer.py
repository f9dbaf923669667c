"""TapeWriter: the only way rows get into a tape.

Rows are appended per table and node, buffered into row groups, and written to a part under
a temporary name (`.part-<seq>.parquet.tmp`). At each rotation (time or size) every open
part is closed, fsynced and renamed to `part-<seq>.parquet`, and the manifest is rewritten
atomically. A recorder killed with SIGKILL therefore loses at most the current rotation
interval; everything renamed is listed (or at least complete) and readable.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from functools import wraps
from typing import Any, Callable, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .conform import Data, conform
from .errors import DiskFull, PermissionDenied, TapeError, UsageError
from .manifest import MANIFEST_NAME, new_manifest, read_manifest, write_manifest
from .schema import FORMAT, PARTITION_KEY, Table, table as table_decl

PART_RE = re.compile(r"^part-(\d+)\.parquet$")
DIR_MODE = 0o700
FILE_MODE = 0o600

_NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


def check_node_name(node: str) -> str:
    """Node names become folder names: reject what cannot be one."""
    if not isinstance(node, str) or not _NODE_RE.match(node):
        raise UsageError(f"invalid node name {node!r}: use letters, digits, '.', '_' and '-' (as Kubernetes node names)")
    return node


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def clock_sample() -> dict[str, int]:
    """Offset between wall-clock and monotonic time, to convert kernel timestamps."""
    # Sample monotonic between two realtime reads and keep the midpoint: error <= half the gap.
    r1 = time.clock_gettime_ns(time.CLOCK_REALTIME)
    m = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    r2 = time.clock_gettime_ns(time.CLOCK_REALTIME)
    realtime = (r1 + r2) // 2
    return {"realtime_ns": realtime, "monotonic_ns": m, "offset_ns": realtime - m, "uncertainty_ns": (r2 - r1) // 2 + 1}


class _Packed:
    """Small appended tables kept as one Arrow IPC stream instead of live Arrow objects.

    Each live table costs ~20 KB of C++ objects beyond its data (per column: ChunkedArray,
    Array, ArrayData, buffer handles), so thousands of tiny appends buffered until a row group
    fills (a low-rate table) grow memory far beyond their rows. One record batch per table is
    written, so reading back gives the same chunks, hence the same Parquet bytes.
    """

    def __init__(self, schema: pa.Schema):
        self.sink = pa.BufferOutputStream()
        self.stream = pa.ipc.new_stream(self.sink, schema)

    def add(self, rows: pa.Table) -> None:
        self.stream.write_table(rows)

    def read(self) -> pa.Table:
        self.stream.close()
        return pa.ipc.open_stream(self.sink.getvalue()).read_all()


@dataclass
class _Part:
    table: Table
    node: str
    seq: int
    tmp: Path
    final: Path
    opened: float
    writer: pq.ParquetWriter | None = None
    buffered: list[pa.Table | _Packed] = field(default_factory=list)
    buffered_rows: int = 0
    rows: int = 0
    ts_min: int | None = None
    ts_max: int | None = None
    # Columns added to the table later (schema.Column.added) that this part is written without:
    # null in every row it was opened with. A part of HTTP/1 rows only is then byte for byte what
    # it was before the HTTP/2 columns existed (older readers read it; fixtures stay identical).
    omit: tuple[str, ...] | None = None
    required: tuple[str, ...] = ()  # columns nullable since a later release (Column.nullable_since) written required here


def _is_time(f: pa.Field) -> bool:
    return pa.types.is_timestamp(f.type) or (pa.types.is_integer(f.type) and f.name.endswith("_ns"))


_ENCODINGS: dict[pa.Schema, dict[str, Any]] = {}


def parquet_encodings(schema: pa.Schema) -> dict[str, Any]:
    """The ParquetWriter options that choose each column's encoding (issue 24, measured by
    benchmarks/bench_encodings.py): times (timestamps and *_ns integers) DELTA_BINARY_PACKED, which
    stores a sorted or clustered time column as small deltas (18-20 % smaller synthetic tapes);
    every other leaf column dictionary-encoded as before (numbers too: ports, status codes and
    pids repeat, and the bench found text-only dictionaries larger on the http table). Parquet
    readers decode any encoding, so parts written before this read unchanged."""
    hit = _ENCODINGS.get(schema)
    if hit is not None:
        return hit
    times = [f.name for f in schema if _is_time(f)]
    if not times:
        out: dict[str, Any] = {"use_dictionary": True}
    else:
        # the dictionary list names leaf columns (a list's or struct's leaves by their dotted path)
        buf = pa.BufferOutputStream()
        pq.write_table(schema.empty_table(), buf)
        leaves = pq.ParquetFile(pa.BufferReader(buf.getvalue())).schema
        paths = [leaves.column(i).path for i in range(len(leaves))]
        out = {"use_dictionary": [p for p in paths if p.split(".")[0] not in times],
               "column_encoding": {n: "DELTA_BINARY_PACKED" for n in times}}
    _ENCODINGS[schema] = out
    return out


def _disk_error(e: OSError, what: Path) -> Exception:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"{what}: no space left on device; stopped, rows written before this are kept")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(f"{what}: not writable ({e.strerror}); choose another -o path")
    return e


F = TypeVar("F", bound=Callable[..., Any])


def _locked(method: F) -> F:
    @wraps(method)
    def wrapper(self: "TapeWriter", *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class TapeWriter:
    """Write a tape. Use as a context manager, or call close().

    Example:
        >>> with TapeWriter("x.tape", node="node-a") as w:          # doctest: +SKIP
        ...     w.append("dns", [{"ts_query": 1, ...}])
    """

    def __init__(
        self,
        path: str | os.PathLike,
        node: str | None = None,
        *,
        append: bool = False,
        rotate_seconds: float = 60.0,
        rotate_bytes: int = 64 << 20,
        row_group_rows: int = 1 << 20,
        compression: str = "zstd",
        compression_level: int | None = 3,
        clock: dict[str, int] | None = None,
        pack_below_rows: int = 0,
    ):
        """`pack_below_rows`: appends of fewer rows are buffered packed (see _Packed), for
        producers that append many tiny batches; 0 (default) keeps every append as is."""
        self.path = Path(path)
        self.node = check_node_name(node or socket.gethostname().split(".")[0])
        self.rotate_seconds = rotate_seconds
        self.rotate_bytes = rotate_bytes
        self.row_group_rows = row_group_rows
        self.compression = compression
        self.compression_level = compression_level
        self.pack_below_rows = pack_below_rows
        self._lock = threading.RLock()  # producers (probes, k8s watcher) append from several threads
        self._parts: dict[tuple[str, str], _Part] = {}
        self._next_seq: dict[tuple[str, str], int] = {}
        self._closed = False
        self._last_rotation = time.monotonic()
        self._explicit_window: dict[str, int | None] = {"start_ns": None, "end_ns": None}
        self._data_window: list[int | None] = [None, None]

        try:
            if append:
                self.manifest = read_manifest(self.path)
                self.manifest["complete"] = False
                self._explicit_window = dict(self.manifest.get("window") or {"start_ns": None, "end_ns": None})
                for rel in self.manifest["files"]:
                    self._note_existing(rel)
                for p in self.path.glob("*/node=*/part-*.parquet"):
                    self._note_existing(str(p.relative_to(self.path)))
                for p in self.path.glob("*/node=*/.part-*.parquet.tmp"):  # a killed writer's unfinished part keeps its number
                    self._note_existing(str(p.with_name(p.name[1:-len(".tmp")]).relative_to(self.path)))
            else:
                if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
                    raise UsageError(f"{self.path}: already exists and is not empty; choose a new -o path (tapes are never overwritten)")
                self.path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                os.chmod(self.path, DIR_MODE)
                self.manifest = new_manifest()
            self.manifest["settings"].setdefault("writer", {})
            self.manifest["settings"]["writer"].update(
                {
                    "compression": compression,
                    "compression_level": compression_level,
                    "rotate_seconds": rotate_seconds,
                    "rotate_bytes": rotate_bytes,
                }
            )
            self._ensure_node(self.node, clock)
            write_manifest(self.path, self.manifest)
        except OSError as e:
            raise _disk_error(e, self.path) from None

    # --- metadata ----------------------------------------------------------------------

    def _note_existing(self, rel: str) -> None:
        parts = Path(rel).parts
        m = PART_RE.match(parts[-1]) if len(parts) == 3 else None
        if m and parts[1].startswith(f"{PARTITION_KEY}="):
            key = (parts[0], parts[1].split("=", 1)[1])
            self._next_seq[key] = max(self._next_seq.get(key, 1), int(m.group(1)) + 1)

    def _ensure_node(self, node: str, clock: dict[str, int] | None = None) -> None:
        nodes = self.manifest["nodes"]
        if node not in nodes:
            nodes[node] = {"clock": clock or clock_sample(), "host": {"hostname": socket.gethostname(), "kernel": os.uname().release}}
        elif clock:
            nodes[node]["clock"] = clock
        self.manifest["lost"].setdefault(node, {})

    @_locked
    def add_node(self, node: str, clock: dict[str, int] | None = None) -> None:
        """Declare another node whose rows this writer carries (merges, synthetic tapes)."""
        self._ensure_node(check_node_name(node), clock)

    @_locked
    def set_host(self, values: dict[str, Any], node: str | None = None) -> None:
        """Merge `values` into the node's `host` facts (addresses, etc_hosts, cgroups: see schema.MANIFEST)."""
        node = node or self.node
        self._ensure_node(node)
        self.manifest["nodes"][node].setdefault("host", {}).update(values)

    @_locked
    def set_window(self, start_ns: int | None = None, end_ns: int | None = None) -> None:
        """Set the capture window explicitly (a recorder does; otherwise it is the data's span)."""
        if start_ns is not None:
            self._explicit_window["start_ns"] = int(start_ns)
        if end_ns is not None:
            self._explicit_window["end_ns"] = int(end_ns)

    @_locked
    def set_lost(self, name: str, count: int, node: str | None = None) -> None:
        """Set a lost/skipped-data counter (cumulative value, e.g. read from a kernel map)."""
        node = node or self.node
        self._ensure_node(node)
        self.manifest["lost"][node][name] = int(count)

    @_locked
    def add_lost(self, name: str, count: int = 1, node: str | None = None) -> None:
        node = node or self.node
        self._ensure_node(node)
        lost = self.manifest["lost"][node]
        lost[name] = lost.get(name, 0) + int(count)

    @_locked
    def add_gap(self, source: str, start_ns: int, end_ns: int | None, reason: str, node: str | None = None) -> dict[str, Any]:
        """Record an interval during which `source` was blind (a broken watch, a paused probe).

        Returns the gap entry; a gap still open (end_ns None) is ended later with end_gap().
        """
        gap = {"source": source, "node": node or self.node, "start_ns": start_ns, "end_ns": end_ns, "reason": reason}
        self.manifest["gaps"].append(gap)
        return gap

    @_locked
    def end_gap(self, gap: dict[str, Any], end_ns: int) -> None:
        """End a gap opened with end_ns None (a crash before this leaves it open-ended: blind till the end)."""
        gap["end_ns"] = int(end_ns)

    @_locked
    def set_probe(self, name: str, settings: dict[str, Any]) -> None:
        self.manifest["probes"][name] = settings

    @_locked
    def update(self, section: str, values: dict[str, Any]) -> None:
        """Merge `values` into a manifest section: 'settings', 'redaction' or 'extra'."""
        if section not in ("settings", "redaction", "extra"):
            raise ValueError(f"cannot update manifest section {section!r}")
        self.manifest[section].update(values)

    # --- rows --------------------------------------------------------------------------

    @_locked
    def append(self, table: str, data: Data, node: str | None = None) -> int:
        """Append rows to `table` for `node` (default: the writer's node). Returns rows added.

        Raises SchemaError (naming table and column) when the rows do not fit the schema.
        """
        if self._closed:
            raise TapeError(f"{self.path}: writer is closed")
        decl = table_decl(table)
        node = check_node_name(node or self.node)
        rows = conform(decl, data, node)
        n = rows.num_rows
        if n:
            part = self._part(decl, node)
            added = [c.name for c in decl.columns if c.added]
            relaxed = [c.name for c in decl.columns if c.nullable_since]
            if added or relaxed:
                valued = {c for c in added if rows.column(c).null_count < n}
                nulls = {c for c in relaxed if rows.column(c).null_count}
                if part.omit is not None and (valued & set(part.omit) or nulls & set(part.required)):
                    # values for a column this part has not (or a null where it has none): the next part takes them
                    self._finish_part(part)
                    del self._parts[(decl.name, node)]
                    part = self._part(decl, node)
                if part.omit is None:
                    part.omit = tuple(c for c in added if c not in valued)
                    part.required = tuple(c for c in relaxed if c not in nulls)
            if n < self.pack_below_rows and all(c.num_chunks == 1 for c in rows.columns):
                if not part.buffered or not isinstance(part.buffered[-1], _Packed):
                    part.buffered.append(_Packed(rows.schema))
                part.buffered[-1].add(rows)  # type: ignore[union-attr]
            else:
                part.buffered.append(rows)
            part.buffered_rows += n
            part.rows += n
            mm = pc.min_max(rows.column(decl.time_column).cast(pa.int64()))
            lo, hi = mm["min"].as_py(), mm["max"].as_py()
            part.ts_min = lo if part.ts_min is None else min(part.ts_min, lo)
            part.ts_max = hi if part.ts_max is None else max(part.ts_max, hi)
            w = self._data_window
            w[0] = lo if w[0] is None else min(w[0], lo)
            w[1] = hi if w[1] is None else max(w[1], hi)
            if part.buffered_rows >= self.row_group_rows:
                self._flush_part(part)
                if part.writer is not None and part.tmp.stat().st_size >= self.rotate_bytes:
                    self._finish_part(part)
                    del self._parts[(decl.name, node)]
                    self._write_manifest()
        self.maybe_rotate()
        return n

    def _part(self, decl: Table, node: str) -> _Part:
        key = (decl.name, node)
        part = self._parts.get(key)
        if part is None:
            self._ensure_node(node)
            seq = self._next_seq.get(key, 1)
            self._next_seq[key] = seq + 1
            folder = self.path / decl.name / f"{PARTITION_KEY}={node}"
            try:
                for d in (self.path / decl.name, folder):
                    if not d.exists():
                        d.mkdir(mode=DIR_MODE)
            except OSError as e:
                raise _disk_error(e, folder) from None
            part = _Part(decl, node, seq, folder / f".part-{seq:06d}.parquet.tmp", folder / f"part-{seq:06d}.parquet", time.monotonic())
            self._parts[key] = part
        return part

    def _flush_part(self, part: _Part) -> None:
        if not part.buffered:
            return
        tables = [b.read() if isinstance(b, _Packed) else b for b in part.buffered]
        part.buffered, part.buffered_rows = [], 0
        data = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        del tables
        if part.omit:
            data = data.drop_columns(list(part.omit))
        try:
            if part.writer is None:
                fd = os.open(part.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
                os.close(fd)
                schema = part.table.arrow_schema
                if part.omit or part.required:
                    schema = pa.schema([f.with_nullable(False) if f.name in part.required else f for f in schema if f.name not in part.omit])
                schema = schema.with_metadata({"flowtape.format": FORMAT, "flowtape.table": part.table.name})
                part.writer = pq.ParquetWriter(
                    str(part.tmp),
                    schema,
                    compression=self.compression,
                    compression_level=self.compression_level,
                    write_statistics=True,
                    **parquet_encodings(schema),
                )
            if part.required:  # (the same arrays under the part's schema: those columns hold no null)
                data = pa.Table.from_arrays(data.columns, schema=part.writer.schema)
            part.writer.write_table(data.replace_schema_metadata(part.writer.schema.metadata), row_group_size=max(len(data), 1))
        except OSError as e:
            raise _disk_error(e, part.tmp) from None

    def _finish_part(self, part: _Part) -> None:
        """Close the part, make it durable, rename it into place and list it."""
        self._flush_part(part)
        if part.writer is None:
            return
        try:
            part.writer.close()
            with open(part.tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(part.tmp, part.final)
        except OSError as e:
            raise _disk_error(e, part.tmp) from None
        rel = str(part.final.relative_to(self.path))
        self.manifest["files"][rel] = {
            "table": part.table.name,
            "node": part.node,
            "rows": part.rows,
            "bytes": part.final.stat().st_size,
            "sha256": sha256_file(part.final),
            "ts_min_ns": part.ts_min,
            "ts_max_ns": part.ts_max,
        }

    @_locked
    def maybe_rotate(self, now: float | None = None) -> bool:
        """Rotate when the oldest open part is older than rotate_seconds. Call it from idle loops too."""
        now = time.monotonic() if now is None else now
        if self._parts and now - min(p.opened for p in self._parts.values()) >= self.rotate_seconds:
            self.rotate()
            return True
        if not self._parts and now - self._last_rotation >= self.rotate_seconds:
            self._write_manifest()  # counters (lost events, gaps) reach disk even when idle
            self._last_rotation = now
        return False

    @_locked
    def rotate(self) -> None:
        """Close and list every open part, then rewrite the manifest."""
        for part in list(self._parts.values()):
            self._finish_part(part)
        self._parts.clear()
        self._last_rotation = time.monotonic()
        self._write_manifest()

    def _write_manifest(self) -> None:
        m = self.manifest
        tables: dict[str, dict[str, int]] = {}
        for entry in m["files"].values():
            t = tables.setdefault(entry["table"], {"rows": 0, "parts": 0})
            t["rows"] += entry["rows"]
            t["parts"] += 1
        m["tables"] = dict(sorted(tables.items()))
        start = self._explicit_window["start_ns"]
        if start is None:
            start = self._data_window[0]
        end = self._explicit_window["end_ns"]
        m["window"] = {"start_ns": start, "end_ns": end}
        try:
            write_manifest(self.path, m)
        except OSError as e:
            raise _disk_error(e, self.path / MANIFEST_NAME) from None

    @_locked
    def close(self) -> None:
        """Finish every part and mark the tape complete."""
        if self._closed:
            return
        self.manifest["complete"] = True
        if self._explicit_window["end_ns"] is None and self._data_window[1] is not None:
            prior = self.manifest["window"].get("end_ns")
            self._explicit_window["end_ns"] = max(x for x in (prior, self._data_window[1]) if x is not None)
        self.rotate()
        self._closed = True

    @_locked
    def abort(self) -> None:
        """Stop without completing the open parts (they stay as .tmp); keep what was finished."""
        for part in self._parts.values():
            if part.writer is not None:
                try:
                    part.writer.close()
                except Exception:
                    pass
        self._parts.clear()
        self._closed = True

    def __enter__(self) -> "TapeWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or exc_type in (KeyboardInterrupt,):
            self.close()
        else:
            try:
                self.rotate()  # keep every row that reached us; the tape stays incomplete
            except Exception:
                self.abort()
            self._closed = True
