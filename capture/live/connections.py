"""The `connections` probe: TCP lifecycles from bpf/connections.c, one row per local endpoint.

`ConnectionTracker` is the pure part: it turns decoded events (plain dicts) into rows, so it is
tested with synthetic events and no kernel. `ConnectionProbe` loads and attaches the C.

Byte counts come from sock_ops' RFC 4898 counters, which count sequence space: a client's
bytes_acked includes its SYN, and both counters include a FIN once it was acked/received.
The tracker removes those so `bytes_sent`/`bytes_received` are TCP payload bytes:
- SYN: a client's bytes_acked counts it once the handshake completed; a server's never does;
- our FIN: counted when one was sent (FIN_WAIT1, CLOSING or LAST_ACK seen) and snd_una ==
  snd_nxt at close (everything, FIN included, was acked);
- the peer's FIN: counted when the socket went to CLOSE_WAIT or CLOSING, or closed from
  FIN_WAIT2 with bytes_received grown since it entered FIN_WAIT2 (the FIN that moved it to
  TIME_WAIT). See docs/recorder.md for the one half-close case this can miss.
"""

from __future__ import annotations

import collections
import ctypes
import os
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from . import ebpf, ringbuf

# TCP states (include/net/tcp_states.h)
ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, LISTEN, CLOSING = range(1, 12)
EV_STATE, EV_ACCEPT, EV_OWNER, EV_ERROR = 1, 2, 3, 4
F_CLIENT, F_FIN_SENT, F_FIN_IN, F_FIN_WAIT2, F_ACCEPTED = 1, 2, 4, 8, 16  # struct sock_info flags (bpf/events.h)
ECONNRESET, ETIMEDOUT, ECONNREFUSED = 104, 110, 111
GRACE_NS = 1_000_000_000  # a closed connection waits this long for late owner/error events

OPTIONAL_TRACEPOINTS = {
    "FT_HAVE_ACCEPT": (("syscalls", "sys_enter_accept4"), ("syscalls", "sys_exit_accept4"), ("syscalls", "sys_enter_accept"), ("syscalls", "sys_exit_accept")),
    "FT_HAVE_SOCK_LENGTH": (("sock", "sock_recv_length"), ("sock", "sock_send_length")),
    "FT_HAVE_ERROR_REPORT": (("sock", "inet_sk_error_report"),),
}
MISSING_EFFECT = {
    "FT_HAVE_ACCEPT": "server rows get their pid/comm only from the first send/recv",
    "FT_HAVE_SOCK_LENGTH": "server sockets accepted without a peer address get no pid/comm",
    "FT_HAVE_ERROR_REPORT": "failed connects are 'failed' instead of 'refused'/'timeout'",
}

STAT_FIELDS = ("bytes_acked", "bytes_received", "segs_out", "segs_in", "srtt_us", "total_retrans", "snd_una", "snd_nxt")

COLUMNS = (
    "conn_id", "ts_start", "ts_end", "role", "client_ip", "client_port", "server_ip", "server_port", "pid", "comm",
    "cgroup_id", "container_id", "bytes_sent", "bytes_received", "segs_sent", "segs_received", "srtt_us",
    "retransmits", "connect_latency_ns", "close_state",
)
# Filled when the tracker is given `wire` (the l7 probe's trace contexts read from packets)
WIRE_COLUMNS = ("wire_trace_id", "wire_span_id", "wire_trace_source")


@dataclass(eq=False, slots=True)  # identity: two endpoints are never "equal"
class Conn:
    """One local TCP endpoint being followed."""

    skaddr: int
    role: str
    family: int
    ts_start: int
    local_ip: str = ""
    local_port: int = 0
    remote_ip: str = ""
    remote_port: int = 0
    pid: int | None = None
    comm: str | None = None
    cgroup_id: int | None = None
    owner_from_accept: bool = False
    cookie: int = 0
    ts_established: int | None = None
    stats: dict[str, int] | None = None
    fin_sent: bool = False
    fin_in: bool = False
    error: int = 0
    ts_end: int | None = None
    close_from: int | None = None

    @property
    def tuple(self) -> tuple:
        return (self.local_ip, self.local_port, self.remote_ip, self.remote_port)


class CgroupResolver:
    """cgroup v2 id -> container id (64 hex characters found in the cgroup's path)."""

    CONTAINER_RE = re.compile(r"([0-9a-f]{64})")

    def __init__(self, root: Path | None):
        self.root = root
        self.paths: dict[int, str] = {}
        self._scanned_for: set[int] = set()
        self._ids: dict[int, str | None] = {}  # cgroup id -> container id, for ids whose path is known

    def _scan(self) -> None:
        if self.root is None:
            return
        for dirpath, _dirs, _files in os.walk(self.root):
            try:
                self.paths[os.stat(dirpath).st_ino] = dirpath
            except OSError:
                pass

    def container_id(self, cgroup_id: int | None) -> str | None:
        if not cgroup_id or self.root is None:
            return None
        try:
            return self._ids[cgroup_id]
        except KeyError:
            pass
        if cgroup_id not in self.paths and cgroup_id not in self._scanned_for:
            self._scanned_for.add(cgroup_id)  # one walk per unknown id, not per row
            self._scan()
        m = self.CONTAINER_RE.findall(self.paths.get(cgroup_id, ""))
        found = m[-1] if m else None
        if cgroup_id in self.paths:  # known ids only: an unknown one may show up at the next walk
            if len(self._ids) > 100_000:
                self._ids.clear()
            self._ids[cgroup_id] = found
        return found

    def path_of(self, cgroup_id: int) -> str | None:
        """The cgroup's path below the hierarchy's root ("/" for the root), if it was found."""
        if self.root is None or cgroup_id not in self.paths:
            return None
        rel = os.path.relpath(self.paths[cgroup_id], self.root)
        return "/" if rel == "." else "/" + rel


class ConnectionTracker:
    """Follow TCP endpoints through their events; emit a row when one ends (or at stop)."""

    def __init__(self, node: str, to_wall: Callable[[int], int], container_id: Callable[[int | None], str | None] = lambda _: None):
        self.node = node
        self.to_wall = to_wall
        self.container_id = container_id
        self.live: dict[int, Conn] = {}  # skaddr -> conn
        # closed, waiting GRACE_NS for late owner/error events; in close order
        self.closing: collections.OrderedDict[int, Conn] = collections.OrderedDict()
        self.awaiting_accept: dict[tuple[str, int], list[Conn]] = {}  # server endpoints by peer address
        self.by_tuple: dict[tuple, Conn] = {}  # client endpoints by 4-tuple, for error reports
        self._seq = 0
        self.last_ts = 0
        # Endpoints still open are only in the kernel's map (no event is sent at ESTABLISHED):
        # the final take_rows asks this for them, as ESTABLISHED events (ConnectionProbe.open_endpoints).
        self.live_source: Callable[[], list[dict[str, Any]]] | None = None
        # The trace context first seen on an endpoint's packets (L7Decoder.wire_context), for
        # WIRE_COLUMNS; None: those columns are left out (null).
        self.wire: Callable[[Conn], tuple] | None = None

    # --- events ---------------------------------------------------------------------------

    def feed(self, ev: dict[str, Any]) -> None:
        self.last_ts = max(self.last_ts, ev["ts_ns"])
        kind = ev["kind"]
        if kind == EV_STATE:
            self._state(ev)
        elif kind == EV_ACCEPT:
            self._accept(ev)
        elif kind == EV_OWNER:
            c = self.live.get(ev["skaddr"]) or next((c for c in reversed(self.closing.values()) if c.skaddr == ev["skaddr"]), None)
            if c is not None and c.role == "server" and c.pid is None:
                self._own(c, ev)
        elif kind == EV_ERROR and ev["error"]:
            c = self.by_tuple.get((ev["saddr"], ev["sport"], ev["daddr"], ev["dport"]))
            if c is not None and not c.error:
                c.error = ev["error"]

    def _own(self, c: Conn, ev: dict[str, Any]) -> None:
        c.pid, c.comm, c.cgroup_id = ev["pid"], ev["comm"], ev["cgroup_id"] or None

    def _state(self, ev: dict[str, Any]) -> None:
        """ESTABLISHED opens a row, CLOSE ends it; the kernel kept what happened between."""
        old, new, sk = ev["oldstate"], ev["newstate"], ev["skaddr"]
        client = bool(ev["flags"] & F_CLIENT)
        c = self.live.get(sk)
        if c is None and (new == ESTABLISHED or new == CLOSE):
            # A new endpoint. The kernel sends one event per endpoint, at CLOSE, carrying when it
            # reached ESTABLISHED (0: a client whose connect failed); ESTABLISHED events (endpoints
            # still open at the end, read from the kernel map) open a live one.
            c = Conn(sk, "client" if client else "server", ev["family"], ev["ts_start_ns"])
            if ev["in_task"]:
                self._own(c, ev)
            est = ev.get("ts_established_ns") or (ev["ts_ns"] if new == ESTABLISHED else 0)
            c.ts_established = est or None
            if new == ESTABLISHED:
                self.live[sk] = c
            c.local_ip, c.local_port, c.remote_ip, c.remote_port = ev["saddr"], ev["sport"], ev["daddr"], ev["dport"]
            if client:
                self.by_tuple[c.tuple] = c
            elif c.pid is None:
                self.awaiting_accept.setdefault((c.remote_ip, c.remote_port), []).append(c)
        if c is None:
            return
        if ev["cookie"] and not c.cookie:
            c.cookie = ev["cookie"]
        if ev["has_stats"]:
            c.stats = ev  # the event holds the STAT_FIELDS counters (read-only from here on)
        if new == CLOSE:
            self.live.pop(sk, None)
            if c.pid is None and ev["in_task"]:
                self._own(c, ev)  # the kernel learnt the owner (accept) after ESTABLISHED
            flags = ev["flags"]
            c.fin_sent = bool(flags & F_FIN_SENT)
            c.fin_in = bool(flags & F_FIN_IN)
            if old == FIN_WAIT2 and flags & F_FIN_WAIT2 and c.stats is not None and c.stats["bytes_received"] > ev["rx_at_fin_wait2_b"]:
                c.fin_in = True  # the FIN that moved it to TIME_WAIT was counted
            c.ts_end, c.close_from = ev["ts_ns"], old
            self._seq += 1
            self.closing[self._seq] = c

    def _accept(self, ev: dict[str, Any]) -> None:
        waiting = self.awaiting_accept.get((ev["daddr"], ev["dport"]))
        if waiting:
            c = waiting.pop()  # the newest endpoint from that peer address
            if not waiting:
                del self.awaiting_accept[(ev["daddr"], ev["dport"])]
            self._own(c, ev)
            c.owner_from_accept = True

    def _forget(self, c: Conn) -> None:
        if c.role == "client":
            if self.by_tuple.get(c.tuple) is c:
                del self.by_tuple[c.tuple]
        else:
            waiting = self.awaiting_accept.get((c.remote_ip, c.remote_port))
            if waiting and c in waiting:
                waiting.remove(c)
                if not waiting:
                    del self.awaiting_accept[(c.remote_ip, c.remote_port)]

    # --- rows -----------------------------------------------------------------------------

    def close_state(self, c: Conn) -> str:
        if c.ts_end is None:
            return "open"
        if c.ts_established is None:  # a client that never completed the handshake
            return {ECONNREFUSED: "refused", ETIMEDOUT: "timeout"}.get(c.error, "failed")
        if c.error == ECONNRESET or c.close_from in (ESTABLISHED, CLOSE_WAIT, FIN_WAIT1, SYN_RECV):
            return "reset"
        return "closed"

    def values(self, c: Conn) -> tuple:
        """One row's values, in COLUMNS order."""
        client = c.role == "client"
        s = c.stats if c.ts_end is not None else None  # counters of open endpoints are not final
        if s is not None:
            syn = 1 if client and c.ts_established is not None else 0
            fin_acked = 1 if c.fin_sent and s["snd_una"] == s["snd_nxt"] else 0
            sent = max(0, s["bytes_acked"] - syn - fin_acked)
            received = max(0, s["bytes_received"] - (1 if c.fin_in else 0))
            segs_out, segs_in, srtt, retrans = s["segs_out"], s["segs_in"], s["srtt_us"], s["total_retrans"]
        else:
            sent = received = segs_out = segs_in = srtt = retrans = None
        if client:
            cl_ip, cl_port, sv_ip, sv_port = c.local_ip, c.local_port, c.remote_ip, c.remote_port
        else:
            cl_ip, cl_port, sv_ip, sv_port = c.remote_ip, c.remote_port, c.local_ip, c.local_port
        return (
            f"{self.node}-c{c.cookie:x}" if c.cookie else f"{self.node}-s{c.skaddr:x}-{c.ts_start:x}",
            self.to_wall(c.ts_start),
            None if c.ts_end is None else self.to_wall(c.ts_end),
            c.role, cl_ip, cl_port, sv_ip, sv_port,
            c.pid, c.comm, c.cgroup_id, self.container_id(c.cgroup_id),
            sent, received, segs_out, segs_in, srtt, retrans,
            c.ts_established - c.ts_start if client and c.ts_established is not None else None,
            self.close_state(c),
        )

    def row(self, c: Conn) -> dict[str, Any]:
        return dict(zip(COLUMNS, self.values(c)))

    def take_rows(self, now_ns: int | None = None, final: bool = False) -> "Rows":
        """Rows of endpoints closed more than GRACE_NS ago (all of them, and open ones, if final)."""
        now = self.last_ts if now_ns is None else now_ns
        if final and self.live_source is not None:
            for ev in self.live_source():
                if ev["skaddr"] not in self.live:
                    self.feed(ev)
            self.live_source = None
        ready = []
        while self.closing:
            seq, c = next(iter(self.closing.items()))
            if not final and now - c.ts_end < GRACE_NS:
                break
            del self.closing[seq]
            ready.append(c)
        if final:
            ready += list(self.live.values())
            self.live.clear()
        for c in ready:
            self._forget(c)
        wire = self.wire
        if wire is not None:
            return Rows([self.values(c) + wire(c) for c in ready], COLUMNS + WIRE_COLUMNS)
        return Rows([self.values(c) for c in ready])


class Rows:
    """Rows of `connections`: a sequence of row dicts, and `to_arrow()` (what TapeWriter.append
    uses) built column by column from the rows' value tuples, with no per-row dict."""

    def __init__(self, values: list[tuple], columns: tuple[str, ...] = COLUMNS):
        self._values = values
        self.columns = columns

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self):
        return (dict(zip(self.columns, v)) for v in self._values)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return dict(zip(self.columns, self._values[i]))

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, (list, tuple, Rows)) else NotImplemented

    def __repr__(self) -> str:
        return f"Rows({list(self)!r})"

    def distinct(self, column: str) -> set[Any]:
        """The distinct values of one column (the recorder notes the cgroups its rows name)."""
        i = self.columns.index(column)
        return {v[i] for v in self._values}

    def to_arrow(self) -> pa.Table:
        from ...schema import table

        schema = table("connections").arrow_schema
        cols = dict(zip(self.columns, zip(*self._values))) if self._values else dict.fromkeys(self.columns, ())
        n = len(self._values)
        return pa.Table.from_arrays([pa.array(cols[f.name], f.type) if f.name in cols else pa.nulls(n, f.type) for f in schema], schema=schema)


class EventDecoder:
    """Decode struct conn_event from raw ring-buffer bytes.

    The layout comes from the C declaration (bcc's ctypes class for the ring buffer's event,
    parsed from bpf/events.h); it is turned once into a `struct.Struct` because reading
    ctypes attributes one by one is the recorder's hottest path at high connection rates.
    """

    def __init__(self, event_class: type):
        fmt, self.names, pos = "<", [], 0
        for name, ctype in event_class._fields_:
            off, size = getattr(event_class, name).offset, ctypes.sizeof(ctype)
            fmt += f"{off - pos}x" if off > pos else ""
            if issubclass(ctype, ctypes.Array):
                fmt += f"{size}s"
            else:
                code = {1: "b", 2: "h", 4: "i", 8: "q"}[size]
                fmt += code if ctype._type_.islower() else code.upper()
            self.names.append(name)
            pos = off + size
        self.struct = struct.Struct(fmt)
        self._ip = ebpf.IpText()
        self._comm = ebpf.CommText()

    def __call__(self, raw: bytes) -> dict[str, Any]:
        ev = dict(zip(self.names, self.struct.unpack_from(raw)))
        family = 4 if ev["family"] == 2 else 6 if ev["family"] == 10 else 0
        ev["family"] = family
        ev["saddr"] = self._ip(family, ev["saddr"]) if family else ""
        ev["daddr"] = self._ip(family, ev["daddr"]) if family else ""
        ev["comm"] = self._comm(ev["comm"])
        return ev


@dataclass
class ConnectionProbe:
    """Load bpf/connections.c; attach sock_ops to the cgroup v2 root and the tracepoints."""

    ringbuf_pages: int = 2048  # 8 MiB: bursts of ~50k events while user space is busy
    unowned_entries: int = 65536
    sock_entries: int = 262144  # live TCP endpoints followed at once
    # Attribute server sockets accepted without asking for the peer address (libuv does this) to
    # the first process that reads or writes them. Opt-in (`flowtape record --owner-fallback`):
    # its tracepoints run on every send and recv of every socket.
    owner_fallback: bool = False
    # How a server socket's owner is found: "auto" (the getpeername hooks where the kernel has
    # them), or "accept-tracepoints" (the older way, kept for kernels before 5.8 and tested).
    server_owner_via: str = "auto"
    bpf: Any = None
    missing: dict[str, str] = field(default_factory=dict)  # what is missing -> what the tape lacks
    _defines: dict[str, Any] = field(default_factory=dict)
    _sockops: Any = None
    _links: list[int] = field(default_factory=list)
    server_owner: str = ""  # how server sockets get their process, for the manifest
    _ring: Any = None  # ringbuf.open_ring's reader
    _on_event: Any = None  # raw record -> decoded -> the recorder's callback
    cgroup: Path | None = None

    def check(self) -> None:
        """Decide what can be compiled here; required parts raise Unsupported."""
        from ...errors import Unsupported

        if not ebpf.tracepoint_exists("sock", "inet_sock_set_state"):
            raise Unsupported("tracepoint sock:inet_sock_set_state is missing from this kernel: the connections table will be missing")
        self._defines = {"FT_RINGBUF_PAGES": self.ringbuf_pages, "FT_UNOWNED_ENTRIES": self.unowned_entries, "FT_SOCK_ENTRIES": self.sock_entries}
        self.cgroup = ebpf.cgroup2_root()
        if self.cgroup is None:
            self.missing["cgroup v2"] = "bytes, segments, srtt and retransmits of connections (sock_ops needs cgroup v2), and container ids"
        # The accepting process from the cgroup getpeername hooks (Linux 5.8+) rather than from
        # accept's syscall tracepoints, whose mere presence slows every syscall on the node.
        getpeername = self.server_owner_via == "auto" and self.cgroup is not None and ebpf.kernel_at_least(5, 8)
        self._defines["FT_HAVE_GETPEERNAME"] = 1 if getpeername else None
        for define, tps in OPTIONAL_TRACEPOINTS.items():
            if define == "FT_HAVE_ACCEPT" and getpeername:
                self._defines[define] = None
                continue
            ok = all(ebpf.tracepoint_exists(c, e) for c, e in tps)
            self._defines[define] = 1 if ok else None
            if not ok:
                self.missing[f"tracepoint {tps[0][0]}:{tps[0][1]}"] = MISSING_EFFECT[define]
        self._defines["FT_OWNER_FALLBACK"] = 1 if self.owner_fallback and self._defines["FT_HAVE_SOCK_LENGTH"] else None
        self.server_owner = ("cgroup getpeername hooks (accept)" if getpeername
                             else "accept syscall tracepoints" if self._defines["FT_HAVE_ACCEPT"] else "none")

    def source(self) -> str:
        if not self._defines:
            self.check()
        return ebpf.render_source("connections.c", self._defines)

    def load(self) -> None:
        bcc = ebpf.import_bcc()
        self.bpf = ebpf.compile_bpf(self.source())  # tracepoints attach themselves (TRACEPOINT_PROBE)
        self._sockops = self.bpf.load_func(b"ft_sockops", bcc.BPF.SOCK_OPS)
        if self.cgroup is not None:
            try:
                self._links.append(ebpf.attach_cgroup(self._sockops.fd, self.cgroup, ebpf.BPF_CGROUP_SOCK_OPS))
            except OSError as e:
                self.missing["cgroup v2 sock_ops"] = f"bytes, srtt and retransmits of connections ({e.strerror})"
        if self._defines.get("FT_HAVE_GETPEERNAME"):
            try:
                for name, attach_type in ((b"ft_getpeername4", ebpf.BPF_CGROUP_INET4_GETPEERNAME), (b"ft_getpeername6", ebpf.BPF_CGROUP_INET6_GETPEERNAME)):
                    fn = self.bpf.load_func(name, bcc.BPF.CGROUP_SOCK_ADDR, attach_type=attach_type)
                    self._links.append(ebpf.attach_cgroup(fn.fd, self.cgroup, attach_type))
            except Exception as e:  # noqa: BLE001  (bcc raises plain Exception when the verifier refuses)
                self.missing["cgroup getpeername hooks"] = f"{MISSING_EFFECT['FT_HAVE_ACCEPT']} ({str(e).splitlines()[0]})"
                self.server_owner = "none"

    def open(self, on_event: Callable[[dict[str, Any]], None]) -> None:
        from bcc import table as bcc_table  # type: ignore[import-not-found]

        decode = EventDecoder(bcc_table._get_event_class(self.bpf[b"ft_conn_events"]))
        self._ring = ringbuf.open_ring(self.bpf, b"ft_conn_events", self.ringbuf_pages)
        self._on_event = lambda raw: on_event(decode(raw))

    def open_endpoints(self) -> list[dict[str, Any]]:
        """ESTABLISHED events for the endpoints the kernel follows that are established now."""
        out = []
        if self.bpf is None:
            return out
        for k, info in self.bpf[b"ft_socks"].items():
            if not info.ts_established_ns or info.family not in (2, 10):
                continue
            family = 4 if info.family == 2 else 6
            ev = {
                "kind": EV_STATE, "ts_ns": info.ts_established_ns, "ts_start_ns": info.ts_start_ns,
                "ts_established_ns": info.ts_established_ns, "rx_at_fin_wait2_b": info.rx_at_fin_wait2_b,
                "skaddr": k.value, "cookie": info.cookie, "cgroup_id": info.cgroup_id, "pid": info.pid,
                "in_task": 1 if info.pid else 0, "comm": bytes(info.comm).split(b"\0", 1)[0].decode("utf-8", "replace"),
                "family": family, "saddr": ebpf.ip_text(family, bytes(info.saddr)), "daddr": ebpf.ip_text(family, bytes(info.daddr)),
                "sport": info.sport, "dport": info.dport, "oldstate": 0, "newstate": ESTABLISHED, "has_stats": 0,
                "flags": info.flags, "error": 0,
            }
            ev.update(dict.fromkeys(STAT_FIELDS, 0))
            out.append(ev)
        return out

    def poll(self, timeout_ms: int) -> None:
        """Wait up to timeout_ms, then read every event in the ring buffer.

        The kernel writes events without waking us (BPF_RB_NO_WAKEUP), so the wait is a plain
        sleep (the recorder's loop needs one anyway) and events are read in batches."""
        if timeout_ms > 0:
            time.sleep(timeout_ms / 1000)
        on_event = self._on_event
        for raw in self._ring.read():
            on_event(raw)

    def lost(self) -> int:
        return int(sum(self.bpf[b"ft_conn_lost"][0]))

    def counters(self) -> dict[str, int]:
        """Endpoints not followed because the kernel map was full, and those seen only mid-life."""
        ctr = self.bpf[b"ft_conn_ctr"]
        return {"map_full": int(sum(ctr[0])), "started_before_recording": int(sum(ctr[1]))}

    def programs(self) -> dict[str, int]:
        return {(name.decode() if isinstance(name, bytes) else name): fn.fd for name, fn in self.bpf.funcs.items()}

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        for link in self._links:
            os.close(link)
        self._links.clear()
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
