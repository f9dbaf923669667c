"""The versions store: which version of every Kubernetes object is open, and the rows to write.

Crash safety (a flight recorder is killed, not stopped):
- a version is written when it OPENS, with `valid_to` null;
- when it closes (the object changed or was deleted), a CLOSING row is written: the same row
  with `valid_to` set (and `deleted` when the object went away).
A version therefore has one row (still open when recording stopped or crashed) or two rows
(open + closing) with the same identity key and `valid_from`. The rule for readers: per
(node, identity key, valid_from), keep the row whose `valid_to` is not null if there is one
(`flowtape.open()` applies it in the `k8s_*` views; `VERSION_KEYS` names the identity keys).
Nothing else is ever rewritten, so a kill loses at most the writer's current rotation interval.

Memory is bounded by the objects alive in the cluster (one open row each), not by the number
of events: closed versions leave the store when their closing row is queued, and queued rows
are handed to the writer in batches.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from ...schema import TABLES

# Identity of one versioned thing within a table (besides node and valid_from): schema.Table.key.
VERSION_KEYS: dict[str, tuple[str, ...]] = {name: t.key for name, t in TABLES.items() if t.key}

Sink = Callable[[str, list[dict[str, Any]]], None]


class VersionStore:
    """Thread-safe: each resource's informer thread calls upsert/delete; rows go to `sink` in batches."""

    def __init__(self, sink: Sink, batch_rows: int = 5000):
        self._sink = sink
        self._batch_rows = batch_rows
        self._lock = threading.RLock()
        # table -> object key -> subkey -> open row (content + validity columns)
        self._open: dict[str, dict[str, dict[str, dict[str, Any]]]] = {t: {} for t in VERSION_KEYS}
        self._pending: dict[str, list[dict[str, Any]]] = {t: [] for t in VERSION_KEYS}
        self._pending_rows = 0
        self.rows_written = 0

    # --- changes -------------------------------------------------------------------------

    def upsert(
        self,
        table: str,
        key: str,
        parts: dict[str, dict[str, Any]],
        *,
        now_ns: int,
        resource_version: str | None,
        observed_at_start: bool = False,
        valid_from_ns: int | None = None,
    ) -> int:
        """Make `parts` the current state of object `key`; returns how many versions opened."""
        with self._lock:
            current = self._open[table].get(key, {})
            opened = 0
            new: dict[str, dict[str, Any]] = {}
            for sub, content in parts.items():
                row = current.get(sub)
                if row is not None and _same(row, content):
                    new[sub] = row  # nothing stored changed: the version goes on
                    continue
                start = now_ns if valid_from_ns is None else valid_from_ns
                if row is not None:
                    start = self._close(table, row, now_ns, deleted=False)
                row = {
                    **content,
                    "valid_from": start,
                    "valid_to": None,
                    "observed_at_start": observed_at_start,
                    "deleted": False,
                    "resource_version": resource_version,
                }
                self._queue(table, row)
                new[sub] = row
                opened += 1
            for sub, row in current.items():
                if sub not in parts:  # an endpoint left the slice
                    self._close(table, row, now_ns, deleted=True)
            if new:
                self._open[table][key] = new
            else:
                self._open[table].pop(key, None)
            return opened

    def delete(self, table: str, key: str, *, now_ns: int) -> int:
        """The object is gone: close every open version of it."""
        with self._lock:
            current = self._open[table].pop(key, {})
            for row in current.values():
                self._close(table, row, now_ns, deleted=True)
            return len(current)

    def keys(self, table: str) -> set[str]:
        with self._lock:
            return set(self._open[table])

    def open_rows(self, table: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for parts in self._open[table].values() for r in parts.values()]

    def open_count(self) -> int:
        with self._lock:
            return sum(len(p) for t in self._open.values() for p in t.values())

    # --- rows ----------------------------------------------------------------------------

    def _close(self, table: str, row: dict[str, Any], now_ns: int, deleted: bool) -> int:
        # valid_to must be after valid_from even when two changes share a clock tick, or when a
        # creationTimestamp is ahead of our clock: nudge by 1 ns so intervals never overlap.
        end = max(now_ns, row["valid_from"] + 1)
        self._queue(table, {**row, "valid_to": end, "deleted": deleted})
        return end

    def _queue(self, table: str, row: dict[str, Any]) -> None:
        self._pending[table].append(row)
        self._pending_rows += 1
        if self._pending_rows >= self._batch_rows:
            self.flush()

    def flush(self) -> int:
        """Hand queued rows to the sink (the TapeWriter). Returns how many."""
        with self._lock:
            n = 0
            for table, rows in self._pending.items():
                if rows:
                    self._sink(table, rows)
                    n += len(rows)
                    self._pending[table] = []
            self._pending_rows = 0
            self.rows_written += n
            return n


_VALIDITY = ("valid_from", "valid_to", "observed_at_start", "deleted", "resource_version")


def _same(row: dict[str, Any], content: dict[str, Any]) -> bool:
    return all(row.get(k) == v for k, v in content.items())
