"""The L7 probe: DNS, HTTP/1.x and HTTP/2 (plain and TLS plaintext) and TLS ClientHellos from bpf/l7.c.

    bpf/l7.c (tcx + OpenSSL uprobes) --ring buffer--> L7Decoder.feed_batch(records)
        DNS  -> UDP: _dns.c's Pairer (dns_columns.py), TCP: DnsPairer -> dns table (Arrow)
        HTTP -> per-flow segment ordering -> HTTP/1 or HTTP/2 decoder -> http rows (one per local side)
        TLS  -> ClientHelloReader               -> tls rows
        SSL  -> per (pid, SSL*) stream    -> HTTP/1 or HTTP/2 decoder -> http rows (tls=true)

A flow or SSL stream whose first bytes are the HTTP/2 client preface (or, for TLS plaintext, the
server's first SETTINGS frame, or frames of a stream joined mid-way) is decoded by
capture/decode/http2.py's H2Connection (one row per stream), the others by the HTTP/1 decoder.

The HTTP/1 decoder is capture/decode/_http1.c when it was built, else http_pairing.HttpConnection
(the same, in Python: see http_pairing.connection_factory); the HTTP/2 one capture/decode/_http2.c,
else http2.H2Connection (http2.connection_factory). FLOWTAPE_HTTP_DECODER=python selects both Python ones.

`L7Decoder` is the pure part: it takes raw event records (bytes laid out as struct l7_event)
and the connections probe's endpoints (`capture.live.connections.Conn`), so it is tested with
synthetic records and no kernel. `L7Probe` loads and attaches the C.

Sides (DESIGN.md): a plain HTTP exchange is seen once on the wire per node (bpf/l7.c takes a
packet at the first covered interface it meets) and becomes one row per local endpoint of
its connection: the connections probe says which endpoints of that 4-tuple live on this node
(a client, a server, or both when both processes are local), with their pid/comm and
conn_id. An exchange on a connection with no local endpoint known (it started before the
recording, or it only crosses this node) is counted as `l7.http_no_endpoint` and not written.
HTTPS plaintext comes from the process itself (uprobes), so each side is observed by its own
process; the SSL* is tied to its socket (skaddr) by the sock:sock_{send,recv}_length
tracepoint firing on the same thread inside the SSL call, and the socket to its connection
row by the connections probe, which follows endpoints by that same skaddr.

Timing: packet events carry bpf_ktime_get_ns() at the capture point (for plain HTTP the
same instant for the client and the server row); SSL events the time SSL_read/SSL_write
returned in the process. Rows wait ROW_GRACE_NS before being written so the connection
events they join (accept, close) have arrived.
"""

from __future__ import annotations

import bisect
import collections
import ctypes
import operator
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from . import ebpf, ringbuf
from .gotls import GoTlsAttacher
from .interfaces import TcAttachments
from ..decode.http1 import looks_like_request, looks_like_response
from ..decode.stats import DecodeStats
from ..decode import dns_columns
from ..decode.dns_pairing import DnsPairer
from ..decode.dns_rows import dns_table
from ..decode.http_pairing import EXCHANGE_FIELDS, _http1, Redaction, connection_factory, decoder_in_use, is_http2
from ..decode.http_rows import HttpRows, rows_factory
from ..decode.tcp_order import SEQ_MOD
from ..decode.tcp_streams import TcpFlow, TcpStreams
from ..decode import http2 as _h2
from ..decode.http2 import looks_like_frames

# struct l7_event kinds (bpf/events.h)
DNS_UDP, DNS_TCP, HTTP, TLS_HELLO, TCP_END, SSL_WRITE, SSL_READ, SSL_FREE, IO_TURN, WIRE_TRACE, GO_SPAWN = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
WIRE_SOURCES = {1: "ip-option", 2: "tcp-option"}  # WIRE_TRACE's tcp_flags
NO_WIRE = (None, None, None)
TURN_RX, TURN_TX = 1, 2  # IO_TURN's tcp_flags: the thread received / sent
TCP_FIN, TCP_RST = 0x01, 0x04
KERNEL_COUNTERS = {0: "l7.ringbuf_full", 1: "l7.flow_map_full", 2: "l7.truncated", 3: "l7.ssl_no_socket", 4: "l7.http_segments_shed",
                   5: "l7.wire_trace_map_full"}
DEFAULT_SSL_LIBS = ("/usr/lib/x86_64-linux-gnu/libssl.so.3",)
SSL_FUNCS = (  # (symbol, entry program, return program)
    ("SSL_write", "ft_ssl_write_enter", "ft_ssl_write_return"),
    ("SSL_write_ex", "ft_ssl_write_ex_enter", "ft_ssl_write_ex_return"),
    ("SSL_read", "ft_ssl_read_enter", "ft_ssl_read_return"),
    ("SSL_read_ex", "ft_ssl_read_ex_enter", "ft_ssl_read_ex_return"),
)

# Bytes of each message bpf/l7.c sends (its FT_L7_*_CAP defines; ClientHellos: FT_L7_DATA_MAX in
# events.h); written into the manifest. tests/test_l7_decoder.py checks they match the C.
PREFIX_BYTES = {"dns": 512, "http": 2048, "tls_client_hello": 2048, "https_plaintext": 512}

ROW_GRACE_NS = 1_000_000_000  # rows wait this long for their connection's events
ENDPOINT_WAIT_NS = 120_000_000_000  # a row whose connection is still unknown waits at most this long
LIVE_LOOKUP_NS = 1_000_000_000  # how often open endpoints are read from the kernel while rows wait
SKIP_BODY_MIN = 64 * 1024  # a body with more bytes still to come is skipped in the kernel (one map update)
IDLE_NS = 300_000_000_000  # a flow without events for 5 minutes is ended
ENDPOINT_KEEP_NS = 30_000_000_000  # closed endpoints stay joinable this long
HELLO_KEEP_NS = 10_000_000_000
# Turns are kept this long: rows are joined ROW_GRACE_NS after their exchange, unless their endpoint
# is still unknown (up to ENDPOINT_WAIT_NS): such late rows get no tid (null), memory stays bounded
# (two turns per connection at 10k connections/s: 200k kept).
TURN_KEEP_NS = 10_000_000_000
WIRE_SLACK_NS = 1_000_000_000  # a trace context this long before an endpoint's start is still its own
TURNS_PER_SOCKET = 4096  # direction turns kept per socket and direction (rows join them ~1 s after)
_TS_START = operator.attrgetter("ts_start")
_NX = len(EXCHANGE_FIELDS)  # an HTTP/1 exchange tuple's length (HTTP/2 ones are longer)


class HeaderDecoder:
    """struct l7_event's header (everything before data[]) from the C declaration, via bcc's
    ctypes class: one struct.Struct that yields FIELDS (in C order; fields not listed are
    skipped as padding), so the hot path unpacks straight into locals; and `layout`, where
    capture/decode/_http1.c's feed_http finds TCP_FIELDS and SSL_FIELDS (None if their sizes are not
    the ones it reads)."""

    FIELDS = ("ts_ns", "skaddr", "ssl", "length", "seq", "pid", "cap_len", "family",
              "saddr", "daddr", "sport", "dport", "kind", "tcp_flags", "from_client", "comm", "tid")
    TCP_FIELDS = ("ts_ns", "length", "seq", "cap_len", "saddr", "daddr", "sport", "dport", "from_client")
    SSL_FIELDS = ("skaddr", "ssl", "pid")
    DNS_FIELDS = ("ts_ns", "cap_len", "family", "saddr", "daddr", "sport", "dport")

    def __init__(self, event_class: type):
        by_name = {}  # name -> (offset, size, format code)
        for name, ctype in event_class._fields_:
            if name == "data":
                break
            off, size = getattr(event_class, name).offset, ctypes.sizeof(ctype)
            if issubclass(ctype, ctypes.Array):
                code = f"{size}s"
            else:
                code = {1: "b", 2: "h", 4: "i", 8: "q"}[size]
                code = code if ctype._type_.islower() else code.upper()
            by_name[name] = (off, size, code)
        missing = [n for n in self.FIELDS if n not in by_name]
        if missing:
            raise ValueError(f"struct l7_event has no field {missing[0]!r} (bpf/events.h and capture/live/l7.py disagree)")
        self.data_offset = event_class.data.offset
        self.kind_offset = by_name["kind"][0]
        self.struct = self._struct(by_name, self.FIELDS)
        # capture/decode/_dns.c's Pairer reads DNS_UDP records at these offsets (None if the sizes differ)
        self.dns_layout = (self.kind_offset, *(by_name[n][0] for n in self.DNS_FIELDS), self.data_offset,
                           by_name["cap_len"][1], by_name["family"][1], DNS_UDP) \
            if [by_name[n][1] for n in ("ts_ns", "saddr", "daddr", "sport", "dport")] == [8, 16, 16, 2, 2] \
            and by_name["cap_len"][1] in (1, 2, 4) and by_name["family"][1] in (1, 2, 4) else None
        # capture/decode/_http1.c's feed_http reads these fields itself, at these offsets and sizes
        fields = self.TCP_FIELDS + self.SSL_FIELDS
        sizes = {n: by_name[n][1] for n in fields}
        self.layout = (self.kind_offset, *(by_name[n][0] for n in self.TCP_FIELDS), self.data_offset,
                       *(by_name[n][0] for n in self.SSL_FIELDS), HTTP, SSL_WRITE, SSL_READ) \
            if sizes == dict(zip(fields, (8, 4, 4, 2, 16, 16, 2, 2, 1, 8, 8, 4))) and by_name["kind"][1] == 1 else None

    @staticmethod
    def _struct(by_name: dict[str, tuple[int, int, str]], fields: tuple[str, ...]) -> struct.Struct:
        # struct.Struct reads left to right, so the fields must follow the C order
        if sorted(fields, key=lambda n: by_name[n][0]) != list(fields):
            raise ValueError("struct l7_event's fields are not in HeaderDecoder's order (bpf/events.h and capture/live/l7.py disagree)")
        fmt, pos = "<", 0
        for n in fields:
            off, size, code = by_name[n]
            fmt += (f"{off - pos}x" if off > pos else "") + code
            pos = off + size
        return struct.Struct(fmt)


def c_header_class() -> type:
    """A ctypes twin of struct l7_event for tests without bcc (mirrors bpf/events.h exactly)."""

    class L7Event(ctypes.Structure):
        _fields_ = [
            ("ts_ns", ctypes.c_uint64), ("skaddr", ctypes.c_uint64), ("ssl", ctypes.c_uint64),
            ("length", ctypes.c_uint32), ("seq", ctypes.c_uint32), ("pid", ctypes.c_uint32),
            ("cap_len", ctypes.c_uint16), ("family", ctypes.c_uint16),
            ("saddr", ctypes.c_uint8 * 16), ("daddr", ctypes.c_uint8 * 16),
            ("sport", ctypes.c_uint16), ("dport", ctypes.c_uint16),
            ("kind", ctypes.c_uint8), ("tcp_flags", ctypes.c_uint8), ("from_client", ctypes.c_uint8), ("_pad0", ctypes.c_uint8),
            ("comm", ctypes.c_char * 16), ("tid", ctypes.c_uint32), ("data", ctypes.c_uint8 * 2048),
        ]

    return L7Event


@dataclass(eq=False)
class Endpoint:
    """A local TCP endpoint (the attributes of capture.live.connections.Conn that L7 rows need)."""

    skaddr: int
    role: str
    ts_start: int
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    pid: int | None = None
    comm: str | None = None
    cookie: int = 0
    ts_end: int | None = None

    @classmethod
    def from_event(cls, ev: dict[str, Any]) -> "Endpoint":
        """From an ESTABLISHED event dict (ConnectionProbe.open_endpoints)."""
        return cls(ev["skaddr"], "client" if ev["flags"] & 1 else "server", ev["ts_start_ns"], ev["saddr"], ev["sport"],
                   ev["daddr"], ev["dport"], ev["pid"] if ev.get("in_task") else None, ev["comm"] if ev.get("in_task") else None,
                   ev.get("cookie") or 0)


class IoTurns:
    """FT_L7_IO_TURN events by socket, for http.tid (and, in Go programs, http.goroutine): the thread
    (and goroutine) that turned a socket's data into its request direction (a server's receive, a
    client's send), sent only when it changed.

    A row takes the last turn on its socket before its response (bpf/l7.c sends a turn only when
    its thread differs from the previous one, so an exchange whose turn was not sent had the
    previous one's thread), since its endpoint began (a socket address is reused), and only a turn
    of the row's direction (a server row: a receive; a client row: a send; a socket whose first data
    went the other way, a server-speaks-first protocol, gives none). Without a response, turns up to
    NO_RESPONSE_NS after the request count. The bound is the response, not the request: a packet
    row's ts_request is taken at the interface, before a server's recv and before a client's
    sock_send_length fires (after its segment left)."""

    __slots__ = ("by_sk",)
    NO_RESPONSE_NS = 1_000_000_000

    def __init__(self) -> None:
        # skaddr -> (ts list, tid list, received list, goroutine list: 0 when not Go), in arrival order
        # (time order up to CPU skew); the dict in order of each socket's last turn, so expire() stops
        # at the first one kept
        self.by_sk: collections.OrderedDict[int, tuple[list[int], list[int], list[bool], list[int]]] = collections.OrderedDict()

    def add(self, skaddr: int, ts: int, received: bool, tid: int, g: int = 0) -> None:
        by_sk = self.by_sk
        entry = by_sk.get(skaddr)
        if entry is None:
            entry = by_sk[skaddr] = ([], [], [], [])
        else:
            by_sk.move_to_end(skaddr)
            tss = entry[0]
            if len(tss) >= TURNS_PER_SOCKET or ts - tss[0] > TURN_KEEP_NS:  # an address reused all along: its old turns go
                keep = bisect.bisect_left(tss, ts - TURN_KEEP_NS)
                keep = max(keep, len(tss) - TURNS_PER_SOCKET // 2)
                for lst in entry:
                    del lst[:keep]
        tss, tids, rx, gs = entry
        tss.append(ts)
        tids.append(tid)
        rx.append(received)
        gs.append(g)

    def _at(self, skaddr: int, received: bool, ts: int, ts_response: int | None, since: int) -> tuple | None:
        entry = self.by_sk.get(skaddr) if skaddr else None
        if entry is None:
            return None
        tss, tids, rx, gs = entry
        bound = ts + self.NO_RESPONSE_NS if ts_response is None else ts_response
        j = bisect.bisect_right(tss, bound) - 1
        if j < 0 or tss[j] < since or rx[j] != received:
            return None
        return tids[j], gs[j] or None

    def tid(self, skaddr: int, received: bool, ts: int, ts_response: int | None, since: int) -> int | None:
        at = self._at(skaddr, received, ts, ts_response, since)
        return None if at is None else at[0]

    def turn(self, skaddr: int, received: bool, ts: int, ts_response: int | None, since: int) -> tuple[int | None, int | None]:
        """(tid, goroutine) of the row's turn (see the class): each None when not known, the goroutine
        when the process is not Go."""
        return self._at(skaddr, received, ts, ts_response, since) or (None, None)

    def expire(self, before: int) -> None:
        """Forget the sockets whose last turn is older than `before`."""
        by_sk = self.by_sk
        while by_sk:
            k, (tss, *_) = next(iter(by_sk.items()))
            if tss and tss[-1] >= before:
                return
            del by_sk[k]


class _SslStream:
    __slots__ = ("http", "skaddr", "side", "pid", "comm", "last_ts", "first_ts")

    def __init__(self, skaddr: int, side: str, pid: int, comm: str, http: Any, ts: int) -> None:
        self.skaddr, self.side, self.pid, self.comm, self.http = skaddr, side, pid, comm, http
        self.last_ts = self.first_ts = ts


# --- the decoder ---------------------------------------------------------------------------


class L7Decoder:
    """Turns struct l7_event records into dns, http and tls rows (all columns but `node`)."""

    def __init__(self, node: str, offset_ns: int, stats: DecodeStats | None = None, redaction: Redaction | None = None,
                 event_class: type | None = None, dns_timeout_ns: int | None = None):
        self.node = node
        self.offset = offset_ns  # wall = kernel monotonic + offset
        self.stats = stats if stats is not None else DecodeStats()
        self.redaction = redaction or Redaction()
        self.dns = DnsPairer(self.stats) if dns_timeout_ns is None else DnsPairer(self.stats, dns_timeout_ns)
        self.header = HeaderDecoder(event_class or c_header_class())
        # DNS over UDP: capture/decode/_dns.c's Pairer on the raw records (dns_columns), unless the
        # reference (self.dns, which takes DNS over TCP either way) is asked for or cannot be avoided
        self.dns_decoder = dns_columns.decoder_in_use()
        if self.dns_decoder == "c" and self.header.dns_layout is None:
            self.dns_decoder = "python (struct l7_event's fields are not the sizes capture/decode/_dns.c reads)"
        self.dns_udp = None if self.dns_decoder != "c" else dns_columns.ColumnPairer(
            self.header.dns_layout, self.stats, *(() if dns_timeout_ns is None else (dns_timeout_ns,)))
        self.ssl: dict[tuple[int, int], _SslStream] = {}
        # connection endpoints (capture.live.connections.Conn) by client-first 4-tuple and by skaddr
        self.endpoints: dict[tuple, list[Any]] = {}
        self.by_sk: dict[int, list[Any]] = {}
        self.pending: collections.deque[tuple[int, str, Any, Any]] = collections.deque()  # (ready_mono, table, join, row)
        self.waiting: list[tuple[int, str, Any, Any]] = []  # rows whose connection is not known yet
        self.known: dict[tuple[int, int], Any] = {}  # (skaddr, ts_start) -> endpoint registered
        self._endpoint_cols: dict[int, tuple[Any, int, tuple]] = {}  # id(endpoint) -> (endpoint, its cookie, columns)
        # Endpoints still open, from the kernel (ConnectionProbe.open_endpoints: ESTABLISHED-like
        # event dicts), for rows that wait on a connection the probe has not reported yet.
        self.live_source: Callable[[], list[dict[str, Any]]] | None = None
        self._live_read_at = 0
        # Set by the recorder to L7Probe.skip_body: tells the kernel where a long body of one
        # direction ends, so it stops sending that body's segments. Returns False if it could not.
        self.skip_body: Callable[[int, tuple, bool, int], bool] | None = None
        self.rows: dict[str, list[dict]] = {"dns": [], "tls": [], "wire_trace_context": [], "go_spawns": []}
        # trace contexts read from packets, by the flow's two (ip, port) ends sorted: (mono ts, trace, span, source)
        self.wire: dict[tuple, list[tuple]] = {}
        # http rows: capture/decode/_http_rows.c's HttpColumns (appended to Arrow buffers, the plain
        # join in C: _take_plain) unless FLOWTAPE_HTTP_ROWS=python or it was not built (HttpRows, _expand_plain)
        self._rows_class = rows_factory()
        self.http_rows = self._rows_class()
        self._plain = self._expand_plain if self._rows_class is HttpRows else self._take_plain
        self.turns = IoTurns()  # which thread did each socket's I/O (http.tid)
        self.counters = collections.Counter({"l7.http_no_endpoint": 0, "l7.tls_plaintext_no_connection": 0})
        self.events = 0
        self.last_ts = 0
        self._ip = ebpf.IpText()
        self._unpack = self.header.struct.unpack_from
        self._data_offset = self.header.data_offset
        self._kind_offset = self.header.kind_offset
        self._layout = self.header.layout
        # which decoder runs is decided once per L7Decoder (and written into the manifest)
        self._decoder = decoder_in_use()
        self._new_http = connection_factory(self.stats, self.redaction)
        self._h2_decoder = _h2.decoder_in_use()
        self._new_h2 = _h2.connection_factory(self.stats, self.redaction)
        # TCP flows, their segment ordering and decoders: the same code as the pcap importer's
        self.streams = TcpStreams(self.stats, self.dns, self._new_http, self._on_http, self._on_dns, self._on_tls,
                                  http2=self._new_h2)  # h2c: the kernel follows "PRI " flows
        self.streams.after_http = self._after_http
        self.flows: dict[tuple, TcpFlow] = self.streams.flows  # by (client_ip, client_port, server_ip, server_port)
        self.flows_raw: dict[tuple, TcpFlow] = self.streams.flows_raw  # the same flows by the kernel's 16-byte addresses
        self._fast_http = _http1.feed_http if self._decoder == "c" and self._layout is not None else None
        # flows and streams whose decoder is the compiled HTTP/2 one are taken by feed_http too
        self._h2_type = _h2._http2.H2Connection if self._h2_decoder == "c" else None
        self._comm = ebpf.CommText()

    @property
    def http_decoder(self) -> str:
        """Which HTTP decoder and record loop run (the manifest's probes.l7.http_decoder): 'c' or why not."""
        if self._decoder == "c" and self._fast_http is None:
            return "c, records read in Python (struct l7_event's fields are not the sizes capture/decode/_http1.c reads)"
        if self._decoder == "c" and self._h2_decoder != "c":
            return f"c, HTTP/2 {self._h2_decoder}"
        return self._decoder

    # --- endpoints from the connections probe -------------------------------------------

    def add_endpoint(self, conn: Any) -> None:
        """A TCP endpoint the connections probe reports (a Conn or an Endpoint; at ESTABLISHED or
        CLOSE, whichever the probe sends). The same endpoint reported again replaces the first."""
        ident = (conn.skaddr, conn.ts_start)
        old = self.known.get(ident)
        if old is conn:
            return
        self.known[ident] = conn
        key = self._tuple(conn)
        for index, k in ((self.endpoints, key), (self.by_sk, conn.skaddr)):
            lst = index.setdefault(k, [])
            if old is not None and old in lst:
                lst[lst.index(old)] = conn
            else:
                lst.append(conn)

    def _read_live(self, now: int) -> None:
        if self.live_source is None or now - self._live_read_at < LIVE_LOOKUP_NS:
            return
        self._live_read_at = now
        for ev in self.live_source():
            if (ev["skaddr"], ev["ts_start_ns"]) not in self.known:
                self.add_endpoint(Endpoint.from_event(ev))

    @staticmethod
    def _alive_at(conns: list[Any], ts: int) -> list[Any]:
        return [c for c in conns if c.ts_start <= ts and (c.ts_end is None or ts <= c.ts_end)]

    def conn_id(self, c: Any) -> str:
        return self._endpoint_columns(c)[0]

    def _endpoint_columns(self, c: Any) -> tuple[str, tuple]:
        """An endpoint's conn_id and, for HTTPS rows, its connection columns (HttpRows.BASE_FIELDS):
        made once per endpoint, not per row. Its addresses are set when it is created; its cookie
        may come later, so a cached entry is checked against it. The cache holds the endpoint
        itself, so its id() cannot be reused while cached."""
        hit = self._endpoint_cols.get(id(c))
        if hit is not None and hit[0] is c and hit[1] == c.cookie:
            return hit[2]
        cid = f"{self.node}-c{c.cookie:x}" if c.cookie else f"{self.node}-s{c.skaddr:x}-{c.ts_start:x}"
        cols = (cid, (*self._tuple(c), True))
        self._endpoint_cols[id(c)] = (c, c.cookie, cols)
        return cols

    @staticmethod
    def _tuple(c: Any) -> tuple:
        local, remote = (c.local_ip, c.local_port), (c.remote_ip, c.remote_port)
        return (*local, *remote) if c.role == "client" else (*remote, *local)

    # --- input ----------------------------------------------------------------------------

    def feed(self, raw: bytes) -> None:
        """One ring-buffer record."""
        self.feed_batch((raw,))

    def feed_batch(self, raws: list[bytes] | tuple[bytes, ...]) -> None:
        """Ring-buffer records in arrival order: the recorder's hottest loop.

        HTTP segments that continue their direction of a followed flow, in order with nothing
        held, and SSL plaintext of a stream already followed (nearly all records) are taken by
        capture/decode/_http1.c's feed_http: the same steps as _feed_one's, without a Python call per
        record. It reads and sets TcpFlow.{dns,dirs,http,key,last_ts},
        SegmentOrder.{next,held,skip_to} and _SslStream.{skaddr,http,side,last_ts} by name (keep
        them). It stops at the first record it does not take, which _feed_one does."""
        self.events += len(raws)
        fast = self._fast_http
        kind_off = self._kind_offset
        i, n = 0, len(raws)
        while i < n:
            if fast is not None:
                i, self.last_ts, flow, from_client = fast(raws, i, self._layout, self.flows_raw, self.ssl, self.offset, self.last_ts,
                                                          self.pending.append, ROW_GRACE_NS, SKIP_BODY_MIN if self.skip_body else -1,
                                                          self._h2_type)
                if flow is not None:  # the record before i started a long body
                    self._skip_long_body(flow, from_client)
                    continue
                if i >= n:
                    break
            if raws[i][kind_off] == DNS_UDP:  # DNS datagrams come in runs: taken together, without a feed_http call each
                if self.dns_udp is not None:  # the run's end found in C too
                    i, self.last_ts = self.dns_udp.feed_ring(raws, i, n, self.offset, self.last_ts)
                    continue
                j = i + 1
                while j < n and raws[j][kind_off] == DNS_UDP:
                    j += 1
                self._dns_udp(raws, i, j)
                i = j
                continue
            self._feed_one(raws[i])
            i += 1

    def _dns_udp(self, raws: list[bytes] | tuple[bytes, ...], i: int, j: int) -> None:
        """Records i..j-1, all DNS_UDP: what _feed_one does for each, with the lookups made once."""
        unpack, ip, feed, offset, off = self._unpack, self._ip, self.dns.feed_udp, self.offset, self._data_offset
        rows = self.rows["dns"]
        last = self.last_ts
        for k in range(i, j):
            raw = raws[k]
            ts, _, _, _, _, _, cap, family, saddr, daddr, sport, dport, _, _, _, _, _ = unpack(raw)
            if ts > last:
                last = ts
            got = feed(ts + offset, raw[off : off + cap], ip(family, saddr), sport, ip(family, daddr), dport)
            if got:
                rows += got
        self.last_ts = last

    def _feed_one(self, raw: bytes) -> None:
        (ts, skaddr, ssl, length, seq, pid, cap, family, saddr, daddr, sport, dport, kind, tcp_flags, from_client,
         comm, tid) = self._unpack(raw)
        if ts > self.last_ts:
            self.last_ts = ts
        off = self._data_offset
        data = raw[off : off + cap]
        if kind == HTTP or kind == TCP_END or kind == DNS_TCP:
            # TCP flows are found by the raw addresses; their text is made once, with the flow
            rkey = (saddr, sport, daddr, dport) if from_client else (daddr, dport, saddr, sport)
            flow = self.flows_raw.get(rkey)
            if flow is None:
                if kind == TCP_END:
                    return
                src, dst = self._ip(family, saddr), self._ip(family, daddr)
                key = (src, sport, dst, dport) if from_client else (dst, dport, src, sport)
                flow = self.streams.open(key, dns=kind == DNS_TCP, first=data, from_client=bool(from_client))
                flow.raw_key, flow.family = rkey, family
                self.flows_raw[rkey] = flow
            flow.last_ts = ts
            if kind == TCP_END:
                self.streams.tcp_end(flow, bool(from_client), bool(tcp_flags & TCP_RST), ts + self.offset)
                return
            self.streams.push(flow, bool(from_client), ts + self.offset, seq, data, length)
            return
        if kind == IO_TURN:
            self.turns.add(skaddr, ts, tcp_flags == TURN_RX, tid, ssl)  # ssl: the goroutine (Go programs)
            return
        if kind == GO_SPAWN:
            self._go_spawn(ts, pid, data)
            return
        if kind == WIRE_TRACE:
            self._wire_trace(ts, family, saddr, daddr, sport, dport, data, tcp_flags)
            return
        if kind == SSL_FREE:
            st = self.ssl.get((pid, ssl))
            if st is not None:
                self._end_ssl((pid, ssl), st, ts)
            return
        if kind >= SSL_WRITE:
            self._ssl(ts, kind, skaddr, ssl, pid, self._comm(comm), data, length)
            return
        src, dst = self._ip(family, saddr), self._ip(family, daddr)
        if kind == DNS_UDP:
            if self.dns_udp is not None:
                self.dns_udp.feed_ring((raw,), 0, 1, self.offset, 0)
            else:
                self.rows["dns"] += self.dns.feed_udp(ts + self.offset, data, src, sport, dst, dport)
        elif kind == TLS_HELLO:
            self.streams.hello(ts + self.offset, (src, sport, dst, dport), data, length)

    def _wire_trace(self, ts: int, family: int, saddr: bytes, daddr: bytes, sport: int, dport: int, data: bytes, source: int) -> None:
        """A trace context a packet carried below HTTP (first seen in its flow's direction, or changed)."""
        if len(data) < 24 or source not in WIRE_SOURCES:
            return
        src, dst = self._ip(family, saddr), self._ip(family, daddr)
        trace, span, name = data[:16].hex(), data[16:24].hex(), WIRE_SOURCES[source]
        self.rows["wire_trace_context"].append({"ts": ts + self.offset, "src_ip": src, "src_port": sport, "dst_ip": dst, "dst_port": dport,
                                                "trace_id": trace, "span_id": span, "source": name})
        ends = tuple(sorted(((src, sport), (dst, dport))))
        self.wire.setdefault(ends, []).append((ts, trace, span, name))

    def _go_spawn(self, ts: int, pid: int, data: bytes) -> None:
        """Goroutine data[8:16] was created by data[0:8] at ts (bpf/l7.c: sent at its first socket turn)."""
        if len(data) < 16:
            return
        parent, child = struct.unpack_from("<QQ", data)
        self.rows["go_spawns"].append({"ts": ts + self.offset, "pid": pid, "parent_g": parent, "child_g": child})

    def wire_context(self, conn: Any) -> tuple:
        """(wire_trace_id, wire_span_id, wire_trace_source) first seen on an endpoint's packets while it
        lived (ConnectionTracker.wire), or nulls."""
        if not self.wire:
            return NO_WIRE  # the common case: no packet carried any
        seen = self.wire.get(tuple(sorted(((conn.local_ip, conn.local_port), (conn.remote_ip, conn.remote_port)))))
        if seen:
            for ts, trace, span, source in seen:
                # (a server endpoint starts when its handshake completed: its SYN came just before)
                if ts >= conn.ts_start - WIRE_SLACK_NS and (conn.ts_end is None or ts <= conn.ts_end):
                    return trace, span, source
        return NO_WIRE

    def _on_http(self, key: tuple, row: tuple) -> None:
        self.pending.append((self.last_ts + ROW_GRACE_NS, "http", key, row))

    def _on_dns(self, rows: list[dict]) -> None:
        self.rows["dns"] += rows

    def _on_tls(self, key: tuple, row: dict) -> None:
        self.pending.append((self.last_ts + ROW_GRACE_NS, "tls", key, row))

    def _after_http(self, flow: TcpFlow, from_client: bool) -> None:
        if self.skip_body is not None:
            self._skip_long_body(flow, from_client)

    def _skip_long_body(self, flow: TcpFlow, from_client: bool) -> None:
        """A long Content-Length body follows in this direction: ask the kernel not to send its segments."""
        remaining = flow.http.body_remaining(from_client)
        if remaining <= SKIP_BODY_MIN:
            return
        dirn = flow.dirs[from_client]
        if dirn.skip_to is None and dirn.next is not None:
            end = (dirn.next + remaining) % SEQ_MOD
            if self.skip_body is not None and self.skip_body(flow.family, flow.raw_key, from_client, end):
                dirn.skip_to = end
                self.stats.add("http_bodies_skipped_in_kernel")

    def _pend(self, table: str, join: Any, row: Any) -> None:
        self.pending.append((self.last_ts + ROW_GRACE_NS, table, join, row))

    def _ssl(self, ts: int, kind: int, skaddr: int, ssl: int, pid: int, comm: str, data: bytes, length: int) -> None:
        key = (pid, ssl)
        st = self.ssl.get(key)
        if st is not None and skaddr and st.skaddr and skaddr != st.skaddr:  # the SSL* was freed and reused
            self._end_ssl(key, st, ts)
            st = None
        if st is None:
            # The stream's side from what it starts with; the endpoint at its socket address only
            # when the bytes cannot tell (a stream joined mid-way). Not the other way round: the
            # endpoint list may still hold an earlier socket at the same address, closed but with
            # its CLOSE event not read yet (it is in the other ring buffer), whose role can be
            # the opposite one — that made a server stream "client" and lost it.
            side = None
            h2: Any = None
            if looks_like_request(data):
                side = "client" if kind == SSL_WRITE else "server"
            elif looks_like_response(data):
                side = "server" if kind == SSL_WRITE else "client"
            elif is_http2(data, True):  # the HTTP/2 client preface
                side = "client" if kind == SSL_WRITE else "server"
                h2 = self._new_h2()
            elif is_http2(data, False):  # the SETTINGS frame an HTTP/2 server sends first
                side = "server" if kind == SSL_WRITE else "client"
                h2 = self._new_h2()
            else:
                conns = self._alive_at(self.by_sk.get(skaddr, []), ts) if skaddr else []
                if conns:
                    side = conns[-1].role
                    if looks_like_frames(data):  # HTTP/2 joined mid-way: HPACK state unknown, rows marked
                        h2 = self._new_h2(at_start=False)
            if side is None:
                return  # not HTTP/1.x (or the middle of a stream whose start we missed)
            st = self.ssl[key] = _SslStream(skaddr, side, pid, comm, h2 if h2 is not None else self._new_http(), ts)
        elif skaddr and not st.skaddr:
            st.skaddr = skaddr
        st.last_ts = ts
        from_client = (kind == SSL_WRITE) == (st.side == "client")
        for row in st.http.feed_tuples(ts + self.offset, data, from_client, length):
            self._pend("http", st, row)

    def _end_ssl(self, key: tuple, st: _SslStream, ts: int) -> None:
        self.ssl.pop(key, None)
        for row in st.http.close_tuples(ts + self.offset):
            self._pend("http", st, row)

    # --- rows ------------------------------------------------------------------------------

    def _expand(self, table: str, join: Any, row: Any, give_up: bool) -> bool:
        """Write `row` joined to its connection's endpoints; False when they are not known yet
        (unless give_up: then it is counted as lost). tls rows are dicts; http rows are
        exchange tuples (http_pairing.EXCHANGE_FIELDS) joined by a flow's 4-tuple or an SSL stream."""
        if table == "tls":
            mono = row["ts"] - self.offset
            conns = [c for c in self._alive_at(self.endpoints.get(join, []), mono) if c.role == "client"]
            if conns:
                row["pid"], row["comm"] = conns[-1].pid, conns[-1].comm
            elif not give_up:
                return False  # the client may be local and not reported yet
            self.rows["tls"].append(row)
            return True
        mono = row[0] - self.offset  # ts_request
        if isinstance(join, _SslStream):
            conns = self._alive_at(self.by_sk.get(join.skaddr, []), mono) if join.skaddr else []
            if not conns:
                if give_up or not join.skaddr:  # no socket seen: nothing to wait for
                    self.counters["l7.tls_plaintext_no_connection"] += 1
                    return True
                return False
            # the newest socket at that address (an older one may not be known closed yet)
            c = conns[0] if len(conns) == 1 else max(conns, key=_TS_START)
            cid, base = self._endpoint_columns(c)
            http = self.http_rows
            resp = row[1]
            tid, g = self.turns.turn(join.skaddr, join.side == "server", mono, None if resp is None else resp - self.offset, c.ts_start)
            http.add(http.exchange(row, base), cid, join.pid, join.comm, join.side, tid, g)
            return True
        return self._expand_plain(join, row, give_up)

    def _expand_plain(self, join: tuple, row: tuple, give_up: bool) -> bool:
        """_expand of a plain HTTP exchange (joined by its flow's 4-tuple): one row per local endpoint
        alive at its request. The hottest part of take_rows, so _alive_at, conn_id, IoTurns.turn, HttpRows.exchange and HttpRows.add are
        written out here (the same steps; tests/test_l7_rows_inline.py holds them equal)."""
        mono = row[0] - self.offset  # ts_request
        conns = self.endpoints.get(join)
        if conns:
            conns = [c for c in conns if c.ts_start <= mono and (c.ts_end is None or mono <= c.ts_end)]
        if not conns:
            if give_up:
                self.counters["l7.http_no_endpoint"] += 1
                return True
            return False
        http = self.http_rows
        if len(row) > _NX:  # an HTTP/2 exchange (h2c)
            x = http.exchange(row, (*join, False))
        else:  # HttpRows.exchange written out
            x = len(http.exchanges)
            http.exchanges.append(row)
            base = (*join, False)
            b = http._base_ids.get(base)
            if b is None:
                b = http._base_ids[base] = len(http.bases)
                http.bases.append(base)
            http.base_of.append(b)
        resp = row[1]
        bound = mono + IoTurns.NO_RESPONSE_NS if resp is None else resp - self.offset
        by_sk = self.turns.by_sk
        cols = self._endpoint_cols
        of, side_ids, side_of = http.of, http._side_ids, http.side_of
        for c in conns:
            hit = cols.get(id(c))
            cid = hit[2][0] if hit is not None and hit[0] is c and hit[1] == c.cookie else self.conn_id(c)
            role = c.role
            tid = g = None
            entry = by_sk.get(c.skaddr) if c.skaddr else None
            if entry is not None:  # IoTurns.turn
                tss = entry[0]
                j = bisect.bisect_right(tss, bound) - 1
                if j >= 0 and tss[j] >= c.ts_start and entry[2][j] == (role == "server"):
                    tid = entry[1][j]
                    g = entry[3][j] or None
            if g is not None or http.goroutine is not None:  # HttpRows.add keeps the goroutine column (Go)
                http.add(x, cid, c.pid, c.comm, role, tid, g)
                continue
            # else HttpRows.add written out: no goroutine column yet
            of.append(x)
            key = (cid, c.pid, c.comm, role, tid)
            i = side_ids.get(key)
            if i is None:
                i = side_ids[key] = len(http.sides)
                http.sides.append(key)
            side_of.append(i)
        return True

    def _take_plain(self, join: tuple, row: tuple, give_up: bool) -> bool:
        """_expand_plain with its join and row appends in capture/decode/_http_rows.c (HttpColumns.take_plain:
        the same steps; tests/test_http_rows_c.py holds them equal)."""
        if self.http_rows.take_plain(join, row, self.endpoints.get(join), self.offset, IoTurns.NO_RESPONSE_NS, self.turns.by_sk,
                                     self._endpoint_cols, self.conn_id):
            return True
        if give_up:
            self.counters["l7.http_no_endpoint"] += 1
            return True
        return False

    def take_rows(self, now_mono: int | None = None, final: bool = False) -> dict[str, Any]:
        """Rows ready to be written: everything when final (after the last events were read).
        dns: a pyarrow Table of the dns schema (without node); tls: lists of row dicts; http: an
        http_rows.HttpColumns or HttpRows (iterate as row dicts; to_arrow)."""
        now = self.last_ts if now_mono is None else max(now_mono, self.last_ts)
        if final:
            for flow in list(self.flows.values()):
                self.streams.end(flow, now + self.offset)
            for key, st in list(self.ssl.items()):
                self._end_ssl(key, st, now)
            self.streams.expire_hellos(None, 0)
            self.rows["dns"] += self.dns.flush()
        else:
            self._housekeeping(now)
            self.rows["dns"] += self.dns.expire(now + self.offset)
        if final and self.live_source is not None:
            self._live_read_at = 0
            self._read_live(now)
        elif self.waiting or (self.pending and self.pending[0][0] <= now):
            self._read_live(now)
        # A row waits for its endpoints until the kernel's open endpoints were read after it
        # became ready (then an endpoint still unknown is not local, or started before recording).
        live_read = self._live_read_at
        sure = final or self.live_source is None
        still = []
        for item in self.waiting:
            if not self._expand(item[1], item[2], item[3], sure or live_read >= item[0] or now - item[0] > ENDPOINT_WAIT_NS):
                still.append(item)
        self.waiting = still
        pending, expand, plain = self.pending, self._expand, self._plain
        if plain == self._take_plain:  # the loop below in capture/decode/_http_rows.c, take_plain for each plain exchange
            self.counters["l7.http_no_endpoint"] += self.http_rows.take_pending(
                pending, now, final, sure, live_read, self.endpoints, self.offset, IoTurns.NO_RESPONSE_NS, self.turns.by_sk,
                self._endpoint_cols, self.conn_id, expand, self.waiting)
        while pending and (final or pending[0][0] <= now):
            item = pending.popleft()
            ready, kind, join, row = item
            if not (plain(join, row, sure or live_read >= ready) if kind == "http" and type(join) is tuple
                    else expand(kind, join, row, sure or live_read >= ready)):
                self.waiting.append(item)
        out: dict[str, Any] = {**self.rows, "http": self.http_rows}
        out["dns"] = self._dns_table(out["dns"], now, final)
        self.rows, self.http_rows = {"dns": [], "tls": [], "wire_trace_context": [], "go_spawns": []}, self._rows_class()
        return out

    def _dns_table(self, rows: list[dict], now: int, final: bool) -> pa.Table:
        """The dns rows of this take: the C pairer's (UDP), then the reference pairer's (TCP; UDP too under FLOWTAPE_DNS_DECODER=python)."""
        tcp = dns_table(rows)
        if self.dns_udp is None:
            return tcp
        udp = self.dns_udp.take(now + self.offset, final)
        return udp if not tcp.num_rows else tcp if not udp.num_rows else pa.concat_tables([udp, tcp])

    def _housekeeping(self, now: int) -> None:
        self.streams.release_held(now + self.offset)
        for flow in list(self.flows.values()):
            if now - flow.last_ts > IDLE_NS:
                self.streams.end(flow, now + self.offset)
        for key, st in list(self.ssl.items()):
            # The stream's own endpoint: the one alive at its first call. A socket address is
            # reused by later sockets, and the connections probe reports an endpoint only at its
            # CLOSE (or when the open ones are read), so by_sk may hold nothing but endpoints that
            # closed before this stream began; they must not end it.
            conns = self._alive_at(self.by_sk.get(st.skaddr, []), st.first_ts) if st.skaddr else []
            ended = conns and all(c.ts_end is not None and now - c.ts_end > ROW_GRACE_NS for c in conns)
            if ended or now - st.last_ts > IDLE_NS:
                self._end_ssl(key, st, now)
        self.streams.expire_hellos(now + self.offset, HELLO_KEEP_NS)
        self.turns.expire(now - TURN_KEEP_NS)
        if self.wire:
            for ends in [k for k, seen in self.wire.items() if seen[-1][0] < now - ENDPOINT_WAIT_NS]:
                del self.wire[ends]
        # closed endpoints stop being joinable after ENDPOINT_KEEP_NS
        for index in (self.endpoints, self.by_sk):
            for k in [k for k, conns in index.items() if all(c.ts_end is not None and now - c.ts_end > ENDPOINT_KEEP_NS for c in conns)]:
                del index[k]
        if self._endpoint_cols:
            joinable = {id(c) for conns in self.by_sk.values() for c in conns}
            self._endpoint_cols = {k: v for k, v in self._endpoint_cols.items() if k in joinable}

    def lost_counters(self) -> dict[str, int]:
        return {**self.stats.lost_counters(), **self.counters}


# --- the probe -----------------------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    import os

    v = os.environ.get(name, "")
    return int(v) if v.isdigit() else default


@dataclass
class L7Probe:
    """Load bpf/l7.c; attach its TC programs to the planned interfaces, its uprobes to libssl and
    to the crypto/tls of Go binaries."""

    interfaces: list[str] | None = None
    ssl_libs: list[str] | None = None  # None: the default libssl if present; [] : no uprobes
    go_tls: bool = True  # uprobes on the crypto/tls of every Go binary running (capture.live.gotls)
    goroutines: bool = True  # with go_tls: http.goroutine and go_spawns (bpf/l7.c FT_HAVE_GOROUTINES)
    log: Callable[[str], None] = lambda _msg: None
    ringbuf_pages: int = 4096  # 16 MiB
    flow_entries: int = 65536
    ssl_sock_entries: int = 65536
    sock_dir_entries: int = 65536  # TCP sockets whose last I/O direction is kept (http.tid)
    wire_trace: bool = True  # read IPv4 option 136 / TCP option 25 trace contexts (connections.wire_*)
    # go_spawns: a goroutine's spawn and its ancestors' up to this many links are sent at its first socket
    # turn; 0 sends every spawn (the reference: FLOWTAPE_GO_SPAWN_LINKS=0)
    go_spawn_links: int = field(default_factory=lambda: _env_int("FLOWTAPE_GO_SPAWN_LINKS", 8))
    go_parent_entries: int = 65536  # goroutines whose parent is kept (an LRU)
    bpf: Any = None
    missing: dict[str, str] = field(default_factory=dict)
    tc: TcAttachments | None = None
    ssl_attached: list[str] = field(default_factory=list)
    go: GoTlsAttacher | None = None
    _progs: dict[str, Any] = field(default_factory=dict)
    _defines: dict[str, Any] = field(default_factory=dict)
    _libs: list[str] = field(default_factory=list)
    _ring: Any = None  # ringbuf.open_ring's reader
    _on_batch: Any = None

    def check(self) -> None:
        from ...errors import UsageError

        libs = [str(p) for p in DEFAULT_SSL_LIBS if Path(p).exists()] if self.ssl_libs is None else list(self.ssl_libs)
        for lib in libs:
            if not Path(lib).is_file():
                raise UsageError(f"--ssl-lib: {lib} is not a file (give the path of a libssl.so or of a binary linking OpenSSL statically)")
        have_tp = all(ebpf.tracepoint_exists("sock", e) for e in ("sock_send_length", "sock_recv_length"))
        if libs and not have_tp:
            self.missing["tracepoint sock:sock_send_length"] = "HTTPS plaintext (its socket cannot be found)"
            libs = []
        if self.ssl_libs is None and not libs and have_tp:
            self.missing["libssl"] = f"HTTPS plaintext (no {DEFAULT_SSL_LIBS[0]}; point --ssl-lib at the OpenSSL in use)"
        self._libs = libs
        if self.go_tls and not have_tp:
            self.missing["tracepoint sock:sock_send_length"] = "HTTPS plaintext (its socket cannot be found)"
            self.go_tls = False
        if not have_tp:
            self.missing["tracepoint sock:sock_recv_length"] = "http.tid (which thread read or wrote a request)"
        self._defines = {"FT_L7_RINGBUF_PAGES": self.ringbuf_pages, "FT_L7_FLOW_ENTRIES": self.flow_entries,
                         "FT_SSL_SOCK_ENTRIES": self.ssl_sock_entries, "FT_HAVE_SSL": 1 if libs else None,
                         "FT_HAVE_GOTLS": 1 if self.go_tls else None, "FT_HAVE_TURNS": 1 if have_tp else None,
                         "FT_HAVE_GOROUTINES": 1 if self.go_tls and self.goroutines and have_tp and self._task_regs() else None,
                         "FT_SOCK_DIR_ENTRIES": self.sock_dir_entries, "FT_HAVE_WIRE_TRACE": 1 if self.wire_trace else None,
                         "FT_GO_SPAWN_LINKS": self.go_spawn_links, "FT_GO_PARENT_ENTRIES": self.go_parent_entries}

    def _task_regs(self) -> bool:
        """The kernel has what bpf/l7.c's goroutine probes need: BTF and Linux >= 5.15
        (bpf_get_current_task_btf, bpf_task_pt_regs: a syscall's user registers) and the
        sched:sched_process_exit tracepoint; else they are left out (the rest of the program
        loads as before), said in `missing`."""
        import os
        import re

        m = re.match(r"(\d+)\.(\d+)", os.uname().release)
        lacking = [what for what, ok in (("kernel BTF (/sys/kernel/btf/vmlinux)", Path("/sys/kernel/btf/vmlinux").exists()),
                                         ("Linux >= 5.15 (bpf_task_pt_regs)", bool(m) and (int(m.group(1)), int(m.group(2))) >= (5, 15)),
                                         ("tracepoint sched:sched_process_exit", ebpf.tracepoint_exists("sched", "sched_process_exit")))
                   if not ok]
        for what in lacking:
            self.missing[what] = "http.goroutine and go_spawns (the goroutine of a Go program's socket I/O)"
        return not lacking

    def source(self) -> str:
        if not self._defines:
            self.check()
        return ebpf.render_source("l7.c", self._defines)

    def load(self) -> None:
        bcc = ebpf.import_bcc()
        self.bpf = ebpf.compile_bpf(self.source())
        for name in ("ft_l7_ingress", "ft_l7_egress"):
            self._progs[name] = self.bpf.load_func(name.encode(), bcc.BPF.SCHED_CLS)

    def attach(self) -> list[Any]:
        """TC on every planned interface not attached yet (same plan as flows), uprobes once."""
        if self.tc is None:
            self.tc = TcAttachments(self.interfaces, self._progs["ft_l7_ingress"].fd, self._progs["ft_l7_egress"].fd,
                                    self._configure, self._forget)
        new = self.tc.attach()
        if self._libs and not self.ssl_attached:
            self._attach_ssl()
        if self.go_tls:
            if self.go is None:
                openssl = self._attach_ssl_lib if self._defines.get("FT_HAVE_SSL") else None
                self.go = GoTlsAttacher(self.bpf, self.log, openssl, self._bio_pids if openssl else None,
                                        goroutines=bool(self._defines.get("FT_HAVE_GOROUTINES")))
                self.go.seen_files(self.ssl_attached)  # --ssl-lib binaries have their uprobes already
            self.go.scan()
        return new

    def _configure(self, i: Any) -> None:
        table = self.bpf[b"ft_l7_ifaces"]
        table[ctypes.c_uint(i.ifindex)] = table.Leaf(i.l2_len, int(i.count_ingress), int(i.count_egress), 0)

    def _forget(self, ifindex: int) -> None:
        try:
            del self.bpf[b"ft_l7_ifaces"][ctypes.c_uint(ifindex)]
        except KeyError:
            pass

    def _attach_ssl(self) -> None:
        from ...errors import Unsupported

        for lib in self._libs:
            if not self._attach_ssl_lib(lib, lib):
                raise Unsupported(f"--ssl-lib {lib}: no SSL_write/SSL_read symbol to attach uprobes to (is it OpenSSL, and not stripped?)")

    def _attach_ssl_lib(self, path: str, name: str) -> bool:
        """OpenSSL uprobes on a libssl or an executable with OpenSSL linked in (`path`, shown as `name`)."""
        found = 0
        for sym, enter, ret in SSL_FUNCS:
            try:
                self.bpf.attach_uprobe(name=path.encode(), sym=sym.encode(), fn_name=enter.encode())
                self.bpf.attach_uretprobe(name=path.encode(), sym=sym.encode(), fn_name=ret.encode())
                found += 1
            except Exception:
                continue  # an old OpenSSL without the _ex forms
        try:
            self.bpf.attach_uprobe(name=path.encode(), sym=b"SSL_free", fn_name=b"ft_ssl_free_enter")
        except Exception:
            pass  # without it streams end when their connection does
        if found:
            self.ssl_attached.append(name)
        return bool(found)

    def _bio_pids(self, pids: set[int]) -> None:
        """The processes whose SSL_read takes its thread's last received socket (bpf/l7.c ft_bio_pids)."""
        table = self.bpf[b"ft_bio_pids"]
        for key in list(table.keys()):
            if key.value not in pids:
                del table[key]
        for pid in pids:
            table[ctypes.c_uint32(pid)] = ctypes.c_uint8(1)
        self.bpf[b"ft_bio_on"][ctypes.c_int(0)] = ctypes.c_int64(len(pids))

    def refresh(self) -> list[Any]:
        return self.tc.refresh() if self.tc is not None else []

    def scan_go(self) -> list[str]:
        """Attach to the Go binaries of processes started since the last scan."""
        return self.go.scan() if self.go is not None else []

    def open(self, on_batch: Callable[[list[bytes]], None]) -> type:
        """Open the ring buffer; records reach `on_batch` a read at a time. Returns bcc's ctypes
        class of struct l7_event (for the decoder)."""
        from bcc import table as bcc_table  # type: ignore[import-not-found]

        self._ring = ringbuf.open_ring(self.bpf, b"ft_l7_events", self.ringbuf_pages)
        self._on_batch = on_batch
        return bcc_table._get_event_class(self.bpf[b"ft_l7_events"])

    def poll(self, timeout_ms: int) -> None:
        if timeout_ms > 0:  # the kernel writes without waking us (BPF_RB_NO_WAKEUP): read in batches
            time.sleep(timeout_ms / 1000)
        batch = self._ring.read()
        if batch:
            self._on_batch(batch)

    def skip_body(self, family: int, raw_key: tuple, from_client: bool, skip_end: int) -> bool:
        """Tell the kernel that one direction of an HTTP flow is body up to `skip_end` (a TCP
        sequence number): bpf/l7.c stops sending segments wholly before it."""
        client, cport, server, sport = raw_key
        table = self.bpf[b"ft_l7_flows"]
        key = table.Key()
        src, dst, key.sport, key.dport = (client, server, cport, sport) if from_client else (server, client, sport, cport)
        ctypes.memmove(key.saddr, src, 16)
        ctypes.memmove(key.daddr, dst, 16)
        key.family = family
        try:
            value = table[key]
        except KeyError:
            return False  # the flow is no longer followed
        value.skip_end, value.skipping = skip_end, 1
        table[key] = value
        return True

    def counters(self) -> dict[str, int]:
        return ebpf.percpu_counters(self.bpf[b"ft_l7_ctr"], KERNEL_COUNTERS)

    def programs(self) -> dict[str, int]:
        return {(name.decode() if isinstance(name, bytes) else name): fn.fd for name, fn in self.bpf.funcs.items()}

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        ebpf.release(self.tc.links if self.tc is not None else {}, self.bpf)
        self.bpf = None


def monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)
