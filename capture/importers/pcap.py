"""`flowtape import pcap`: packet captures (pcap, pcapng, gzip) into a new tape.

    capture files --pcap_reader--> records --packets.parse--> IP/TCP/UDP fields
        -> flows        per 5-tuple, interface, direction and MACs per interval (bytes: IP total length)
        -> tcp_conns    the TCP state machine: connections rows (client and server side)
        -> capture/decode/tcp_streams (the live recorder's own code: bpf/l7.c's choice of flows,
           segment ordering, HTTP/1 and DNS-over-TCP decoders, ClientHello reader) -> http, dns, tls
        -> DnsPairer for DNS over UDP
        --> TapeWriter (the only writer)

Every file is opened and its header checked before anything is written: a file that is not a
capture is one error line (exit 3) and no tape is made. Damage inside a capture is counted per
kind (pcap_reader.Problems, and the packet-level kinds below), printed as one line per kind and
file, stored in the manifest (`extra.import.files[].problems`, the losses also in `lost`), and
marks the tape (flowtape.reader lists it among the tape's problems); every readable packet is
used.

Timestamps are the capture's. pid, comm, cgroup and container are null: they are not on the
wire. Rows are handed to the writer as the import goes (connections when they end, flows per
interval), so memory stays bounded whatever the capture's size.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa

from ...errors import UsageError
from ...schema import table as table_decl
from ...writer import TapeWriter
from ..decode.dns_pairing import DnsPairer
from ..decode.http_pairing import Redaction, connection_factory, decoder_in_use
from ..decode.http_rows import rows_factory
from ..decode.stats import DecodeStats
from ..decode.http2 import connection_factory as h2_factory, decoder_in_use as h2_decoder_in_use
from ..decode.tcp_streams import DNS_TCP, HTTP, TLS_HELLO, TcpStreams
from . import packets as P
from .packet_loop import COUNTERS, PacketLoop
from .pcap_reader import Capture, Interface, NotACapture, open_capture
from .tcp_conns import COLUMNS as CONN_COLUMNS, conn_ids, conn_rows

try:
    from . import _pcap  # type: ignore[attr-defined]  # capture/importers/_pcap.c, built at install when a C compiler is present
except ImportError:  # no compiler at install time: packet_loop.PacketLoop does the same work, slower
    _pcap = None

DEFAULT_INTERVAL_S = 5.0  # flows per interval, as the recorder's default --flow-interval
WRITE_ROWS = 50_000  # rows of a table buffered here before they go to the writer
ROW_GROUP_ROWS = 1 << 17  # the writer's row groups: small enough to keep the import's memory bounded
IDLE_NS = 300_000_000_000  # an L7 flow without packets for this long is ended (the recorder's IDLE_NS)
HELLO_KEEP_NS = 10_000_000_000  # an unfinished ClientHello is decoded after this long (the recorder's)
SKIP_BODY_MIN = 8192  # a Content-Length body with more than this still to come is skipped, not read
SEQ_MOD = 1 << 32
L4_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}

# Packet-level problem kinds (the reader adds its own: truncated_record, garbage, garbage_bytes,
# gzip_damaged, unknown_interface) and whether they lose data (-> the manifest's `lost`).
PROBLEM_TEXT = {
    "truncated_record": (True, "the capture ends inside a record (copied while it was written?): its bytes kept as captured"),
    "garbage": (True, "bytes that are no record where one should start: skipped to the next plausible record"),
    "garbage_bytes": (True, None),
    "gzip_damaged": (True, "the gzip stream is damaged or cut: the packets before the damage are kept"),
    "unknown_interface": (True, "packets of an interface the file never described: skipped"),
    "unknown_link_type": (True, "packets of a link type flowtape does not decode: skipped"),
    "several_link_types": (False, "interfaces of several link types: each packet decoded by its interface's"),
    "not_ip": (False, "frames that are not IP (ARP, LLDP, ...): not counted in flows, as the recorder does"),
    "ip_header_cut": (True, "packets whose IP header is cut or invalid: skipped"),
    "snaplen_cut": (False, "packets cut by the snaplen: sizes from the IP header, L7 decoded from the bytes captured"),
    "transport_header_cut": (False, "packets whose TCP/UDP header is cut by the snaplen: counted in flows without ports"),
    "no_timestamps": (False, "Simple Packet Blocks carry no time: each takes the time of the packet before it"),
}


def default_node(path: Path) -> str:
    """The capture file's name as a node name (its stem, with what a node name cannot hold replaced)."""
    stem = path.name
    for suffix in (".gz", ".pcapng", ".pcap", ".cap", ".ntar"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    name = re.sub(r"[^A-Za-z0-9._-]", "-", stem).lstrip("._-")[:253]
    return name or "pcap"


class _HashingFile:
    """A file read through, hashing every byte read (the manifest's sha256 without a second read).
    The hashing runs in a thread: hashlib releases the GIL on large buffers, so on a second core
    it costs the import no time (it was a sixth of it)."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.size = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sha256")  # one worker: chunks hashed in order
        self._pending: list[Future] = []

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.size += len(data)
        if len(data) < 65536:
            self._wait()
            self.h.update(data)
        else:
            self._pending.append(self._pool.submit(self.h.update, data))
            if len(self._pending) > 8:  # bounded: at most 8 chunks waiting
                self._pending.pop(0).result()
        return data

    def _wait(self) -> None:
        for f in self._pending:
            f.result()
        self._pending.clear()

    def hexdigest(self) -> str:
        self._wait()
        return self.h.hexdigest()

    def rest(self) -> None:
        while self.read(1 << 20):
            pass
        self._wait()

    def close(self) -> None:
        self._wait()
        self._pool.shutdown()
        self.f.close()


@dataclass
class FileReport:
    path: Path
    capture: Capture
    hasher: _HashingFile | None = None
    packets: int = 0
    bytes_ip: int = 0
    first_ns: int | None = None
    last_ns: int | None = None

    def manifest(self) -> dict[str, Any]:
        cap = self.capture
        return {
            "path": str(self.path), "sha256": self.hasher.hexdigest() if self.hasher else None,
            "bytes": self.hasher.size if self.hasher else None, "format": cap.format,
            "compressed": "gzip" if cap.compressed else None,
            "link_types": [P.LINK_NAMES.get(t, f"link type {t}") for t in cap.link_types],
            "interfaces": [i.name for i in cap.interfaces if i.name],
            "records": cap.records_read, "packets_ip": self.packets, "first_ns": self.first_ns, "last_ns": self.last_ns,
            "problems": dict(sorted(cap.problems.counts.items())),
        }


@dataclass
class ImportSummary:
    tape: Path
    node: str
    files: list[FileReport] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def open_all(paths: list[Path]) -> list[FileReport]:
    """Open every file and read its header; NotACapture (one line) before anything is written."""
    out: list[FileReport] = []
    try:
        for p in paths:
            try:
                raw = open(p, "rb")
            except OSError as e:
                raise NotACapture(f"{p}: cannot read ({e.strerror or e})") from None
            hasher = _HashingFile(raw)
            try:
                cap = open_capture(p, fileobj=hasher)
            except BaseException:
                hasher.close()
                raise
            out.append(FileReport(Path(p), cap, hasher))
    except BaseException:
        for r in out:
            r.capture.close()
        raise
    return out


class PcapSink:
    """What the packet loop hands over becomes rows: the L7 side (the recorder's decoders through
    tcp_streams), connections, flows, and their way to the TapeWriter."""

    def __init__(self, writer: TapeWriter, node: str, redaction: Redaction) -> None:
        self.w = writer
        self.node = node
        self.stats = DecodeStats()
        self.dns = DnsPairer(self.stats)
        self.decoder = decoder_in_use()
        if self.decoder == "c" and h2_decoder_in_use() != "c":
            self.decoder = f"c, HTTP/2 {h2_decoder_in_use()}"
        # HTTP/2: flows that start with the preface go to the HTTP/2 decoder (compiled when built)
        self.streams = TcpStreams(self.stats, self.dns, connection_factory(self.stats, redaction), self._on_http, self._on_dns, self._on_tls,
                                  http2=h2_factory(self.stats, redaction))
        self.streams.after_http = self._after_http
        self.loop: Any = None  # the packet loop, told where long bodies end (skip)
        self.skip_body_min = SKIP_BODY_MIN
        self.l7: dict[int, tuple] = {}  # connection id -> its L7 flow's key (client_ip, client_port, server_ip, server_port)
        self.l7_cid: dict[tuple, int] = {}  # and back
        self.interfaces: list[list[Interface]] = []  # per file fed: its interfaces (flows name them)
        self.rows: dict[str, list] = {"connections": [], "dns": [], "tls": []}
        self._http_rows = rows_factory()  # capture/decode/_http_rows.c's HttpColumns, or HttpRows (FLOWTAPE_HTTP_ROWS=python)
        self.http = self._http_rows()
        self.written: dict[str, int] = {}
        self._ips: dict[bytes, str] = {}
        self._macs: dict[bytes, tuple[str, str]] = {}

    def ip(self, raw: bytes) -> str:
        text = self._ips.get(raw)
        if text is None:
            if len(self._ips) > 1_000_000:
                self._ips.clear()
            text = self._ips[raw] = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
        return text

    def _mac_pair(self, macs: bytes) -> tuple[str, str]:
        pair = self._macs.get(macs)
        if pair is None:
            if len(self._macs) > 100_000:
                self._macs.clear()
            pair = self._macs[macs] = (macs[6:12].hex(":"), macs[0:6].hex(":"))  # (src, dst): a frame holds dst first
        return pair

    # --- from the packet loop ---------------------------------------------------------------

    def l7_open(self, cid: int, kind: str, caddr: bytes, cport: int, saddr: bytes, sport: int, first: bytes) -> tuple | None:
        """Connection `cid` is followed for `kind` from here; caddr:cport is its L7 client."""
        key = (self.ip(caddr), cport, self.ip(saddr), sport)
        old = self.l7.pop(cid, None)
        if old is not None:
            self.l7_cid.pop(old, None)
        self.l7[cid] = key
        self.l7_cid[key] = cid
        if kind != TLS_HELLO:
            flow = self.streams.open(key, dns=kind == DNS_TCP, first=first, from_client=True)
            if kind == HTTP:
                return flow, key  # the compiled loop hands in-order segments of it to its decoder itself
        return None

    def l7_data(self, cid: int, from_client: bool, ts: int, seq: int, data: bytes, length: int) -> bool:
        """A payload segment of a followed HTTP or DNS flow; False when the flow is no longer followed."""
        key = self.l7.get(cid)
        flow = self.streams.flows.get(key) if key is not None else None
        if flow is None:
            return False
        flow.last_ts = ts
        self.streams.push(flow, from_client, ts, seq, data, length)
        return True

    def l7_fin(self, cid: int, from_client: bool, rst: bool, ts: int) -> None:
        key = self.l7.get(cid)
        flow = self.streams.flows.get(key) if key is not None else None
        if flow is not None and self.streams.tcp_end(flow, from_client, rst, ts):
            self._forget(cid)

    def hello(self, cid: int, ts: int, data: bytes, length: int) -> None:
        key = self.l7.get(cid)
        if key is not None:
            self.streams.hello(ts, key, data, length)

    def dns_udp(self, ts: int, src: bytes, sport: int, dst: bytes, dport: int, payload: bytes) -> None:
        rows = self.dns.feed_udp(ts, payload, self.ip(src), sport, self.ip(dst), dport)
        if rows:
            self.rows["dns"] += rows

    def conn_end(self, state: tuple, capture_end: int | None) -> None:
        """A connection is over (tcp_conns.STATE_FIELDS): its L7 flow ends with it, its rows are made."""
        cid = state[0]
        key = self.l7.get(cid)
        if key is not None:
            flow = self.streams.flows.get(key)
            if flow is not None:
                self.streams.end(flow, state[10])  # at its last packet
            self._forget(cid)
        self.rows["connections"] += conn_rows(self.node, state, capture_end, self.ip)

    def flows(self, ts_start: list, ts_end: list, file_no: list, ifc: list, ifindex: list, direction: list, macs: list,
              src: list, dst: list, proto: list, sport: list, dport: list, packets: list, nbytes: list, tcp_flags: list) -> None:
        """One interval's flows, as columns."""
        ip, mac = self.ip, self._mac_pair
        ifaces = self.interfaces
        src_mac, dst_mac = [], []
        for m in macs:
            if m is None:
                src_mac.append(None)
                dst_mac.append(None)
            else:
                sm, dm = mac(m)
                src_mac.append(sm)
                dst_mac.append(dm)
        cols = {
            "ts_start": ts_start, "ts_end": ts_end,
            "iface": [ifaces[f][i].name if i < len(ifaces[f]) else None for f, i in zip(file_no, ifc)],
            "ifindex": [x if x is not None and x >= 0 else None for x in ifindex], "direction": direction,
            "src_mac": src_mac, "dst_mac": dst_mac, "src_ip": [ip(x) for x in src], "dst_ip": [ip(x) for x in dst],
            "src_port": sport, "dst_port": dport, "l4": [L4_NAMES.get(x) or f"ip{x}" for x in proto], "ip_proto": proto,
            "packets": packets, "bytes": nbytes, "tcp_flags": tcp_flags,
        }
        self._append("flows", cols)

    def housekeeping(self, now: int) -> None:
        """Once a second of capture time: held segments, idle flows, old ClientHellos and DNS queries, rows to the writer."""
        self.streams.release_held(now)
        for flow in list(self.streams.flows.values()):
            if now - flow.last_ts > IDLE_NS:
                self.streams.end(flow, now)
                cid = self.l7_cid.get(flow.key)
                if cid is not None:
                    self._forget(cid)
        self.streams.expire_hellos(now, HELLO_KEEP_NS)
        self.rows["dns"] += self.dns.expire(now)
        self._write()

    def finish(self, end: int) -> None:
        """The end of the input (after the loop's finish): every decoder's state becomes rows."""
        self.streams.finish(end)
        self.rows["dns"] += self.dns.flush()
        self._write(final=True)

    # --- rows ------------------------------------------------------------------------------

    def _forget(self, cid: int) -> None:
        key = self.l7.pop(cid, None)
        if key is not None and self.l7_cid.get(key) == cid:
            del self.l7_cid[key]

    def _after_http(self, flow: Any, from_client: bool) -> None:
        """A long Content-Length body follows in this direction: the loop does not send its segments
        (the recorder asks the kernel for the same: L7Decoder._skip_long_body)."""
        remaining = flow.http.body_remaining(from_client)
        if remaining > self.skip_body_min:
            dirn = flow.dirs[from_client]
            cid = self.l7_cid.get(flow.key)
            if dirn.skip_to is None and dirn.next is not None and cid is not None and self.loop is not None:
                dirn.skip_to = (dirn.next + remaining) % SEQ_MOD
                self.loop.skip(cid, from_client, dirn.skip_to)

    def _on_http(self, key: tuple, row: tuple) -> None:
        cid = self.l7_cid.get(key)
        c_id, s_id = conn_ids(self.node, cid) if cid is not None else (None, None)
        x = self.http.exchange(row, (*key, False))
        self.http.add(x, c_id, None, None, "client")
        self.http.add(x, s_id, None, None, "server")

    def _on_dns(self, rows: list[dict]) -> None:
        self.rows["dns"] += rows

    def _on_tls(self, key: tuple, row: dict) -> None:
        self.rows["tls"].append(row)

    def _write(self, final: bool = False) -> None:
        limit = 0 if final else WRITE_ROWS
        if self.http and len(self.http) > limit:
            self._append("http", self.http)
            self.http = self._http_rows()
        for name in ("connections", "dns", "tls"):
            rows = self.rows[name]
            if rows and len(rows) > limit:
                if name == "connections":
                    data: Any = _tuples_table("connections", CONN_COLUMNS, rows)
                else:  # the decoders' row dicts as columns: the writer converts those four times faster
                    data = {k: [r[k] for r in rows] for k in rows[0]}
                self._append(name, data)
                self.rows[name] = []

    def _append(self, name: str, data: Any) -> None:
        n = self.w.append(name, data)
        self.written[name] = self.written.get(name, 0) + n


def make_loop(sink: PcapSink, interval_ns: int, dns_ports: tuple[int, ...]) -> Any:
    """The compiled packet loop (capture/importers/_pcap.c) unless it is missing or
    FLOWTAPE_PCAP_LOOP=python; else packet_loop.PacketLoop, its reference."""
    if loop_in_use() == "c":
        return _pcap.Loop(sink, interval_ns, tuple(dns_ports))
    return PacketLoop(sink, interval_ns, tuple(dns_ports))


def loop_in_use() -> str:
    """'c' when make_loop() makes the compiled loop, else 'python' (and why)."""
    if _pcap is None:
        return "python (capture/importers/_pcap.c was not built: install gcc and python3-dev, then reinstall flowtape)"
    if os.environ.get("FLOWTAPE_PCAP_LOOP", "").lower() == "python":
        return "python (FLOWTAPE_PCAP_LOOP=python)"
    return "c"


def _tuples_table(name: str, columns: tuple[str, ...], rows: list[tuple]) -> pa.Table:
    """Rows as value tuples in `columns` order -> the table's Arrow schema (no dict per row)."""
    schema = table_decl(name).arrow_schema
    cols = dict(zip(columns, zip(*rows))) if rows else dict.fromkeys(columns, ())
    n = len(rows)  # columns the importer does not fill (added ones, e.g. connections.wire_trace_id) are null
    return pa.Table.from_arrays([pa.array(cols[f.name], f.type) if f.name in cols else pa.nulls(n, f.type) for f in schema], schema=schema)


def import_pcap(paths: list[Path], out: Path, node: str | None = None, interval_s: float = DEFAULT_INTERVAL_S,
                redaction: Redaction | None = None, status: TextIO | None = None, dns_ports: tuple[int, ...] = (53,)) -> ImportSummary:
    """Import the captures `paths` into the new tape `out` (one node: `node`, default the first file's name)."""
    if not paths:
        raise UsageError("give at least one capture file")
    if interval_s <= 0:
        raise UsageError("--interval must be positive")
    status = status if status is not None else sys.stderr
    redaction = redaction or Redaction()
    reports = open_all([Path(p) for p in paths])  # NotACapture before a tape exists
    node = node or default_node(reports[0].path)
    started = time.monotonic()
    summary = ImportSummary(Path(out), node, reports)
    try:
        w = TapeWriter(out, node=node, rotate_seconds=float("inf"), row_group_rows=ROW_GROUP_ROWS,
                       clock={"realtime_ns": 0, "monotonic_ns": 0, "offset_ns": 0, "uncertainty_ns": 0})
    except BaseException:
        for r in reports:
            r.capture.close()
        raise
    with w:
        sink = PcapSink(w, node, redaction)
        loop = sink.loop = make_loop(sink, int(interval_s * 1e9), dns_ports)
        seen = dict.fromkeys(COUNTERS, 0)
        for i, rep in enumerate(reports):
            cap = rep.capture
            sink.interfaces.append(cap.interfaces)  # a pcapng file's list grows as the file is read
            loop.start_file(i)
            links = _LinkWatch(cap, loop)
            cap.feed(links)
            if rep.hasher is not None:
                rep.hasher.rest()  # the sha256 covers the whole file, also bytes after what could be read
            cap.close()
            now = loop.counters()
            delta = {k: now[k] - seen.get(k, 0) for k in COUNTERS}
            seen = now
            rep.packets, rep.bytes_ip = delta["packets"], delta["bytes_ip"]
            rep.first_ns, rep.last_ns = now["file_first_ns"], now["file_last_ns"]
            for kind in ("snaplen_cut", "transport_header_cut", "not_ip", "ip_header_cut", "unknown_link_type"):
                if delta[kind]:
                    cap.problems.add(kind, delta[kind])
            if len(set(cap.link_types)) > 1:
                cap.problems.add("several_link_types", 1)
        loop.finish()
        counters = loop.counters()
        start, end = loop.first_ns, loop.last_ns
        sink.finish(end if end is not None else 0)
        problems: dict[str, int] = {}
        for rep in reports:
            for kind, n in sorted(rep.capture.problems.counts.items()):
                problems[kind] = problems.get(kind, 0) + n
                _lossy, text = PROBLEM_TEXT.get(kind, (True, kind))
                if text is None or not n:
                    continue
                what = f"{n:,}"
                if kind == "garbage":
                    what += f" region(s), {rep.capture.problems.counts['garbage_bytes']:,} bytes"
                elif kind == "unknown_link_type":
                    what += f" packet(s); link types {', '.join(str(t) for t in rep.capture.link_types if t not in P.SUPPORTED)}"
                elif kind in ("several_link_types",):
                    what = ", ".join(P.LINK_NAMES.get(t, str(t)) for t in rep.capture.link_types)
                print(f"flowtape: warning: {rep.path}: {text} ({what})", file=status)
            if not rep.packets:
                print(f"flowtape: warning: {rep.path}: no IP packet in this capture", file=status)
        for kind, n in problems.items():
            if PROBLEM_TEXT.get(kind, (True, None))[0]:
                w.set_lost(f"pcap.{kind}", n)
        for name, count in sink.stats.lost_counters().items():
            w.set_lost(name, count)
        if start is not None:
            w.set_window(start, end)
            w.add_node(node, clock={"realtime_ns": start, "monotonic_ns": 0, "offset_ns": 0, "uncertainty_ns": 0, "source": "capture timestamps"})
        w.set_probe("pcap_import", {
            "flow_interval_s": interval_s, "http_decoder": sink.decoder, "packet_loop": loop_in_use(), "dns_ports": list(dns_ports),
            "tables": ["flows", "connections", "dns", "http", "tls"],
            "counting": "every IP packet of the capture once; TSO/GRO super-packets as the segments they stand for",
            "sides": "connections and http: a client row and a server row per connection (both ends are on the wire)",
        })
        w.update("redaction", redaction.manifest())
        w.update("settings", {"no_redact": not redaction.enabled, "header_allow_list": sorted(redaction.header_allow_list)})
        w.update("extra", {
            "import": {
                "source": "pcap", "files": [r.manifest() for r in reports], "problems": dict(sorted(problems.items())),
                "damaged": any(PROBLEM_TEXT.get(k, (True, None))[0] for k in problems),
                "notes": {**sink.stats.notes(), "connections_started_before_capture": counters["connections_started_before_capture"],
                          "gso_packets_split": counters["gso_packets_split"],
                          "duplicate_sightings": counters["duplicate_sightings"]},
            },
        })
    sink.loop = None  # the compiled loop holds the sink and is not garbage-collected: no cycle may outlive the import
    summary.rows = dict(sorted(sink.written.items()))
    summary.seconds = time.monotonic() - started
    return summary


class _LinkWatch:
    """Between a Capture and the packet loop: tells the loop each new interface's link type (a
    pcapng file describes its interfaces as it goes) before the records that need it."""

    def __init__(self, cap: Capture, loop: Any) -> None:
        self.cap, self.loop, self.known = cap, loop, -1

    def _sync(self) -> None:
        if len(self.cap.interfaces) != self.known:
            self.known = len(self.cap.interfaces)
            self.loop.set_links([i.link_type for i in self.cap.interfaces])

    def run_pcap(self, *args: Any) -> tuple[int, int, int, int]:
        self._sync()
        return self.loop.run_pcap(*args)

    def run_pcapng(self, *args: Any) -> tuple[int, int, int]:
        self._sync()
        return self.loop.run_pcapng(*args)

    def packet(self, *args: Any) -> None:
        self._sync()
        self.loop.packet(*args)
