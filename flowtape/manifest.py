"""Reading, validating and atomically writing `manifest.json`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from . import __version__
from .errors import TapeError
from .schema import FORMAT, MANIFEST

MANIFEST_NAME = "manifest.json"


def new_manifest() -> dict[str, Any]:
    now = time.time_ns()
    return {
        "format": FORMAT,
        "tool": {"name": "flowtape", "version": __version__},
        "created_ns": now,
        "updated_ns": now,
        "complete": False,
        "window": {"start_ns": None, "end_ns": None},
        "nodes": {},
        "probes": {},
        "settings": {},
        "redaction": {},
        "lost": {},
        "gaps": [],
        "tables": {},
        "files": {},
        "extra": {},
    }


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` so that readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_manifest(tape: Path, manifest: dict[str, Any]) -> None:
    manifest["updated_ns"] = time.time_ns()
    write_atomic(tape / MANIFEST_NAME, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


def read_manifest(tape: Path) -> dict[str, Any]:
    """Read and validate the manifest of the tape at `tape`; TapeError with one line if not valid."""
    tape = Path(tape)
    if not tape.exists():
        raise TapeError(f"{tape}: no such tape (the path does not exist)")
    if not tape.is_dir():
        raise TapeError(f"{tape}: not a tape (a tape is a folder with a manifest.json; this is a file)")
    path = tape / MANIFEST_NAME
    if not path.exists():
        raise TapeError(f"{tape}: not a flowtape tape (no {MANIFEST_NAME})")
    try:
        text = path.read_text()
    except PermissionError:
        raise TapeError(f"{path}: permission denied (tapes are written 0600; read as the user who recorded or root)") from None
    except UnicodeDecodeError:
        raise TapeError(f"{path}: corrupt manifest (not UTF-8 text)") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise TapeError(f"{path}: corrupt manifest (invalid JSON at line {e.lineno} column {e.colno}: {e.msg})") from None
    if not isinstance(manifest, dict):
        raise TapeError(f"{path}: corrupt manifest (top level is not an object)")
    fmt = manifest.get("format")
    if fmt != FORMAT:
        if isinstance(fmt, str) and fmt.startswith("flowtape/"):
            raise TapeError(f"{tape}: tape format {fmt!r} is not supported by this flowtape ({__version__}), which reads {FORMAT!r}; use a flowtape release that reads {fmt!r}")
        raise TapeError(f"{path}: not a flowtape manifest (format is {fmt!r}, expected {FORMAT!r})")
    types = {"string": str, "object": dict, "array": list, "int": int, "bool": bool}
    for field in MANIFEST:
        if field.path not in manifest:
            if field.required:
                raise TapeError(f"{path}: corrupt manifest (missing key {field.path!r})")
            continue
        if not isinstance(manifest[field.path], types[field.type]):
            raise TapeError(f"{path}: corrupt manifest (key {field.path!r} should be {field.type})")
    for rel, entry in manifest["files"].items():
        if not isinstance(entry, dict) or not {"table", "node", "rows", "bytes", "sha256"} <= entry.keys():
            raise TapeError(f"{path}: corrupt manifest (file entry {rel!r} lacks table/node/rows/bytes/sha256)")
    for key in ("probes", "settings", "redaction", "lost", "extra"):
        manifest.setdefault(key, {})
    manifest.setdefault("gaps", [])
    return manifest
