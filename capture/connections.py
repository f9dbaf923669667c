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

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import ebpf

# TCP states (include/net/tcp_states.h)
ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, LISTEN, CLOSING = range(1, 12)
EV_STATE, EV_ACCEPT, EV_OWNER, EV_ERROR = 1, 2, 3, 4
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

COLUMNS = (
    "conn_id", "ts_start", "ts_end", "role", "client_ip", "client_port", "server_ip", "server_port", "pid", "comm",
    "cgroup_id", "container_id", "bytes_sent", "bytes_received", "segs_sent", "segs_received", "srtt_us",
    "retransmits", "connect_latency_ns", "close_state",
)


@dataclass
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
    states: set[int] = field(default_factory=set)
    stats: dict[str, int] | None = None
    rx_at_fin_wait2: int | None = None
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
        if cgroup_id not in self.paths and cgroup_id not in self._scanned_for:
            self._scanned_for.add(cgroup_id)  # one walk per unknown id, not per row
            self._scan()
        m = self.CONTAINER_RE.findall(self.paths.get(cgroup_id, ""))
        return m[-1] if m else None


class ConnectionTracker:
    """Follow TCP endpoints through their events; emit a row when one ends (or at stop)."""

    def __init__(self, node: str, to_wall: Callable[[int], int], container_id: Callable[[int | None], str | None] = lambda _: None):
        self.node = node
        self.to_wall = to_wall
        self.container_id = container_id
        self.live: dict[int, Conn] = {}  # skaddr -> conn
        self.closing: list[Conn] = []  # closed, waiting GRACE_NS for late owner/error events
        self.started_before = 0  # endpoints first seen mid-life (recording started later)
        self.rows: list[dict[str, Any]] = []
        self.last_ts = 0

    # --- events ---------------------------------------------------------------------------

    def feed(self, ev: dict[str, Any]) -> None:
        self.last_ts = max(self.last_ts, ev["ts_ns"])
        kind = ev["kind"]
        if kind == EV_STATE:
            self._state(ev)
        elif kind == EV_ACCEPT:
            self._accept(ev)
        elif kind == EV_OWNER:
            c = self.live.get(ev["skaddr"]) or next((c for c in self.closing if c.skaddr == ev["skaddr"]), None)
            if c is not None and c.role == "server" and c.pid is None:
                self._own(c, ev)
        elif kind == EV_ERROR and ev["error"]:
            t = (ev["saddr"], ev["sport"], ev["daddr"], ev["dport"])
            for c in list(self.live.values()) + self.closing:
                if c.tuple == t and not c.error:
                    c.error = ev["error"]

    def _own(self, c: Conn, ev: dict[str, Any]) -> None:
        c.pid, c.comm, c.cgroup_id = ev["pid"], ev["comm"], ev["cgroup_id"] or None

    def _state(self, ev: dict[str, Any]) -> None:
        old, new, sk = ev["oldstate"], ev["newstate"], ev["skaddr"]
        c = self.live.get(sk)
        if old == CLOSE and new == SYN_SENT:
            c = Conn(sk, "client", ev["family"], ev["ts_ns"], remote_ip=ev["daddr"], remote_port=ev["dport"])
            if ev["in_task"]:
                self._own(c, ev)
            self.live[sk] = c
        elif old == SYN_RECV and new == ESTABLISHED:
            c = Conn(sk, "server", ev["family"], ev["ts_ns"], ts_established=ev["ts_ns"])
            self.live[sk] = c
        elif c is None:
            if new != CLOSE:
                self.live[sk] = Conn(sk, "unknown", ev["family"], ev["ts_ns"])  # tracked only to be skipped
                self.started_before += 1
            return
        c.states.add(new)
        c.local_ip, c.local_port, c.remote_ip, c.remote_port = ev["saddr"], ev["sport"], ev["daddr"], ev["dport"]
        if ev["has_stats"]:
            c.cookie = c.cookie or ev["cookie"]
            c.stats = {k: ev[k] for k in ("bytes_acked", "bytes_received", "segs_out", "segs_in", "srtt_us", "total_retrans", "snd_una", "snd_nxt")}
        if old == SYN_SENT and new == ESTABLISHED:
            c.ts_established = ev["ts_ns"]
        if new in (CLOSE_WAIT, CLOSING):
            c.fin_in = True
        if new == FIN_WAIT2 and c.stats is not None:
            c.rx_at_fin_wait2 = c.stats["bytes_received"]
        if new == CLOSE:
            del self.live[sk]
            if c.role == "unknown":
                return
            if old == FIN_WAIT2 and c.stats is not None and c.rx_at_fin_wait2 is not None and c.stats["bytes_received"] > c.rx_at_fin_wait2:
                c.fin_in = True
            c.ts_end, c.close_from = ev["ts_ns"], old
            self.closing.append(c)

    def _accept(self, ev: dict[str, Any]) -> None:
        peer = (ev["daddr"], ev["dport"])
        candidates = [c for c in list(self.live.values()) + self.closing if c.role == "server" and not c.owner_from_accept and (c.remote_ip, c.remote_port) == peer]
        if candidates:
            c = max(candidates, key=lambda c: c.ts_start)
            self._own(c, ev)
            c.owner_from_accept = True

    # --- rows -----------------------------------------------------------------------------

    def close_state(self, c: Conn) -> str:
        if c.ts_end is None:
            return "open"
        if c.ts_established is None:  # a client that never completed the handshake
            return {ECONNREFUSED: "refused", ETIMEDOUT: "timeout"}.get(c.error, "failed")
        if c.error == ECONNRESET or c.close_from in (ESTABLISHED, CLOSE_WAIT, FIN_WAIT1, SYN_RECV):
            return "reset"
        return "closed"

    def row(self, c: Conn) -> dict[str, Any]:
        client = c.role == "client"
        s = c.stats if c.ts_end is not None else None  # counters of open endpoints are not final
        sent = received = None
        if s is not None:
            syn = 1 if client and c.ts_established is not None else 0
            fin_sent = bool(c.states & {FIN_WAIT1, CLOSING, LAST_ACK})
            fin_acked = 1 if fin_sent and s["snd_una"] == s["snd_nxt"] else 0
            sent = max(0, s["bytes_acked"] - syn - fin_acked)
            received = max(0, s["bytes_received"] - (1 if c.fin_in else 0))
        local, remote = (c.local_ip, c.local_port), (c.remote_ip, c.remote_port)
        cl, sv = (local, remote) if client else (remote, local)
        return {
            "conn_id": f"{self.node}-c{c.cookie:x}" if c.cookie else f"{self.node}-s{c.skaddr:x}-{c.ts_start:x}",
            "ts_start": self.to_wall(c.ts_start),
            "ts_end": None if c.ts_end is None else self.to_wall(c.ts_end),
            "role": c.role,
            "client_ip": cl[0], "client_port": cl[1], "server_ip": sv[0], "server_port": sv[1],
            "pid": c.pid, "comm": c.comm, "cgroup_id": c.cgroup_id, "container_id": self.container_id(c.cgroup_id),
            "bytes_sent": sent, "bytes_received": received,
            "segs_sent": None if s is None else s["segs_out"], "segs_received": None if s is None else s["segs_in"],
            "srtt_us": None if s is None else s["srtt_us"], "retransmits": None if s is None else s["total_retrans"],
            "connect_latency_ns": c.ts_established - c.ts_start if client and c.ts_established is not None else None,
            "close_state": self.close_state(c),
        }

    def take_rows(self, now_ns: int | None = None, final: bool = False) -> list[dict[str, Any]]:
        """Rows of endpoints closed more than GRACE_NS ago (all of them, and open ones, if final)."""
        now = self.last_ts if now_ns is None else now_ns
        ready = [c for c in self.closing if final or now - c.ts_end >= GRACE_NS]
        self.closing = [c for c in self.closing if c not in ready] if not final else []
        rows = [self.row(c) for c in ready]
        if final:
            rows += [self.row(c) for c in self.live.values() if c.role != "unknown" and c.local_port]
            self.live.clear()
        return rows


def decode(ev: Any) -> dict[str, Any]:
    """A struct conn_event (bcc ctypes) as a dict with addresses as text."""
    family = 4 if ev.family == 2 else 6 if ev.family == 10 else 0
    return {
        "kind": ev.kind, "ts_ns": ev.ts_ns, "skaddr": ev.skaddr, "cookie": ev.cookie, "cgroup_id": ev.cgroup_id,
        "bytes_acked": ev.bytes_acked, "bytes_received": ev.bytes_received, "segs_out": ev.segs_out, "segs_in": ev.segs_in,
        "srtt_us": ev.srtt_us, "total_retrans": ev.total_retrans, "snd_una": ev.snd_una, "snd_nxt": ev.snd_nxt,
        "pid": ev.pid, "error": ev.error, "family": family,
        "saddr": ebpf.ip_text(family, bytes(ev.saddr)) if family else "", "daddr": ebpf.ip_text(family, bytes(ev.daddr)) if family else "",
        "sport": ev.sport, "dport": ev.dport, "oldstate": ev.oldstate, "newstate": ev.newstate,
        "has_stats": ev.has_stats, "in_task": ev.in_task, "comm": bytes(ev.comm).split(b"\0", 1)[0].decode("utf-8", "replace"),
    }


@dataclass
class ConnectionProbe:
    """Load bpf/connections.c; attach sock_ops to the cgroup v2 root and the tracepoints."""

    ringbuf_pages: int = 256
    unowned_entries: int = 65536
    bpf: Any = None
    missing: dict[str, str] = field(default_factory=dict)  # what is missing -> what the tape lacks
    _defines: dict[str, Any] = field(default_factory=dict)
    _sockops: Any = None
    _link: int | None = None
    cgroup: Path | None = None

    def check(self) -> None:
        """Decide what can be compiled here; required parts raise Unsupported."""
        from ..errors import Unsupported

        if not ebpf.tracepoint_exists("sock", "inet_sock_set_state"):
            raise Unsupported("tracepoint sock:inet_sock_set_state is missing from this kernel: the connections table will be missing")
        self._defines = {"FT_RINGBUF_PAGES": self.ringbuf_pages, "FT_UNOWNED_ENTRIES": self.unowned_entries}
        for define, tps in OPTIONAL_TRACEPOINTS.items():
            ok = all(ebpf.tracepoint_exists(c, e) for c, e in tps)
            self._defines[define] = 1 if ok else None
            if not ok:
                self.missing[f"tracepoint {tps[0][0]}:{tps[0][1]}"] = MISSING_EFFECT[define]
        self.cgroup = ebpf.cgroup2_root()
        if self.cgroup is None:
            self.missing["cgroup v2"] = "bytes, segments, srtt and retransmits of connections (sock_ops needs cgroup v2), and container ids"

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
                self._link = ebpf.attach_cgroup_sock_ops(self._sockops.fd, self.cgroup)
            except OSError as e:
                self.missing["cgroup v2 sock_ops"] = f"bytes, srtt and retransmits of connections ({e.strerror})"

    def open(self, on_event: Callable[[dict[str, Any]], None]) -> None:
        table = self.bpf[b"ft_conn_events"]
        table.open_ring_buffer(lambda _ctx, data, _size: on_event(decode(table.event(data))))

    def poll(self, timeout_ms: int) -> None:
        self.bpf.ring_buffer_poll(timeout_ms)

    def lost(self) -> int:
        return int(sum(self.bpf[b"ft_conn_lost"][0]))

    def programs(self) -> dict[str, int]:
        return {(name.decode() if isinstance(name, bytes) else name): fn.fd for name, fn in self.bpf.funcs.items()}

    def close(self) -> None:
        if self._link is not None:
            os.close(self._link)
            self._link = None
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
