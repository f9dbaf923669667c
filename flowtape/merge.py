"""Merge node tapes into one: copy the readable parts, write one manifest.

Parts are copied byte for byte (their sha256 stays valid) and renumbered per table and node,
so two recordings of the same node can be merged too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from .errors import TapeError, UsageError
from .manifest import new_manifest, write_manifest
from .reader import Problem, Tape
from .schema import PARTITION_KEY
from .storage import client, list_tapes, remote_url
from .writer import DIR_MODE, FILE_MODE, sha256_file


def _min(*xs: int | None) -> int | None:
    xs2 = [x for x in xs if x is not None]
    return min(xs2) if xs2 else None


def _max(*xs: int | None) -> int | None:
    xs2 = [x for x in xs if x is not None]
    return max(xs2) if xs2 else None


def expand_inputs(inputs: list[str | os.PathLike]) -> list[str | os.PathLike]:
    """Local tapes as given; an s3:// URL is a tape, or a prefix standing for every tape under it
    (the node tapes a DaemonSet uploaded for one incident)."""
    out: list[str | os.PathLike] = []
    s3 = None
    for p in inputs:
        url = remote_url(p)
        if url is None:
            out.append(p)
            continue
        s3 = s3 or client()
        found = list_tapes(url, s3)
        if not found:
            raise TapeError(f"{url}: no tapes there (no NAME.tape/manifest.json under this prefix)")
        out += [loc.url for loc in found]
    return out


def merge(inputs: list[str | os.PathLike], out: str | os.PathLike, on_problem: Callable[[str, Problem], None] | None = None) -> dict:
    """Merge `inputs` into a new tape at `out`; returns its manifest.

    Problems of the inputs (incomplete parts...) are passed to `on_problem`; their readable
    parts are merged.
    """
    out = Path(out)
    if not inputs:
        raise UsageError("merge needs at least one input tape")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out}: already exists and is not empty; choose a new -o path")
    tapes = [Tape(p) for p in expand_inputs(inputs)]
    for t in tapes:
        if t.path.resolve() == out.resolve():
            raise UsageError(f"{out}: output is also an input")
    m = new_manifest()
    out.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    seq: dict[tuple[str, str], int] = {}
    merged_from = []
    try:
        for tape in tapes:
            src = tape.manifest
            for p in tape.problems:
                if on_problem:
                    on_problem(tape.remote or str(tape.path), p)
            merged_from.append({"path": tape.remote or str(tape.path), "created_ns": src["created_ns"], "nodes": sorted(src["nodes"]), "complete": src["complete"]})
            for node, info in src["nodes"].items():
                if node in m["nodes"]:
                    m["nodes"][node].setdefault("other_clocks", []).append(info.get("clock"))
                else:
                    m["nodes"][node] = info
            for node, counters in src["lost"].items():
                dst = m["lost"].setdefault(node, {})
                for k, v in counters.items():
                    dst[k] = dst.get(k, 0) + v
            m["gaps"] += src["gaps"]
            for k in ("probes", "settings", "redaction"):
                for name, value in src[k].items():
                    if name in m[k] and m[k][name] != value:
                        m["extra"].setdefault(f"conflicting_{k}", {}).setdefault(name, []).append({"tape": str(tape.path), "value": value})
                    else:
                        m[k].setdefault(name, value)
            w = src["window"]
            m["window"]["start_ns"] = _min(m["window"]["start_ns"], w.get("start_ns"))
            m["window"]["end_ns"] = _max(m["window"]["end_ns"], w.get("end_ns"))
            for part in tape.parts:
                key = (part.table, part.node)
                n = seq.get(key, 1)
                seq[key] = n + 1
                folder = out / part.table / f"{PARTITION_KEY}={part.node}"
                folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                dst = folder / f"part-{n:06d}.parquet"
                shutil.copyfile(part.path, dst)
                os.chmod(dst, FILE_MODE)
                entry = dict(src["files"].get(part.rel) or {})
                if not entry:
                    entry = {"table": part.table, "node": part.node, "rows": part.rows, "ts_min_ns": None, "ts_max_ns": None}
                entry["bytes"] = dst.stat().st_size
                entry["sha256"] = entry.get("sha256") or sha256_file(dst)
                m["files"][str(dst.relative_to(out))] = entry
            tape.close()
    except OSError as e:
        raise TapeError(f"{out}: merge failed ({e.strerror or e}); the partial output was left for inspection") from None
    for entry in m["files"].values():
        t = m["tables"].setdefault(entry["table"], {"rows": 0, "parts": 0})
        t["rows"] += entry["rows"]
        t["parts"] += 1
    m["tables"] = dict(sorted(m["tables"].items()))
    m["extra"]["merged_from"] = merged_from
    # each node's wall-clock minus monotonic offset, sampled by its recorder: the reference for
    # judging cross-node ordering (rows are already in wall-clock time)
    m["extra"]["clock_offsets_ns"] = {node: (info.get("clock") or {}).get("offset_ns") for node, info in sorted(m["nodes"].items())}
    m["complete"] = all(x["complete"] for x in merged_from)
    write_manifest(out, m)
    return m
