"""Kubernetes state into the tape: list + watch informers writing versions with validity intervals.

`KubeWatcher(writer, config).start()` lists Pods, Services, EndpointSlices and Nodes (plus the
ReplicaSets and Jobs needed to resolve a pod's workload: ReplicaSet -> Deployment, Job -> CronJob;
StatefulSet and DaemonSet owners are read from the pod's own ownerReference) and then watches
each from the list's resourceVersion, one thread per resource, until `.stop()`.

Informer semantics, per resource:
- watch with `allowWatchBookmarks`; every event and BOOKMARK advances the resourceVersion;
- a watch the server ends (its timeoutSeconds) is resumed from the last resourceVersion;
- 410 Gone (an HTTP status or an ERROR event mid-stream): relist, diff against what is open
  (objects missing from the list were deleted while we could not see: closed at relist time);
- connection errors, timeouts and 5xx/429: reconnect with capped exponential backoff, resuming
  from the last resourceVersion.
From the moment a watch breaks until it is watching again, the resource is blind: that interval
is written to the manifest's `gaps` (source `k8s/<resource>`), opened as soon as the break is
seen (end null) and closed when the watch is back, so a crash leaves an open-ended gap.

Versions (`valid_from`, `valid_to`): see `flowtape.capture.k8s.store` for the open-row +
closing-row crash-safety scheme and the rule readers apply. Objects present at start get
`valid_from` = creationTimestamp (the start time when unknown) and `observed_at_start` true.
Times are the recorder's wall clock when the change was observed.

Errors a user can cause (no kubeconfig, a bad one, an unreachable cluster at start, missing
RBAC) are KubeError: one line, non-zero exit.
"""

from __future__ import annotations

import copy
import json
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from ...errors import Exit, FlowtapeError

from .rows import CONVERTERS, controller_of, parse_time_ns
from .store import VersionStore

SOURCE_PREFIX = "k8s/"


class KubeError(FlowtapeError):
    """Kubeconfig missing or invalid, cluster unreachable, or access denied."""


# --- configuration -------------------------------------------------------------------------

KubeconfigOpt = Annotated[Optional[Path], typer.Option("--kubeconfig", help="Kubeconfig file (default: $KUBECONFIG or ~/.kube/config).", show_default=False)]
ContextOpt = Annotated[Optional[str], typer.Option("--context", help="Kubeconfig context to use (default: its current-context).", show_default=False)]
InClusterOpt = Annotated[bool, typer.Option("--in-cluster", help="Use the pod's service account (when running inside the cluster).")]
NoK8sOpt = Annotated[bool, typer.Option("--no-k8s", help="Do not record Kubernetes state even when a cluster is reachable.")]


@dataclass
class KubeConfig:
    """A resolved connection: the client's Configuration plus where it came from (for the manifest)."""

    configuration: Any  # kubernetes.client.Configuration
    source: str  # "in-cluster" or the kubeconfig path
    context: str | None = None

    @property
    def host(self) -> str:
        return self.configuration.host


def load_kube_config(kubeconfig: str | os.PathLike | None = None, context: str | None = None, in_cluster: bool = False) -> KubeConfig:
    """Resolve a cluster connection or raise KubeError with one line saying what is wrong.

    Example: cfg = load_kube_config("~/.kube/config", context="prod")
    """
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    cfg = client.Configuration()
    if in_cluster:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except ConfigException as e:
            raise KubeError(f"--in-cluster: not running in a pod with a service account ({_line(e)})") from None
        return KubeConfig(cfg, "in-cluster")
    path = Path(os.path.expanduser(str(kubeconfig))) if kubeconfig else None
    if path is None:
        env = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
        path = Path(os.path.expanduser(env or "~/.kube/config"))
    if not path.is_file():
        raise KubeError(f"{path}: no kubeconfig there; pass --kubeconfig, --in-cluster or --no-k8s")
    try:
        config.load_kube_config(config_file=str(path), context=context, client_configuration=cfg, persist_config=False)
    except ConfigException as e:
        raise KubeError(f"{path}: {_line(e)}") from None
    except Exception as e:  # yaml errors, missing cert files, exec plugins failing
        raise KubeError(f"{path}: not a usable kubeconfig ({type(e).__name__}: {_line(e)})") from None
    return KubeConfig(cfg, str(path), context)


def discover_kube_config(kubeconfig: str | os.PathLike | None = None, context: str | None = None, in_cluster: bool = False) -> KubeConfig | None:
    """For `flowtape record`: None when nothing points at a cluster at all (record without k8s);
    explicit flags that do not work still raise KubeError."""
    if kubeconfig or context or in_cluster:
        return load_kube_config(kubeconfig, context, in_cluster)
    if os.environ.get("KUBERNETES_SERVICE_HOST") and Path("/var/run/secrets/kubernetes.io/serviceaccount/token").exists():
        return load_kube_config(in_cluster=True)
    env = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    if Path(os.path.expanduser(env or "~/.kube/config")).is_file():
        return load_kube_config()
    return None


def _line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:240] if text else type(e).__name__


# --- resources -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    plural: str
    api: str  # kubernetes.client class name
    list_fn: str  # cluster-wide list/watch method
    table: str | None  # k8s_* table, or None for owner caches


RESOURCES: tuple[Resource, ...] = (
    # Owner caches first: the initial pod list resolves workloads against them.
    Resource("replicasets", "AppsV1Api", "list_replica_set_for_all_namespaces", None),
    Resource("jobs", "BatchV1Api", "list_job_for_all_namespaces", None),
    Resource("nodes", "CoreV1Api", "list_node", "k8s_nodes"),
    Resource("services", "CoreV1Api", "list_service_for_all_namespaces", "k8s_services"),
    Resource("endpointslices", "DiscoveryV1Api", "list_endpoint_slice_for_all_namespaces", "k8s_endpoints"),
    Resource("pods", "CoreV1Api", "list_pod_for_all_namespaces", "k8s_pods"),
)


class Gone(Exception):
    """The resourceVersion we hold is too old (410): relist."""


@dataclass
class Timing:
    """Network timing. Tests shorten it; defaults suit a real cluster."""

    connect_timeout: float = 10.0
    list_timeout: float = 120.0  # read timeout of one list page
    watch_seconds: int = 300  # server-side timeoutSeconds of one watch
    watch_idle: float = 360.0  # read timeout of a watch: longer than watch_seconds
    backoff_min: float = 0.5
    backoff_max: float = 30.0
    page_size: int = 500


@dataclass
class Stats:
    events: int = 0
    bookmarks: int = 0
    lists: int = 0
    relists_410: int = 0
    reconnects: int = 0
    timeouts: int = 0
    errors: int = 0
    last_error: str | None = None


class Owners:
    """ReplicaSet/Job -> its controller, for the workload chain. Bounded by the objects alive."""

    def __init__(self) -> None:
        self._up: dict[tuple[str, str, str], tuple[str, str] | None] = {}
        self._lock = threading.Lock()

    def __call__(self, kind: str, namespace: str, name: str) -> tuple[str, str] | None:
        with self._lock:
            return self._up.get((kind, namespace, name))

    def known(self, kind: str, namespace: str, name: str) -> bool:
        with self._lock:
            return (kind, namespace, name) in self._up

    def set(self, kind: str, obj: dict) -> None:
        meta = obj["metadata"]
        with self._lock:
            self._up[(kind, meta.get("namespace") or "default", meta["name"])] = controller_of(meta)

    def drop(self, kind: str, obj: dict) -> None:
        meta = obj["metadata"]
        with self._lock:
            self._up.pop((kind, meta.get("namespace") or "default", meta["name"]), None)

    def replace(self, kind: str, objs: list[dict]) -> None:
        with self._lock:
            for k in [k for k in self._up if k[0] == kind]:
                del self._up[k]
        for o in objs:
            self.set(kind, o)


_OWNER_KIND = {"replicasets": "ReplicaSet", "jobs": "Job"}


class Informer:
    """List + watch of one resource, feeding the versions store. Runs in its own thread."""

    def __init__(self, watcher: "KubeWatcher", res: Resource):
        self.w = watcher
        self.res = res
        self.rv: str | None = None
        self.stats = Stats()
        self.gap: dict | None = None  # the open gap entry while blind
        self._resp: Any = None
        self._thread: threading.Thread | None = None
        api_cls = getattr(__import__("kubernetes.client", fromlist=[res.api]), res.api)
        self._fn = getattr(api_cls(watcher.api_client), res.list_fn)

    @property
    def source(self) -> str:
        return SOURCE_PREFIX + self.res.plural

    # --- list ----------------------------------------------------------------------------

    def list(self, initial: bool) -> None:
        """List every object (paged) and reconcile the store with it."""
        t = self.w.timing
        items: list[dict] = []
        cont: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": t.page_size, "_preload_content": False, "_request_timeout": (t.connect_timeout, t.list_timeout)}
            if cont:
                kwargs["_continue"] = cont
            resp = self._fn(**kwargs)
            try:
                body = json.loads(resp.data)
            finally:
                resp.release_conn()
            items.extend(body.get("items") or [])
            meta = body.get("metadata") or {}
            cont = meta.get("continue")
            if not cont:
                break
        self.stats.lists += 1
        now = self.w.clock()
        self.rv = meta.get("resourceVersion")
        self.w._reconcile(self.res, items, now, initial)

    # --- watch ---------------------------------------------------------------------------

    def watch_once(self) -> None:
        """One watch request, until the server ends it, `stop()`, or an error (raised)."""
        from kubernetes.watch.watch import iter_resp_lines

        t = self.w.timing
        kwargs: dict[str, Any] = {
            "watch": True,
            "allow_watch_bookmarks": True,
            "timeout_seconds": t.watch_seconds,
            "_preload_content": False,
            "_request_timeout": (t.connect_timeout, t.watch_idle),
        }
        if self.rv:
            kwargs["resource_version"] = self.rv
        resp = self._fn(**kwargs)
        self._resp = resp
        try:
            if self.w._stopping.is_set():  # stop() ran while we connected: it could not interrupt us
                return
            self._end_gap()  # headers are in: we are watching again
            for line in iter_resp_lines(resp):
                if self.w._stopping.is_set():
                    return
                if line:
                    self.handle_line(line)
        finally:
            self._resp = None
            resp.close()  # never hand a half-read stream back to the pool
            resp.release_conn()

    def handle_line(self, line: str | bytes) -> None:
        """Apply one watch event (a JSON line as the API server streams it)."""
        event = json.loads(line)
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise Gone(obj.get("message") or "410 Gone")
            raise _StreamError(f"watch ERROR {code} {obj.get('reason')}: {obj.get('message')}", code)
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.rv = rv
        if kind == "BOOKMARK":
            self.stats.bookmarks += 1
            return
        self.stats.events += 1
        self.w._apply(self.res, kind, obj, self.w.clock())

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        backoff = self.w.timing.backoff_min
        need_list = False
        while not self.w._stopping.is_set():
            try:
                if need_list:
                    self.list(initial=False)
                    need_list = False
                self.watch_once()
                backoff = self.w.timing.backoff_min  # a clean end: the server's timeoutSeconds
                continue
            except Gone as e:
                self.stats.relists_410 += 1
                self._begin_gap(f"410 Gone: {_line(e)}; relisted")
                need_list, self.rv = True, None
                continue  # relist at once: the server told us exactly what to do
            except Exception as e:
                if self.w._stopping.is_set():
                    break
                kind, code = _classify(e)
                if code == 410:
                    self.stats.relists_410 += 1
                    self._begin_gap(f"410 Gone: {_line(e)}; relisted")
                    need_list, self.rv = True, None
                    continue
                if kind == "timeout":
                    self.stats.timeouts += 1
                else:
                    self.stats.errors += 1
                self.stats.reconnects += 1
                self.stats.last_error = f"{kind}: {_line(e)}"
                self._begin_gap(f"watch broken ({kind}): {_line(e)}")
            # Full jitter: many recorders restarting against one API server do not stampede it.
            self.w._stopping.wait(random.uniform(backoff / 2, backoff))
            backoff = min(backoff * 2, self.w.timing.backoff_max)
        self.w.store.flush()

    def _begin_gap(self, reason: str) -> None:
        if self.gap is None:
            self.gap = self.w._open_gap(self.source, reason)

    def _end_gap(self) -> None:
        if self.gap is not None:
            self.w._close_gap(self.gap)
            self.gap = None

    def interrupt(self) -> None:
        resp = self._resp
        if resp is not None:
            try:
                resp.shutdown()  # unblocks the read in the informer thread (urllib3 >= 2.3)
            except Exception:
                pass


class _StreamError(Exception):
    def __init__(self, message: str, code: int | None):
        super().__init__(message)
        self.status = code


def _classify(e: BaseException) -> tuple[str, int | None]:
    """('timeout' | 'connection' | 'http', status code or None)."""
    import urllib3.exceptions as ux
    from kubernetes.client.exceptions import ApiException

    if isinstance(e, ux.MaxRetryError):
        e = e.reason or e
    if isinstance(e, ux.NewConnectionError):  # a subclass of ConnectTimeoutError, but a refusal
        return "connection", None
    if isinstance(e, (ux.ReadTimeoutError, ux.ConnectTimeoutError, TimeoutError)):
        return "timeout", None
    if isinstance(e, (ApiException, _StreamError)):
        return "http", getattr(e, "status", None)
    if isinstance(e, ux.ProtocolError) and isinstance(getattr(e, "__cause__", None), TimeoutError):
        return "timeout", None
    return "connection", None


# --- the watcher ---------------------------------------------------------------------------


class KubeWatcher:
    """Record Kubernetes state into `writer` until stopped.

    Example:
        >>> cfg = load_kube_config()                                  # doctest: +SKIP
        >>> with TapeWriter("x.tape", node="n1") as w:                # doctest: +SKIP
        ...     kw = KubeWatcher(w, cfg); kw.start(); ...; kw.stop()
    """

    def __init__(
        self,
        writer: Any,
        config: KubeConfig,
        *,
        clock: Callable[[], int] = time.time_ns,
        timing: Timing | None = None,
        resources: tuple[Resource, ...] = RESOURCES,
        flush_seconds: float = 1.0,
    ):
        from kubernetes import client

        self.writer = writer
        self.config = config
        self.clock = clock
        self.timing = timing or Timing()
        conf = copy.deepcopy(config.configuration)
        conf.retries = False  # urllib3 would silently retry timeouts; our loop backs off and records gaps
        self.api_client = client.ApiClient(conf)
        self.owners = Owners()
        self.store = VersionStore(self._write)
        self.informers = [Informer(self, r) for r in resources]
        self.flush_seconds = flush_seconds
        self._stopping = threading.Event()
        self._changed = threading.Condition()
        self._threads: list[threading.Thread] = []
        self.started_ns: int | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """List everything (raising KubeError if the cluster cannot be read), then watch in threads."""
        self.started_ns = self.clock()
        for inf in self.informers:
            try:
                inf.list(initial=True)
            except Exception as e:
                raise self._start_error(inf.res, e) from None
        self.store.flush()
        self.writer.update("settings", {"k8s": {"api": self.config.host, "source": self.config.source, "context": self.config.context,
                                                "resources": [i.res.plural for i in self.informers]}})
        for inf in self.informers:
            t = threading.Thread(target=inf.run, name=f"k8s-{inf.res.plural}", daemon=True)
            t.start()
            self._threads.append(t)
        flusher = threading.Thread(target=self._flush_loop, name="k8s-flush", daemon=True)
        flusher.start()
        self._threads.append(flusher)

    def stop(self) -> None:
        """Stop watching. Open versions stay open (valid_to null); open gaps end now."""
        self._stopping.set()
        for inf in self.informers:
            inf.interrupt()
        for t in self._threads:
            t.join(timeout=max(self.timing.connect_timeout, 5.0))
        for inf in self.informers:
            inf._end_gap()
        self.store.flush()
        self.writer.update("extra", {"k8s": self.summary()})

    def __enter__(self) -> "KubeWatcher":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def summary(self) -> dict[str, Any]:
        return {
            "open_versions": self.store.open_count(),
            "rows_written": self.store.rows_written,
            "resources": {i.res.plural: {k: v for k, v in vars(i.stats).items()} for i in self.informers},
        }

    def _start_error(self, res: Resource, e: Exception) -> KubeError:
        kind, code = _classify(e)
        host = self.config.host
        if code in (401, 403):
            return KubeError(f"{host}: cannot list {res.plural} ({code}); grant get/list/watch on it (see docs/k8s.md for the RBAC)", Exit.NO_PERMISSION)
        if kind == "http":
            return KubeError(f"{host}: listing {res.plural} failed with HTTP {code}: {_line(e)}")
        return KubeError(f"{host}: Kubernetes API unreachable ({kind}: {_line(e)}); check --kubeconfig/--context or pass --no-k8s")

    def _flush_loop(self) -> None:
        while not self._stopping.wait(self.flush_seconds):
            self.store.flush()
            self.writer.maybe_rotate()

    # --- gaps ----------------------------------------------------------------------------

    def _open_gap(self, source: str, reason: str) -> dict:
        gap = self.writer.add_gap(source, self.clock(), None, reason)
        self._notify()
        return gap

    def _close_gap(self, gap: dict) -> None:
        self.writer.end_gap(gap, self.clock())
        self._notify()

    @property
    def open_gaps(self) -> list[str]:
        return [i.source for i in self.informers if i.gap is not None]

    # --- applying changes ----------------------------------------------------------------

    def _write(self, table: str, rows: list[dict]) -> None:
        self.writer.append(table, rows)

    def _reconcile(self, res: Resource, items: list[dict], now: int, initial: bool) -> None:
        if res.table is None:
            self.owners.replace(_OWNER_KIND[res.plural], items)
            self._notify()
            return
        conv = CONVERTERS[res.table]
        seen: set[str] = set()
        for obj in items:
            meta = obj.get("metadata") or {}
            key = meta.get("uid")
            if not key:
                continue
            seen.add(key)
            created = parse_time_ns(meta.get("creationTimestamp")) if initial else None
            self.store.upsert(
                res.table, key, conv(obj, self.owners), now_ns=now, resource_version=meta.get("resourceVersion"),
                observed_at_start=initial, valid_from_ns=(created if created is not None else now) if initial else None,
            )
        for key in self.store.keys(res.table) - seen:
            self.store.delete(res.table, key, now_ns=now)  # deleted while we were blind
        self._notify()

    def _apply(self, res: Resource, kind: str, obj: dict, now: int) -> None:
        meta = obj.get("metadata") or {}
        if res.table is None:
            owner_kind = _OWNER_KIND[res.plural]
            if kind == "DELETED":
                self.owners.drop(owner_kind, obj)
            else:
                self.owners.set(owner_kind, obj)
            self._notify()
            return
        key = meta.get("uid")
        if not key:
            return
        if kind == "DELETED":
            self.store.delete(res.table, key, now_ns=now)
        elif kind in ("ADDED", "MODIFIED"):
            self.store.upsert(res.table, key, CONVERTERS[res.table](obj, self.owners), now_ns=now, resource_version=meta.get("resourceVersion"))
        self._notify()

    # --- for tests and callers that need to wait on progress -----------------------------

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[["KubeWatcher"], bool], timeout: float = 10.0) -> bool:
        """Block until predicate(self) holds (re-checked after every change); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.05))
        return True
