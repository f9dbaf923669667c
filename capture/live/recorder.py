"""The live recorder: runs the probes, hands their rows to a TapeWriter, stops cleanly.

    probes (kernel) --ring buffer / map drain--> FlowProbe, ConnectionProbe, L7Probe
        --> flow_rows / ConnectionTracker / L7Decoder (pure) --> TapeWriter --> NAME.tape/
    Kubernetes API --list+watch (threads)--> KubeWatcher --> the same TapeWriter

One thread for the probes: the loop polls the connection and L7 ring buffers, drains the flow
maps every interval, lets the writer rotate, prints a status line, and stops on
SIGINT/SIGTERM or at --duration. The Kubernetes watcher (when a cluster is configured) runs
its own threads beside it. A failure of one probe on this host (a missing tracepoint) is
reported in one line and recording goes on with the others.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ...errors import DiskFull, FlowtapeError, Unsupported, UsageError
from ... import storage
from ...manifest import read_manifest
from ...writer import TapeWriter, clock_sample
from . import ebpf
from .connections import CLOSE, ESTABLISHED, EV_STATE, CgroupResolver, ConnectionProbe, ConnectionTracker
from .flows import FlowProbe
from .host import NamespaceAddresses, cgroup_facts, etc_hosts, own_addresses
from .interfaces import coverage
from ..decode.dns_rows import dns_table
from ..decode.http_pairing import Redaction
from ..decode.http_rows import rows_in_use
from .inject import MODES as INJECT_MODES, InjectProbe
from .l7 import PREFIX_BYTES, L7Decoder, L7Probe

PROBES = ("flows", "connections", "l7", "gotls", "goroutines")  # gotls: Go programs' HTTPS, read by the l7 probe; goroutines: their http.goroutine and go_spawns
L7_ROWS_EVERY_S = 1.0  # how often decoded L7 rows are handed to the writer
RELEASE_EVERY_S = 30.0  # how often the libraries the recorder never runs are paged out again (ebpf.release_unused_libraries)


LIVE_ROW_GROUP_ROWS = 1 << 14  # see run(): bounds the rows a table holds in memory before they are written


@dataclass
class RecordOptions:
    out: Path
    node: str | None = None
    probes: tuple[str, ...] = PROBES
    interfaces: list[str] | None = None
    flow_interval: float = 5.0
    rotate: float = 60.0
    duration: float | None = None
    ssl_libs: list[str] | None = None  # None: the system libssl; [] : no HTTPS uprobes
    no_redact: bool = False
    header_allow_list: list[str] | None = None  # None: http_pairing.DEFAULT_HEADER_ALLOW_LIST
    owner_fallback: bool = False  # ConnectionProbe.owner_fallback (--owner-fallback)
    kube: Any = None  # capture.k8s.KubeConfig, or None: no Kubernetes watcher
    kube_explicit: bool = False  # the cluster was asked for by flags: failing to reach it is an error
    upload: str | None = None  # s3://BUCKET/PREFIX/: finished parts and the manifest go there as rotations complete
    upload_timeout: float = 60.0  # seconds the final upload may take at the end before giving up (the tape stays local)
    resume: bool = False  # an existing tape at `out` is continued (a restarted DaemonSet pod), not refused
    inject_trace_context: str = "off"  # "ip-option": bpf/inject.c writes a trace id into egress packets (capture.live.inject)


@dataclass
class RecordSummary:
    tape: Path
    seconds: float = 0.0
    rows: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    upload: Any = None  # storage.SyncResult of the final upload, when --upload
    upload_error: FlowtapeError | None = None  # the final upload failed: the parts are all local
    uploaded_parts: int = 0
    uploaded_bytes: int = 0


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _du(path: Path) -> int:
    total = 0
    for dirpath, _d, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def check_host() -> None:
    """Everything needed before any program is compiled, in the order a user fixes it."""
    ebpf.check_privileges()
    ebpf.import_bcc()
    ebpf.kernel_headers()
    ebpf.tracefs()


def tune_gc() -> None:
    """Each connection endpoint and each HTTP exchange allocates a few short-lived objects and
    keeps one for a grace period: with the default thresholds the cyclic GC ran every 700
    allocations and rescanned the survivors, about 30% of the recorder's time at 20k
    endpoints/s, and 1 µs of the L7 recorder's 7.5 per request (bench_l7_replay). Objects
    alive now (modules, bcc, pyarrow) are frozen out of the scans. Process-wide: the recorder
    is its own process (the CLI), which is why the recorder and not a probe does this."""
    gc.freeze()
    gc.set_threshold(max(gc.get_threshold()[0], 50_000), 20, 50)


def render_sources(opts: RecordOptions) -> str:
    """The final C of every selected probe (for --print-bpf)."""
    parts = []
    if "flows" in opts.probes:
        parts.append(FlowProbe(interfaces=opts.interfaces).source())
    if "connections" in opts.probes:
        parts.append(ConnectionProbe(owner_fallback=opts.owner_fallback).source())
    if "l7" in opts.probes:
        parts.append(L7Probe(interfaces=opts.interfaces, ssl_libs=opts.ssl_libs, go_tls="gotls" in opts.probes,
                             goroutines="goroutines" in opts.probes).source())
    if opts.inject_trace_context != "off":
        parts.append(InjectProbe(interfaces=opts.interfaces).source())
    return "\n".join(parts)


class Recorder:
    def __init__(self, opts: RecordOptions, status: TextIO | None = None):
        for p in opts.probes:
            if p not in PROBES:
                raise UsageError(f"--probes: unknown probe {p!r} (probes: {', '.join(PROBES)})")
        if "gotls" in opts.probes and "l7" not in opts.probes:
            raise UsageError("--probes: gotls needs l7 (Go's HTTPS plaintext goes through the l7 probe's decoder): add l7, or drop gotls")
        if "goroutines" in opts.probes and "gotls" not in opts.probes:
            raise UsageError("--probes: goroutines needs gotls (the goroutine probes go on the Go binaries it attaches to): add gotls, or drop goroutines")
        if opts.inject_trace_context not in INJECT_MODES:
            raise UsageError(f"--inject-trace-context: {opts.inject_trace_context!r} is not a mode (use ip-option, or off)")
        if opts.inject_trace_context != "off" and "l7" not in opts.probes:
            raise UsageError("--inject-trace-context needs the l7 probe (it records the trace ids it writes): add l7 to --probes")
        if opts.flow_interval <= 0 or opts.rotate <= 0 or (opts.duration is not None and opts.duration <= 0):
            raise UsageError("--flow-interval, --rotate and --duration must be positive")
        self.opts = opts
        self.status = status if status is not None else sys.stderr
        self.stop_requested = False
        self.flows: FlowProbe | None = None
        self.conns: ConnectionProbe | None = None
        self.tracker: ConnectionTracker | None = None
        self.l7: L7Probe | None = None
        self.l7dec: L7Decoder | None = None
        self.inject: InjectProbe | None = None
        self._l7_settings: dict[str, Any] = {}
        self.kube: Any = None
        self.writer: TapeWriter | None = None
        self.uploads: storage.UploadLoop | None = None
        self.summary = RecordSummary(opts.out)
        self.events = 0
        self.cgroups: CgroupResolver | None = None
        self.namespaces: NamespaceAddresses | None = None
        self._cgroups_noted: set[int] = set()
        self._cgroup_facts: dict[str, dict[str, Any]] = {}

    # --- set-up -----------------------------------------------------------------------------

    def _warn(self, msg: str) -> None:
        self.summary.warnings.append(msg)
        print(f"flowtape: warning: {msg}", file=self.status, flush=True)

    def _start_probes(self, start_wall: int) -> None:
        w = self.writer
        assert w is not None
        failures = []
        if "flows" in self.opts.probes:
            probe = FlowProbe(interfaces=self.opts.interfaces)
            try:
                probe.load()
                covered = probe.attach()
                self.flows = probe
                w.set_probe("flows", {
                    "program": "bpf/flows.c (tcx ingress+egress)", "interval_s": self.opts.flow_interval,
                    "map_entries": probe.map_entries, "interfaces": None if self.opts.interfaces is None else list(self.opts.interfaces),
                    "covered": {i.name: coverage(i) for i in covered},
                    "counting": "once per node: ingress, or egress of packets that did not enter through a covered interface",
                })
            except Unsupported as e:
                self._probe_failed("flows", probe, e, start_wall, failures)
        if "connections" in self.opts.probes:
            probe = ConnectionProbe(owner_fallback=self.opts.owner_fallback)
            try:
                probe.check()
                probe.load()
                self.conns = probe
                offset = self._offset
                self.cgroups = CgroupResolver(probe.cgroup)
                self.tracker = ConnectionTracker(w.node, lambda t: t + offset, self.cgroups.container_id)
                self.tracker.live_source = probe.open_endpoints  # the final rows include endpoints still open
                probe.open(self._on_conn_event)
                for what, effect in probe.missing.items():
                    self._warn(f"{what} is not available on this host: {effect} will be missing from the tape")
                w.set_probe("connections", {
                    "program": "bpf/connections.c (sock_ops and getpeername hooks on cgroup v2 + tracepoints)", "cgroup": str(probe.cgroup) if probe.cgroup else None,
                    "server_owner": probe.server_owner,
                    "missing": dict(probe.missing), "ringbuf_pages": probe.ringbuf_pages, "owner_fallback": probe.owner_fallback,
                })
            except Unsupported as e:
                self._probe_failed("connections", probe, e, start_wall, failures)
        if "l7" in self.opts.probes:
            self._start_l7(start_wall, failures)
        self._start_inject()
        if failures and len(failures) == len([p for p in self.opts.probes if p not in ("gotls", "goroutines")]):
            raise failures[0]
        if self.conns is not None or self.l7 is not None:
            tune_gc()

    def _start_inject(self) -> None:
        """The trace context injector (opt-in), after the l7 probe so that it runs first on each
        egress hook and l7 records the ids it writes. Without l7 running it is not started: the
        tape could not say which ids went out."""
        w = self.writer
        assert w is not None
        w.update("settings", {"inject_trace_context": self.opts.inject_trace_context})
        if self.opts.inject_trace_context == "off":
            return
        if self.l7 is None:
            self._warn("--inject-trace-context: the l7 probe did not start, so nothing is injected")
            w.update("settings", {"inject_trace_context": "off", "inject_trace_context_requested": self.opts.inject_trace_context,
                                  "inject_trace_context_off_because": "the l7 probe did not start"})
            return
        probe = InjectProbe(interfaces=self.opts.interfaces)
        try:
            probe.load()
            probe.attach()
        except Unsupported as e:
            probe.close()
            self._warn(f"--inject-trace-context: {e.message}; recording without injection")
            w.update("settings", {"inject_trace_context": "off", "inject_trace_context_requested": self.opts.inject_trace_context,
                                  "inject_trace_context_off_because": e.message})
            return
        self.inject = probe
        w.set_probe("inject", probe.manifest())

    def _probe_failed(self, name: str, probe: Any, e: Unsupported, start_wall: int, failures: list) -> None:
        """A probe this host cannot run: said once, a gap in the tape, and the others go on."""
        probe.close()
        failures.append(e)
        self._warn(f"{e.message}; recording the rest")
        assert self.writer is not None
        self.writer.add_gap(name, start_wall, None, e.message)

    def _start_l7(self, start_wall: int, failures: list) -> None:
        w = self.writer
        assert w is not None
        probe = L7Probe(interfaces=self.opts.interfaces, ssl_libs=self.opts.ssl_libs, go_tls="gotls" in self.opts.probes,
                        goroutines="goroutines" in self.opts.probes, log=self._warn)
        redaction = Redaction.from_settings(self.opts.no_redact, self.opts.header_allow_list)
        try:
            probe.check()
            probe.load()
            probe.attach()
            event_class = probe.open(self._on_l7_batch)
            self.l7 = probe
            self.l7dec = L7Decoder(w.node, self._offset, redaction=redaction, event_class=event_class)
            self.l7dec.skip_body = probe.skip_body
            # endpoints still open, read from the kernel when rows wait for them (where the probe offers it)
            self.l7dec.live_source = getattr(self.conns, "open_endpoints", None)
            if self.tracker is not None:  # connections.wire_*: the trace context its packets carried
                self.tracker.wire = self.l7dec.wire_context
            for what, effect in probe.missing.items():
                self._warn(f"{what} is not available on this host: {effect} will be missing from the tape")
            if "connections" not in self.opts.probes:
                self._warn("http rows need the connections probe (their side, process and conn_id): without it exchanges are counted as l7.http_no_endpoint, not written")
            self._l7_settings = {
                "program": "bpf/l7.c (tcx ingress+egress, OpenSSL and Go crypto/tls uprobes, sock:sock_{send,recv}_length)",
                "tables": ["dns", "http", "tls"], "ringbuf_pages": probe.ringbuf_pages, "flow_entries": probe.flow_entries,
                "prefix_bytes": dict(PREFIX_BYTES),
                "ssl_libs": list(probe.ssl_attached), "missing": dict(probe.missing),
                "go_tls": probe.go.manifest() if probe.go is not None else None,
                "taken": "once per node, as flows: ingress, or egress of packets that did not enter through a covered interface",
                "http_decoder": self.l7dec.http_decoder,
                "dns_decoder": self.l7dec.dns_decoder,  # UDP: 'c' (capture/decode/_dns.c's Pairer) or python and why
                "http_rows": rows_in_use(),  # capture/decode/_http_rows.c's HttpColumns ('c') or HttpRows
            }
            w.set_probe("l7", self._l7_settings)
            if self.l7dec.http_decoder != "c":
                self._warn(f"HTTP is decoded by {self.l7dec.http_decoder}: up to three times the recorder CPU per request")
            w.update("redaction", redaction.manifest())
            w.update("settings", {"no_redact": self.opts.no_redact, "header_allow_list": sorted(redaction.header_allow_list)})
        except Unsupported as e:
            self.l7 = None
            self._probe_failed("l7", probe, e, start_wall, failures)
        except FlowtapeError:
            probe.close()
            raise

    def _on_conn_event(self, ev: dict[str, Any]) -> None:
        self.events += 1
        assert self.tracker is not None
        self.tracker.feed(ev)
        if self.l7dec is not None and ev["kind"] == EV_STATE and ev["newstate"] in (ESTABLISHED, CLOSE):
            # L7 rows join the tracker's endpoint (its owner may be filled in later, by accept)
            sk = ev["skaddr"]
            c = self.tracker.live.get(sk)
            if c is None and self.tracker.closing:
                last = next(reversed(self.tracker.closing.values()))
                c = last if last.skaddr == sk else None
            if c is not None and c.local_port:
                self.l7dec.add_endpoint(c)

    def _on_l7_batch(self, raws: list[bytes]) -> None:
        self.events += len(raws)
        if self.l7dec is not None:
            self.l7dec.feed_batch(raws)

    def _l7_rows(self, final: bool = False) -> None:
        w = self.writer
        if self.l7dec is None or w is None:
            return
        now_mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        for table, rows in self.l7dec.take_rows(now_mono, final=final).items():
            if rows:
                w.append(table, dns_table(rows) if table == "dns" else rows)  # dns: see capture/decode/dns_rows.py
                self.summary.rows[table] = self.summary.rows.get(table, 0) + len(rows)
        counters = dict(self.l7dec.lost_counters())
        if self.l7 is not None and self.l7.bpf is not None:
            counters.update(self.l7.counters())
        for name, count in counters.items():
            w.set_lost(name, count)
            self.summary.lost[name] = count
        w.update("extra", {"l7_decode_notes": self.l7dec.stats.notes()})
        if self.l7 is not None and self.l7.go is not None:  # Go binaries found since the start
            self._l7_settings = {**self._l7_settings, "go_tls": self.l7.go.manifest()}
            w.set_probe("l7", self._l7_settings)

    # --- loop ------------------------------------------------------------------------------------

    def _flush(self, final: bool = False) -> None:
        w = self.writer
        assert w is not None
        if self.l7 is not None and not final and self.opts.interfaces is None:
            self.l7.refresh()
        if self.flows is not None:
            if not final and self.opts.interfaces is None:
                self.flows.refresh()
            cols = self.flows.drain(lambda t: t + self._offset)
            n = len(cols["ts_start"])
            if n:
                w.append("flows", cols)
                self.summary.rows["flows"] = self.summary.rows.get("flows", 0) + n
                self.events += n
            for name, count in self.flows.counters().items():
                if name != "flows.not_ip":
                    w.set_lost(name, count)
                    self.summary.lost[name] = count
        if self.inject is not None:
            # new interfaces: after flows' and l7's attach, so first in each hook's chain
            if not final and self.opts.interfaces is None and self.inject.refresh():
                w.set_probe("inject", self.inject.manifest())
            # (not `lost`: a packet sent without the option loses nothing from the tape)
            w.update("extra", {"inject": self.inject.counters()})
        if self.tracker is not None:
            now_mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            rows = self.tracker.take_rows(now_mono, final=final)
            if rows:
                w.append("connections", rows)
                self.summary.rows["connections"] = self.summary.rows.get("connections", 0) + len(rows)
                self._note_cgroups(rows.distinct("cgroup_id"))
            assert self.conns is not None
            lost = self.conns.lost()
            ctr = self.conns.counters()
            for name, count in (("connections.ringbuf_full", lost), ("connections.map_full", ctr["map_full"])):
                w.set_lost(name, count)
                self.summary.lost[name] = count
            self.started_before = ctr["started_before_recording"]
        self._l7_rows(final=final)
        self._note_namespaces()

    def _note_namespaces(self) -> None:
        """The addresses of the host's other network namespaces (containers come and go: each
        flush looks for new ones)."""
        if self.namespaces is not None and self.namespaces.scan() and self.writer is not None:
            self.writer.set_host({"namespace_addresses": self.namespaces.listed()})

    def _note_cgroups(self, ids: set[int | None]) -> None:
        """Describe the cgroups that rows name (runtime, container, unit) in the manifest while
        their paths still exist: a container's cgroup goes with the container."""
        new = {i for i in ids if i} - self._cgroups_noted
        if not new or self.cgroups is None or self.writer is None:
            return
        self._cgroups_noted |= new
        self._cgroup_facts.update(cgroup_facts({i: p for i in new if (p := self.cgroups.path_of(i)) is not None}))
        self.writer.set_host({"cgroups": dict(sorted(self._cgroup_facts.items(), key=lambda kv: int(kv[0])))})

    def _status_line(self, elapsed: float, rate: float, final: bool = False) -> None:
        lost = sum(self.summary.lost.values())
        line = f"recording {elapsed:7.1f} s  {rate:8.0f} events/s  lost {lost}  written {_human(_du(self.opts.out))}"
        if self.status.isatty():
            print("\r" + line, end="\n" if final else "", file=self.status, flush=True)
        else:
            print(line, file=self.status, flush=True)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stop_requested = True

    def run(self) -> RecordSummary:
        check_host()
        _use_system_memory_pool()
        opts = self.opts
        s3 = None
        if opts.upload:
            s3 = storage.client()
            storage.check_bucket(s3, storage.parse_url(opts.upload))  # one line before any tape: no bucket, bad credentials
        clock = clock_sample()
        self._offset = clock["offset_ns"]
        resume = opts.resume and (opts.out / "manifest.json").exists()
        # the previous run's last manifest update: from there until now nothing was recorded
        last_seen = read_manifest(opts.out).get("updated_ns") if resume else None
        # Row groups of at most LIVE_ROW_GROUP_ROWS: with the writer's default (1M rows) a busy node held a
        # whole rotation's rows in memory as Arrow (+150 MiB of RSS at 5k HTTP rows/s, bench_l7 --soak); 64k
        # rows still held up to 24 MiB of Arrow buffers (the http table filled one in ~12 s), 16k hold ~8 for
        # 0.35 % more bytes on disk (more dictionary pages), measured in the same soak.
        self.writer = TapeWriter(opts.out, node=opts.node, rotate_seconds=opts.rotate, clock=clock, append=resume,
                                 row_group_rows=LIVE_ROW_GROUP_ROWS)
        # read now: the tape is analysed elsewhere, where this host's names are not at hand
        self.writer.set_host({"addresses": own_addresses(), "etc_hosts": etc_hosts()})
        self.namespaces = NamespaceAddresses()
        self._note_namespaces()
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        start_wall = time.time_ns()
        try:
            try:
                self._start_probes(start_wall)
            except FlowtapeError:
                self._discard_empty_tape()
                raise
            if resume:
                # blind from the previous run's last manifest update until now: said, not hidden
                self.writer.add_gap("recorder", int(last_seen or start_wall), start_wall, "recorder restarted (--resume): nothing recorded in between")
                if self.writer.manifest["window"].get("start_ns") is None:
                    self.writer.set_window(start_ns=start_wall)
            else:
                self.writer.set_window(start_ns=start_wall)
            if opts.upload:
                self.uploads = storage.UploadLoop(storage.Uploader(opts.out, opts.upload, s3), self._warn)
                self.uploads.start()
            self._start_kube(start_wall)
            probes = [p for p, on in (("flows", self.flows), ("connections", self.conns), ("l7", self.l7)) if on]
            if self.l7 is not None and self.l7.go is not None:
                probes.append(f"gotls ({len(self.l7.go.attached)} Go binaries)")
            if self.kube is not None:
                probes.append("k8s")
            ifaces = ", ".join(i.name for i in self.flows.plan.values()) if self.flows else "-"
            ebpf.release_startup_memory()  # every program is loaded: what compiling and importing touched goes back
            print(f"flowtape: recording to {opts.out} (probes: {', '.join(probes)}; interfaces: {ifaces}); Ctrl-C to stop",
                  file=self.status, flush=True)
            self._loop(time.monotonic())
            self._flush(final=True)
        except DiskFull:
            self._stop_kube()
            self._stop_probes()
            if self.writer is not None:
                self.writer.abort()  # keep the parts already finished; the manifest lists them
            self._finish_uploads()
            raise
        except BaseException:
            self._stop_kube()
            if self.uploads is not None:
                self.uploads.stop()
            raise
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
        self._finish(start_wall)
        return self.summary

    def _start_kube(self, start_wall: int) -> None:
        """Run the Kubernetes watcher beside the probes when a cluster is configured."""
        cfg = self.opts.kube
        if cfg is None:
            return
        from ..k8s.watcher import KubeError, KubeWatcher

        w = self.writer
        assert w is not None
        kw = KubeWatcher(w, cfg)
        try:
            kw.start()
        except KubeError as e:
            if self.opts.kube_explicit:
                self._stop_probes()
                self._discard_empty_tape()
                raise
            self._warn(f"Kubernetes state will be missing: {e.message}")
            w.add_gap("k8s", start_wall, None, e.message)
            return
        w.set_probe("k8s", {"api": cfg.host, "source": cfg.source, "context": cfg.context})
        self.kube = kw

    def _stop_kube(self) -> None:
        if self.kube is not None:
            try:
                self.kube.stop()
            finally:
                self.kube = None

    def _loop(self, t0: float) -> None:
        opts = self.opts
        next_flush = t0 + opts.flow_interval
        next_status = t0 + 1.0
        next_l7 = t0 + L7_ROWS_EVERY_S
        next_release = t0 + RELEASE_EVERY_S
        last_events, last_status = 0, t0
        quiet = not self.status.isatty()
        while not self.stop_requested:
            now = time.monotonic()
            if opts.duration is not None and now - t0 >= opts.duration:
                break
            if self.conns is not None and self.l7 is not None:
                # Connection events first, read right before the L7 ones: an L7 event must not be
                # decoded before the connection events written ahead of it (L7 rows join them).
                self.conns.poll(20)
                self.l7.poll(0)
                self.conns.poll(0)
            elif self.conns is not None:
                self.conns.poll(100)
            elif self.l7 is not None:
                self.l7.poll(100)
            else:
                time.sleep(0.1)
            now = time.monotonic()
            if now >= next_flush:
                self._flush()
                next_flush += opts.flow_interval
            elif now >= next_l7:
                self._l7_rows()
            if now >= next_l7:
                next_l7 = now + L7_ROWS_EVERY_S
                if self.l7 is not None:
                    self.l7.scan_go()  # Go programs started since the last look (their HTTPS)
            assert self.writer is not None
            self.writer.maybe_rotate()
            if now >= next_release:
                ebpf.release_unused_libraries()
                next_release = now + RELEASE_EVERY_S
            if now >= next_status:
                rate = (self.events - last_events) / max(now - last_status, 1e-3)
                last_events, last_status = self.events, now
                self._status_line(now - t0, rate)
                next_status = now + (5.0 if quiet else 1.0)
        for _ in range(3):  # what the kernel already wrote before the stop
            if self.conns is not None:
                self.conns.poll(0)
            if self.l7 is not None:
                self.l7.poll(0)
        if self.conns is not None:
            self.conns.poll(0)
        self.summary.seconds = time.monotonic() - t0

    def _program_stats(self) -> dict[str, dict[str, int]]:
        stats = {}
        for probe in (self.inject, self.flows, self.conns, self.l7):
            if probe is not None and probe.bpf is not None:
                for name, fd in probe.programs().items():
                    stats[name] = ebpf.prog_stats(fd)
        return stats

    def _stop_probes(self) -> None:
        for probe in (self.inject, self.flows, self.conns, self.l7):
            if probe is not None:
                try:
                    probe.close()
                except Exception:
                    pass

    def _finish(self, start_wall: int) -> None:
        w = self.writer
        assert w is not None
        w.update("extra", {"bpf_programs": self._program_stats(), "connections_started_before_recording": getattr(self, "started_before", 0)})
        self._stop_kube()
        self._stop_probes()
        w.set_window(end_ns=time.time_ns())
        w.close()
        self._status_line(self.summary.seconds, 0.0, final=True)
        self._finish_uploads()

    def _finish_uploads(self) -> None:
        """The last parts and the complete manifest to the bucket, within --upload-timeout."""
        loop = self.uploads
        if loop is None:
            return
        self.uploads = None
        final = loop.finish(self.opts.upload_timeout)
        self.summary.uploaded_parts = sum(len(r.uploaded) for r in loop.syncs)
        self.summary.uploaded_bytes = sum(r.bytes for r in loop.syncs)
        if final is None:
            why = loop.failing.message if loop.failing else "unknown"
            err = loop.failing if loop.failing is not None else FlowtapeError(why)
            self.summary.upload_error = type(err)(
                f"upload to {loop.up.dest.url} did not finish within {self.opts.upload_timeout:g} s ({why}); "
                f"every part is kept in {self.opts.out}: `flowtape push {self.opts.out} {loop.up.dest.url}` finishes it")
        self.summary.upload = final

    def _discard_empty_tape(self) -> None:
        """Nothing could be recorded: do not leave an empty tape behind."""
        w = self.writer
        if w is None:
            return
        w.abort()
        if not any(p.is_dir() for p in w.path.iterdir()):
            shutil.rmtree(w.path, ignore_errors=True)


def _use_system_memory_pool() -> None:
    """The recorder's Arrow buffers from malloc, not mimalloc (why: flowtape/__init__.py). `flowtape record`
    chose it before pyarrow was imported; a program that calls record() itself imported pyarrow first,
    so the pool is switched here: what was allocated before stays in mimalloc (+33 MiB of growth in the
    replay instead of +18, against +69-77 with mimalloc throughout). A pool the user chose is kept."""
    import pyarrow as pa

    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ and pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())


def record(opts: RecordOptions, status: TextIO | None = None) -> RecordSummary:
    """Record until SIGINT/SIGTERM or opts.duration; returns what was written."""
    return Recorder(opts, status).run()
