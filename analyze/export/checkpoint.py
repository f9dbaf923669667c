"""Resuming an interrupted export without sending anything twice.

The batches of an export are the same on every run with the same tape and arguments: spans are
made one time slice at a time and ordered within it (spans.py), a batch is `batch_spans`
consecutive spans of one slice, a batch too big for one request is halved the same way every
time, and metric points come in a sorted order. So a position (slice, batch, request) names the
same request on every run, and the checkpoint stores, per stream, the position of the next
request not yet acknowledged. A restart skips what comes before it (whole slices without even
computing them) and sends the rest.

The key is a digest of the tape's manifest (which lists every part with its sha256: another or a
grown tape is another key) and of every argument that changes what is sent or how it is cut;
header values are left out (a rotated token sends the same data) and never stored. The file is
rewritten (atomically: a new file renamed over the old) after every acknowledged request, so a
killed process loses no acknowledgement; only a request in flight when it died, acknowledged by
the receiver but not yet recorded, can be sent again. A crash of the machine itself may lose the
last writes (they are not fsynced: one per request would cost more than the request).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

VERSION = 1

Position = tuple[int, int, int]
"""(slice, batch within the slice, request within the batch) of the next request to send."""


def export_key(manifest_path: Path, args: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(Path(manifest_path).read_bytes())
    h.update(json.dumps({"v": VERSION, **args}, sort_keys=True, default=str).encode())
    return h.hexdigest()


def default_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "flowtape" / "export"


class Checkpoint:
    """Per-stream positions of an export, saved at `path`."""

    def __init__(self, path: Path, key: str, describe: dict[str, Any]):
        self.path, self.key = Path(path), key
        self.state: dict[str, Any] = {"version": VERSION, "key": key, **describe, "streams": {}, "rejected": 0, "completed": None}
        self.resumed = False

    @classmethod
    def open(cls, path: Path, key: str, describe: dict[str, Any], fresh: bool = False) -> "Checkpoint":
        ck = cls(path, key, describe)
        if not fresh and ck.path.exists():
            try:
                old = json.loads(ck.path.read_text())
            except (OSError, ValueError):
                old = None
            if isinstance(old, dict) and old.get("version") == VERSION and old.get("key") == key:
                ck.state.update(old)
                ck.resumed = any(v.get("position") != [0, 0, 0] for v in old.get("streams", {}).values())
        return ck

    def position(self, stream: str) -> Position:
        s = self.state["streams"].get(stream)
        return tuple(s["position"]) if s else (0, 0, 0)  # type: ignore[return-value]

    def done(self, stream: str) -> bool:
        s = self.state["streams"].get(stream)
        return bool(s and s.get("done"))

    def acknowledged(self, stream: str, next_position: Position, items: int, rejected: int) -> None:
        s = self.state["streams"].setdefault(stream, {"position": [0, 0, 0], "items": 0, "done": False})
        s["position"] = list(next_position)
        s["items"] += items
        self.state["rejected"] += rejected
        self.save()

    def finish(self, stream: str) -> None:
        s = self.state["streams"].setdefault(stream, {"position": [0, 0, 0], "items": 0, "done": False})
        s["done"] = True
        self.save()

    def complete(self) -> None:
        self.state["completed"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.save()

    @property
    def completed(self) -> str | None:
        return self.state.get("completed")

    def items(self, stream: str) -> int:
        s = self.state["streams"].get(stream)
        return int(s["items"]) if s else 0

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, self.path)
