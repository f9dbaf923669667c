"""The TCP flows an L7 decoder reads, shared by the live recorder (capture/live/l7.py) and the pcap
importer (capture/importers/pcap.py): which flows are followed, segment ordering, and the hand-over
of ordered bytes to the HTTP and DNS-over-TCP decoders and of client bytes to the ClientHello reader.

    segments (ts, seq, data, length) --SegmentOrder per direction--> HTTP/1 decoder -> on_http(key, exchange)
                                                                  -> DnsPairer.feed_tcp -> on_dns(rows)
    client bytes of a TLS flow --ClientHelloReader--> on_tls(key, row)

`follows` is bpf/l7.c's choice of flows written in Python (the kernel makes it for the recorder,
the importer calls this): DNS on port 53, a flow whose payload starts with a request method
(HTTP/1), a client segment starting a ClientHello record. Timestamps handed in are wall-clock ns;
`TcpFlow.last_ts` is the caller's own clock (the recorder's is kernel monotonic time).

HTTP/2: `http2` (a factory of connection decoders with the HTTP/1 decoder's interface:
feed_tuples, close_tuples, body_remaining) receives the flows whose first client bytes are the
HTTP/2 preface. Without it (today) they go to the HTTP/1 decoder, which counts them as
`http2_connections` and writes no rows.
"""

from __future__ import annotations

from typing import Any, Callable

from .dns_pairing import DnsPairer
from .http_pairing import is_http2
from .stats import DecodeStats
from .tcp_order import HOLD_NS, SEQ_MOD, SegmentOrder
from .tls import ClientHelloReader, tls_row

# What a flow is followed for (bpf/events.h's FT_L7_* kinds of TCP)
HTTP, DNS_TCP, TLS_HELLO = "http", "dns", "tls"
TCP_FIN, TCP_RST = 0x01, 0x04
METHOD_PREFIXES = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC", b"PRI ")  # bpf/l7.c is_method(); PRI: h2c
HELLO_CAP = 2048  # bpf/events.h FT_L7_DATA_MAX: ClientHello bytes the kernel sends at most


def follows(data: bytes, sport: int, dport: int, dns_ports: frozenset[int] | tuple[int, ...] = (53,)) -> tuple[str, bool] | None:
    """Whether bpf/l7.c follows a TCP flow of which this payload segment (sport -> dport) is the
    first it looks at: (kind, the segment is from the client), or None. The kernel looks at every
    payload segment of a flow it does not follow yet, so a caller asks again at the next one.
    dns_ports: the kernel's is 53; an importer may be told of others."""
    if sport in dns_ports or dport in dns_ports:
        return DNS_TCP, dport in dns_ports
    if len(data) >= 6 and data[0] == 0x16 and data[1] == 3 and data[5] == 1:
        return TLS_HELLO, True
    if len(data) >= 4 and data[:4] in METHOD_PREFIXES:
        return HTTP, True
    return None


def hello_budget(data: bytes) -> int:
    """ClientHello bytes the kernel sends for a flow starting with `data` (bpf/l7.c: the first
    record's length and header, at most FT_L7_DATA_MAX)."""
    return min(5 + ((data[3] << 8) | data[4]), HELLO_CAP)


class TcpFlow:
    """One TCP flow followed for HTTP or DNS. capture/decode/_http1.c's feed_http reads and sets
    dns, dirs, http, key and last_ts by name (keep them)."""

    __slots__ = ("key", "raw_key", "family", "http", "dirs", "fins", "last_ts", "dns")

    def __init__(self, key: tuple, http: Any, dns: bool = False) -> None:
        self.key = key  # (client_ip, client_port, server_ip, server_port)
        self.raw_key: tuple | None = None  # the recorder's key of the same flow (kernel addresses)
        self.family = 0  # the kernel's family value (4 or 6) for raw_key
        self.http = http
        self.dirs = (SegmentOrder(), SegmentOrder())  # [0] server->client, [1] client->server
        self.fins = 0  # 1: the server's FIN seen, 2: the client's, 4: a RST
        self.last_ts = 0
        self.dns = dns


class TcpStreams:
    """The followed TCP flows of one recorder or import, by (client_ip, client_port, server_ip, server_port).

    on_http(key, exchange): an HTTP exchange tuple (http_pairing.EXCHANGE_FIELDS) ended on flow `key`;
    on_dns(rows): dns rows completed; on_tls(key, row): a ClientHello read (a tls row without node);
    after_http(flow, from_client): called after HTTP bytes were handed over (the recorder asks the
    kernel to skip long bodies there)."""

    def __init__(self, stats: DecodeStats, dns: DnsPairer, new_http: Callable[[], Any],
                 on_http: Callable[[tuple, tuple], None], on_dns: Callable[[list[dict]], None],
                 on_tls: Callable[[tuple, dict], None], http2: Callable[[], Any] | None = None) -> None:
        self.stats = stats
        self.dns = dns
        self.new_http = new_http
        self.http2 = http2  # the HTTP/2 decoder's factory, once capture/decode has one (see the module doc)
        self.on_http, self.on_dns, self.on_tls = on_http, on_dns, on_tls
        self.after_http: Callable[[TcpFlow, bool], None] | None = None
        self.flows: dict[tuple, TcpFlow] = {}
        self.flows_raw: dict[tuple, TcpFlow] = {}  # the recorder's second index of the same flows (TcpFlow.raw_key)
        self.hellos: dict[tuple, ClientHelloReader] = {}

    # --- flows -----------------------------------------------------------------------------

    def open(self, key: tuple, dns: bool = False, first: bytes = b"", from_client: bool = True) -> TcpFlow:
        """The flow `key`, made when new: DNS over TCP, else HTTP (HTTP/2 when `first`, the first
        payload seen, is its preface and an HTTP/2 decoder is installed)."""
        flow = self.flows.get(key)
        if flow is None:
            if dns:
                flow = TcpFlow(key, None, dns=True)
            elif self.http2 is not None and first and is_http2(first, from_client):
                flow = TcpFlow(key, self.http2())
            else:
                flow = TcpFlow(key, self.new_http())
            self.flows[key] = flow
        return flow

    def push(self, flow: TcpFlow, from_client: bool, wall: int, seq: int, data: bytes, length: int) -> None:
        """One payload segment of a direction of `flow`, in any order."""
        dirn = flow.dirs[from_client]
        if dirn.next == seq and not dirn.held and dirn.skip_to is None:
            # the common case, in order with nothing held: SegmentOrder.push's first branch, inline
            dirn.next = (seq + length) % SEQ_MOD
            self.segments(flow, from_client, ((wall, data, length),))
            return
        if dirn.next is None and not flow.dns:
            # the direction's first segment: the decoder counts its bytes from here, which
            # turns a head's stream offset into its TCP sequence number (request_seq/response_seq)
            set_base = getattr(flow.http, "set_seq_base", None)
            if set_base is not None:
                set_base(from_client, seq)
        segs: list = []
        dirn.push(wall, seq, data, length, segs)
        if segs:
            self.segments(flow, from_client, segs)

    def segments(self, flow: TcpFlow, from_client: bool, segs: list | tuple) -> None:
        """Hand one direction's ordered segments (wall ts, data, length) to the flow's decoder."""
        if flow.dns:
            c, s = flow.key[:2], flow.key[2:]
            (src, sport), (dst, dport) = (c, s) if from_client else (s, c)
            for wall, data, length in segs:
                rows = self.dns.feed_tcp(wall, data, src, sport, dst, dport, length)
                if rows:
                    self.on_dns(rows)
            return
        http, key, on_http = flow.http, flow.key, self.on_http
        for wall, data, length in segs:
            for row in http.feed_tuples(wall, data, from_client, length):
                on_http(key, row)
        if self.after_http is not None:
            self.after_http(flow, from_client)

    def tcp_end(self, flow: TcpFlow, from_client: bool, rst: bool, wall: int) -> bool:
        """A FIN or RST of `flow`: ends it after a RST or both FINs. True when it ended."""
        flow.fins |= 4 if rst else (2 if from_client else 1)
        if flow.fins & 4 or flow.fins == 3:
            self.end(flow, wall)
            return True
        return False

    def end(self, flow: TcpFlow, wall: int) -> None:
        """The flow is over: what its directions still hold is released and its decoder closed."""
        self.flows.pop(flow.key, None)
        if flow.raw_key is not None:
            self.flows_raw.pop(flow.raw_key, None)
        for d, dirn in enumerate(flow.dirs):
            if dirn.held:
                segs: list = []
                dirn.release(segs)
                self.segments(flow, bool(d), segs)
        if flow.dns:
            self.dns.close_tcp(*flow.key)
        else:
            for row in flow.http.close_tuples(wall):
                self.on_http(flow.key, row)

    def release_held(self, now_wall: int, hold_ns: int = HOLD_NS) -> None:
        """Segments held longer than hold_ns for a gap before them: the gap is declared unseen."""
        for flow in list(self.flows.values()):
            for d, dirn in enumerate(flow.dirs):
                if dirn.held and now_wall - dirn.held_since > hold_ns:
                    segs: list = []
                    dirn.release(segs)
                    self.segments(flow, bool(d), segs)

    # --- ClientHellos --------------------------------------------------------------------

    def hello(self, wall: int, key: tuple, data: bytes, length: int) -> None:
        """Client bytes of a TLS flow `key`, in the order they came."""
        reader = self.hellos.get(key)
        if reader is None:
            reader = self.hellos[key] = ClientHelloReader(self.stats)
        hello = reader.feed(wall, data, length)
        if reader.done:
            del self.hellos[key]
        if hello is not None:
            self.on_tls(key, tls_row(reader.ts_ns, hello, *key))

    def expire_hellos(self, now_wall: int | None, keep_ns: int) -> None:
        """Decode what ClientHellos older than keep_ns have (all of them when now_wall is None)."""
        for key, reader in list(self.hellos.items()):
            if now_wall is None or (reader.ts_ns is not None and now_wall - reader.ts_ns > keep_ns):
                hello = reader.finish()
                if hello is not None:
                    self.on_tls(key, tls_row(reader.ts_ns, hello, *key))
                del self.hellos[key]

    def finish(self, wall: int) -> None:
        """The end of the input: every flow ends and every ClientHello is decoded."""
        for flow in list(self.flows.values()):
            self.end(flow, wall)
        self.expire_hellos(None, 0)
