"""`kubectl get ... -o json` dumps -> Kubernetes versions in an existing tape (the forensic path).

When only dumps exist (taken during or right after an incident), each object becomes one
version valid over the whole tape window: `valid_from` = the window start (or the object's
creationTimestamp when it was created later), `valid_to` null (still valid at tape end),
`observed_at_start` true. The same converters as the live watcher keep exactly the same
columns; ReplicaSets and Jobs in the dumps resolve pod workloads; Secrets, ConfigMaps and every
other kind are skipped without being stored.

Every dump is read and validated before anything is written: a malformed dump is one error
line and the tape is left untouched.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ...errors import TapeError
from ...manifest import read_manifest
from ...writer import TapeWriter

from ..k8s.watcher import KubeError, Owners
from ..k8s.rows import CONVERTERS, parse_time_ns
from ..k8s.store import VersionStore

TABLE_OF_KIND = {"Pod": "k8s_pods", "Service": "k8s_services", "Node": "k8s_nodes", "EndpointSlice": "k8s_endpoints"}
OWNER_KINDS = ("ReplicaSet", "Job")


class DumpError(KubeError):
    """A dump that is not `kubectl get -o json` output."""


def read_dump(path: Path) -> list[dict[str, Any]]:
    """The items of one dump, validated (DumpError naming the file and the problem)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DumpError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DumpError(f"{path}: not JSON (line {e.lineno} column {e.colno}: {e.msg}); expected `kubectl get ... -o json` output") from None
    if not isinstance(doc, dict):
        raise DumpError(f"{path}: expected a JSON object (a List with items), got {type(doc).__name__}")
    kind = doc.get("kind")
    if isinstance(doc.get("items"), list) and (kind == "List" or str(kind).endswith("List")):
        items = doc["items"]
    elif kind and isinstance(doc.get("metadata"), dict) and "items" not in doc:
        items = [doc]  # `kubectl get pod NAME -o json` prints one object
    else:
        raise DumpError(f"{path}: expected `kubectl get ... -o json` output (kind List with items), got kind {kind!r}")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("metadata"), dict):
            raise DumpError(f"{path}: item {i} is not a Kubernetes object (no metadata)")
        k, meta = item.get("kind"), item["metadata"]
        if not isinstance(k, str) or not k:
            raise DumpError(f"{path}: item {i} has no kind")
        if not meta.get("name"):
            raise DumpError(f"{path}: item {i} ({k}) has no metadata.name")
        if k in TABLE_OF_KIND and not meta.get("uid"):
            raise DumpError(f"{path}: item {i} ({k} {meta.get('name')}) has no metadata.uid")
    return items


def import_kubectl(dumps: list[Path], into: Path, node: str | None = None) -> dict[str, Any]:
    """Add the objects of `dumps` to the tape `into`; returns counts per table and skipped kinds."""
    manifest = read_manifest(into)
    window = manifest.get("window") or {}
    start, end = window.get("start_ns"), window.get("end_ns")
    if start is None:
        raise TapeError(f"{into}: the tape has no capture window yet; import into a recorded tape")
    parsed = [(p, read_dump(p)) for p in dumps]  # all validated before a byte is written

    owners = Owners()
    objects: dict[tuple[str, str], dict] = {}  # (table, uid) -> object; a later dump wins
    skipped: dict[str, int] = {}
    for _, items in parsed:
        for obj in items:
            kind = obj["kind"]
            if kind in OWNER_KINDS:
                owners.set(kind, obj)
            elif kind in TABLE_OF_KIND:
                objects[(TABLE_OF_KIND[kind], obj["metadata"]["uid"])] = obj
            elif kind != "Deployment":  # Deployments name workloads through their ReplicaSets
                skipped[kind] = skipped.get(kind, 0) + 1

    rows: dict[str, list[dict]] = {}
    store = VersionStore(lambda table, batch: rows.setdefault(table, []).extend(batch), batch_rows=1 << 30)
    for (table, uid), obj in objects.items():
        meta = obj["metadata"]
        created = parse_time_ns(meta.get("creationTimestamp"))
        valid_from = max(start, created) if created is not None and (end is None or created <= end) else start
        store.upsert(table, uid, CONVERTERS[table](obj, owners), now_ns=valid_from, resource_version=meta.get("resourceVersion"),
                     observed_at_start=True, valid_from_ns=valid_from)
    store.flush()

    with TapeWriter(into, node=node or _single_node(manifest) or "kubectl", append=True) as w:
        for table, batch in rows.items():
            w.append(table, batch)
        previous = list((manifest.get("extra") or {}).get("kubectl_import") or [])
        previous.append({"files": [{"path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "items": len(items)} for p, items in parsed],
                         "rows": {t: len(b) for t, b in rows.items()}, "skipped_kinds": skipped})
        w.update("extra", {"kubectl_import": previous})
    return {"rows": {t: len(b) for t, b in sorted(rows.items())}, "skipped": skipped, "window": (start, end)}


def _single_node(manifest: dict) -> str | None:
    nodes = sorted(manifest.get("nodes") or {})
    return nodes[0] if len(nodes) == 1 else None
