"""A Kubernetes API server for tests: kmock's KubernetesEmulator on loopback, in a thread.

The official synchronous `kubernetes` client talks to it over real HTTP (list, watch, create,
patch, delete). kmock keeps objects but not what a real API server adds, so `KubeLab` fills
in uid, creationTimestamp and a cluster-wide resourceVersion counter on every write.

Faults are injected where a real cluster produces them:
- `gone()` puts an ERROR 410 event into the live watch streams of a resource (mid-watch expiry);
- `drop()` aborts the TCP connections of the live watches (a dropped connection);
- `fail(action, plural, status=..., delay=..., times=...)` answers the next requests with an
  error status or holds them for `delay` seconds (a slow API) before serving them normally;
- `bookmark()` sends a BOOKMARK event (kmock does not produce them by itself).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kmock
import kubernetes

RESOURCES = {
    # plural -> (group, version, kind, namespaced)
    "pods": ("", "v1", "Pod", True),
    "services": ("", "v1", "Service", True),
    "nodes": ("", "v1", "Node", False),
    "endpointslices": ("discovery.k8s.io", "v1", "EndpointSlice", True),
    "replicasets": ("apps", "v1", "ReplicaSet", True),
    "jobs": ("batch", "v1", "Job", True),
}


@dataclass
class Fault:
    action: str  # "list" or "watch"
    plural: str
    status: int | None = None
    delay: float = 0.0
    times: int | None = 1  # None: until cleared


class ManualClock:
    """Wall clock of the watcher under test: the test decides what 'now' is (ns)."""

    def __init__(self, start_ns: int):
        self.now_ns = start_ns

    def set(self, ns: int) -> None:
        self.now_ns = ns

    def __call__(self) -> int:
        return self.now_ns


def iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns // 1_000_000_000, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeLab:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kube-lab", daemon=True)
        self.thread.start()
        self.faults: list[Fault] = []
        self._rv = itertools.count(1000)
        self._uids: dict[tuple[str, str | None, str], str] = {}
        self.run(self._enter())
        cfg = kubernetes.client.Configuration()
        cfg.host = str(self.server.url).rstrip("/")
        self.configuration = cfg
        self.api = kubernetes.client.ApiClient(cfg)

    # --- plumbing ------------------------------------------------------------------------

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    async def _enter(self) -> None:
        self.kmock = kmock.KubernetesEmulator()
        await self.kmock.__aenter__()
        for plural, (group, version, kind, namespaced) in RESOURCES.items():
            self.kmock.resources[kmock.resource(group, version, plural)] = kmock.ResourceInfo(
                kind=kind, namespaced=namespaced, verbs={"get", "list", "watch", "create", "patch", "delete"}
            )
        # Our faults come before the emulator's own handling; "no fault" falls through to it.
        (self.kmock ** 100) << self._faulty
        self.server = kmock.Server(self.kmock)
        await self.server.__aenter__()

    async def _faulty(self, request: kmock.Request) -> Any:
        action = request.action.value.lower() if request.action is not None else None
        plural = request.resource.plural if request.resource is not None else None
        for f in self.faults:
            if f.action == action and f.plural == plural:
                if f.times is not None:
                    f.times -= 1
                    if f.times <= 0:
                        self.faults.remove(f)
                if f.delay:
                    await asyncio.sleep(f.delay)
                if f.status is not None:
                    raise kmock.KubernetesError(status=f.status, reason="Injected", message=f"injected {f.status}")
                break
        raise NotImplementedError  # serve it normally (the emulator's fallback)

    def close(self) -> None:
        async def leave() -> None:
            await self.server.__aexit__(None, None, None)
            await self.kmock.__aexit__(None, None, None)

        try:
            self.run(leave())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)

    def kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig file pointing at this server (for CLI tests)."""
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: lab\n"
            f"clusters:\n- name: lab\n  cluster:\n    server: {self.configuration.host}\n"
            "contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n"
            "users:\n- name: lab\n  user:\n    token: test-token\n"
        )
        return path

    # --- objects -------------------------------------------------------------------------

    def _path(self, plural: str, namespace: str | None, name: str | None = None) -> str:
        group, version, _, namespaced = RESOURCES[plural]
        base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
        if namespaced:
            base += f"/namespaces/{namespace}"
        return f"{base}/{plural}" + (f"/{name}" if name else "")

    def _call(self, method: str, path: str, body: Any = None) -> dict:
        ctype = "application/merge-patch+json" if method == "PATCH" else "application/json"
        req = self.api.param_serialize(method, path, header_params={"Content-Type": ctype, "Accept": "application/json"}, body=body)
        resp = self.api.call_api(*req)
        resp.read()
        if not 200 <= resp.status <= 299:
            raise kubernetes.client.ApiException(http_resp=resp)
        return json.loads(resp.data)

    def create(self, plural: str, obj: dict, created_ns: int) -> dict:
        """Create an object as a real API server would store it (uid, creationTimestamp, resourceVersion)."""
        group, version, kind, _ = RESOURCES[plural]
        meta = dict(obj.get("metadata", {}))
        key = (plural, meta.get("namespace"), meta["name"])
        self._uids[key] = meta.setdefault("uid", str(uuid.uuid5(uuid.NAMESPACE_URL, f"{key}/{created_ns}")))
        meta.setdefault("creationTimestamp", iso(created_ns))
        meta["resourceVersion"] = str(next(self._rv))
        body = {"apiVersion": f"{group}/{version}".lstrip("/"), "kind": kind, **obj, "metadata": meta}
        return self._call("POST", self._path(plural, meta.get("namespace")), body)

    def patch(self, plural: str, namespace: str | None, name: str, changes: dict) -> dict:
        changes = {**changes, "metadata": {**changes.get("metadata", {}), "resourceVersion": str(next(self._rv))}}
        return self._call("PATCH", self._path(plural, namespace, name), changes)

    def delete(self, plural: str, namespace: str | None, name: str) -> dict:
        # The DELETED event carries the last state; a real server bumps its resourceVersion.
        self.patch(plural, namespace, name, {})
        return self._call("DELETE", self._path(plural, namespace, name))

    def uid(self, plural: str, namespace: str | None, name: str) -> str:
        return self._uids[(plural, namespace, name)]

    # --- faults --------------------------------------------------------------------------

    def fail(self, action: str, plural: str, *, status: int | None = None, delay: float = 0.0, times: int | None = 1) -> Fault:
        f = Fault(action, plural, status, delay, times)
        self.faults.append(f)
        return f

    def clear(self, fault: Fault) -> None:
        if fault in self.faults:
            self.faults.remove(fault)

    def _bus(self, plural: str) -> Any:
        group, version, _, _ = RESOURCES[plural]
        return self.kmock._buses[kmock.resource(group, version, plural)]

    def gone(self, plural: str) -> None:
        """A 410 Gone ERROR event in the live watch streams, as a server whose history expired sends it."""
        status = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": 410,
                  "reason": "Expired", "message": "too old resource version: 1 (2)"}
        self.run(self._bus(plural).put({"type": "ERROR", "object": status}))

    def bookmark(self, plural: str, resource_version: str) -> None:
        _, _, kind, _ = RESOURCES[plural]
        obj = {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": resource_version}}
        self.run(self._bus(plural).put({"type": "BOOKMARK", "object": obj}))

    def watches(self, plural: str) -> list[kmock.Request]:
        return [r for r in list(self.kmock._requests) if r.action == kmock.action.WATCH and r.resource is not None and r.resource.plural == plural]

    def drop(self, plural: str) -> int:
        """Abort the TCP connections of every live watch of `plural`; returns how many."""

        async def abort() -> int:
            n = 0
            for r in self.watches(plural):
                transport = r._raw_request.transport if r._raw_request is not None else None
                if transport is not None and not transport.is_closing():
                    transport.abort()
                    n += 1
            return n

        return self.run(abort())
