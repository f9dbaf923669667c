"""The importer's per-packet loop, in Python: the reference of the compiled loop (capture/importers/_pcap.c).

    Capture.feed(loop) -> loop.run_pcap / run_pcapng / packet (pcap_reader.RecordLoop)
        -> packets.parse -> flows (per interval), ConnTable (TCP state), bpf/l7.c's choice of bytes
        -> the sink (capture/importers/pcap.py's PcapSink): l7_open, l7_data, l7_fin, hello,
           dns_udp, conn_end, flows, housekeeping

Both loops make the same calls on the sink with the same arguments, in the same order for each
connection; tests/test_import_pcap.py holds _pcap.c to this file on real and generated captures.
This one runs when _pcap.c was not built or FLOWTAPE_PCAP_LOOP=python.

Per packet (`packet`):
 1. parse; a frame that is no IP packet is counted by kind and skipped;
 2. the first packet starts the first flow interval and the housekeeping clock; a packet at or
    after the interval's end flushes the flows first, one at or after the housekeeping time runs it
    (connections closed or unanswered long enough end; the sink's own timers);
 3. TCP: the connection (ConnTable), its state (Conn.packet), MSS options, and for flows a TSO/GRO
    super-packet counts as ceil(payload / (peer MSS - options)) packets, the bytes of their headers
    added, as the recorder counts gso_segs; then the L7 side (`_l7`); UDP to or from a DNS port:
    the payload to the sink;
 4. the flow (file, interface, ifindex, direction, MACs, addresses, protocol, ports) adds the packet.

The L7 side is bpf/l7.c's in Python: a connection not yet followed is looked at on each payload
segment (tcp_streams.follows); an HTTP or DNS flow sends every payload segment except those wholly
inside a body the sink asked to skip (`skip`, as the recorder writes skip_end into the kernel),
and its FIN/RST; a TLS flow sends the client's bytes up to the ClientHello's length.
"""

from __future__ import annotations

import collections
from typing import Any

from ..decode.tcp_streams import TLS_HELLO, follows, hello_budget
from . import packets as P
from .pcap_reader import EPB_INBOUND, EPB_OUTBOUND, RecordLoop
from .tcp_conns import FIN, RST, SYN, Conn, ConnTable

HOUSEKEEP_NS = 1_000_000_000  # capture time between housekeeping passes
DUP_WINDOW_NS = 2_000_000  # a packet seen again on another interface within this long is the same packet
DUP_RECENT = 1024  # packets remembered for that (the latest ones)
DUP_BYTES = 128  # bytes of the IP packet compared
SEQ_MOD = 1 << 32
HALF = 1 << 31
PORTED = (6, 17, 132)

COUNTERS = ("packets", "bytes_ip", "snaplen_cut", "transport_header_cut", "not_ip", "ip_header_cut", "unknown_link_type",
            "gso_packets_split", "connections_started_before_capture", "duplicate_sightings")


class PacketLoop(RecordLoop):
    """The per-packet loop (see the module doc); `links` are the current file's interfaces' link types."""

    def __init__(self, sink: Any, interval_ns: int, dns_ports: tuple[int, ...] = (53,)) -> None:
        self.sink = sink
        self.interval_ns = interval_ns
        self.dns_ports = frozenset(dns_ports)
        self.conns = ConnTable(sink.conn_end)
        self.flows: dict[tuple, list[int]] = {}
        self.bucket_end: int | None = None
        self.next_house: int | None = None
        self.file_no = -1
        self.links: list[int] = []
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.file_first: int | None = None  # the current file's earliest and latest packet
        self.file_last: int | None = None
        self.dedupe = False
        self.recent: collections.deque = collections.deque(maxlen=DUP_RECENT)  # (ts, interface, fingerprint)

    # --- set-up -----------------------------------------------------------------------------

    def start_file(self, file_no: int) -> None:
        """Records that follow are of file `file_no` (flows keep files' interfaces apart)."""
        self.file_no = file_no
        self.links = []
        self.file_first = self.file_last = None

    def set_links(self, links: list[int]) -> None:
        """The link type of each interface of the current file (a pcapng file's grow as it is read).
        A capture of several interfaces (`tcpdump -i any`: Linux cooked; pcapng with more than one)
        sees a packet once per interface it crossed (pod veth, bridge, NIC): the recorder counts it
        once per node, so does this loop (`_duplicate`)."""
        self.links = list(links)
        self.dedupe = len(links) > 1 or any(link in (P.SLL, P.SLL2) for link in links)

    def skip(self, cid: int, l7_from_client: bool, seq_end: int) -> None:
        """The sink read a head whose body ends at seq_end: segments wholly before it are not sent."""
        conn = self.conns.by_id.get(cid)
        if conn is not None:
            conn.skip[l7_from_client] = seq_end

    # --- records ------------------------------------------------------------------------------

    def packet(self, ts: int, ifc: int, frame: bytes, orig_len: int, direction: int) -> None:
        counts = self.counts
        if ifc >= len(self.links):
            counts["unknown_link_type"] += 1
            return
        p = P.parse(self.links[ifc], frame, orig_len)
        if p.__class__ is str:
            counts[p] += 1  # type: ignore[index]
            return
        (family, src, dst, proto, ip_len, l4off, l3_end, sport, dport, seq, _ack, flags, poff, paylen, macs, cooked_dir,
         ifindex, l4_cut, _frag) = p
        link = self.links[ifc]
        if self.dedupe and self._duplicate(ts, ifindex if link == P.SLL2 else None if link == P.SLL else ifc, frame,
                                           l3_end - ip_len, l3_end, family):
            counts["duplicate_sightings"] += 1
            return
        counts["packets"] += 1
        counts["bytes_ip"] += ip_len
        if self.file_first is None or ts < self.file_first:
            self.file_first = ts
        if self.file_last is None or ts > self.file_last:
            self.file_last = ts
        if self.first_ns is None:
            self.first_ns = self.last_ns = ts
            self.bucket_end = ts + self.interval_ns
            self.next_house = ts + HOUSEKEEP_NS
        elif ts > self.last_ns:
            self.last_ns = ts
        elif ts < self.first_ns:
            self.first_ns = ts
        if ts >= self.bucket_end:
            self.flush_flows()
            end = self.bucket_end + self.interval_ns
            self.bucket_end = ts + self.interval_ns if ts >= end else end
        if ts >= self.next_house:
            self.conns.housekeeping(ts)
            self.sink.housekeeping(ts)
            self.next_house = ts + HOUSEKEEP_NS
        if len(frame) < l3_end:
            counts["snaplen_cut"] += 1
        if l4_cut:
            counts["transport_header_cut"] += 1
        n_pk, n_b = 1, ip_len
        if proto == 6 and sport is not None:
            n_pk, n_b = self._tcp(ts, src, sport, dst, dport, seq, flags, l4off, poff, paylen, l3_end, ip_len, frame)
        elif proto == 17 and paylen and sport is not None and (sport in self.dns_ports or dport in self.dns_ports):
            self.sink.dns_udp(ts, src, sport, dst, dport, frame[poff:l3_end])
        dirn = ("ingress" if direction == EPB_INBOUND else "egress" if direction == EPB_OUTBOUND else cooked_dir) if direction else cooked_dir
        ported = proto in PORTED and sport is not None
        key = (self.file_no, ifc, ifindex, dirn, macs, src, dst, proto, sport if ported else None, dport if ported else None)
        f = self.flows.get(key)
        if f is None:
            self.flows[key] = [n_pk, n_b, ts, ts, flags or 0]
        else:
            f[0] += n_pk
            f[1] += n_b
            if ts < f[2]:
                f[2] = ts
            if ts > f[3]:
                f[3] = ts
            if flags:
                f[4] |= flags

    def _duplicate(self, ts: int, iface: int | None, frame: bytes, ipoff: int, l3_end: int, family: int) -> bool:
        """Whether this packet was seen within DUP_WINDOW_NS on another interface (any interface for
        Linux cooked v1, which names none): the same first DUP_BYTES bytes of the IP packet, hop
        limit and IPv4 header checksum aside (a router between the two changed them)."""
        fp = bytearray(frame[ipoff:min(len(frame), l3_end, ipoff + DUP_BYTES)])
        if family == 4:
            if len(fp) > 8:
                fp[8] = 0  # TTL
            if len(fp) >= 12:
                fp[10] = fp[11] = 0  # header checksum
        elif len(fp) > 7:
            fp[7] = 0  # hop limit
        fp_b = bytes(fp)
        anyif = iface is None
        for t0, i0, f0 in reversed(self.recent):
            if ts - t0 > DUP_WINDOW_NS:
                break
            if f0 == fp_b and abs(ts - t0) <= DUP_WINDOW_NS and (anyif or i0 != iface):
                return True
        self.recent.append((ts, iface, fp_b))
        return False

    def _tcp(self, ts: int, src: bytes, sport: int, dst: bytes, dport: int, seq: int, flags: int, l4off: int, poff: int,
             paylen: int, l3_end: int, ip_len: int, frame: bytes) -> tuple[int, int]:
        """One TCP segment: its connection's state, then its L7 bytes. Returns (wire packets, bytes) for flows."""
        key, rev = (src, sport, dst, dport), (dst, dport, src, sport)
        hit = self.conns.lookup(key, rev, flags, seq, ts)
        if hit is None:
            return 1, ip_len
        conn, from_client = hit
        d, other = (conn.c2s, conn.s2c) if from_client else (conn.s2c, conn.c2s)
        if flags & SYN:
            mss = P.tcp_mss(frame, l4off, poff)
            if mss:
                d.mss = mss
        conn.packet(ts, from_client, seq, flags, paylen)
        n_pk, n_b = 1, ip_len
        if paylen and other.mss is not None:
            seg = other.mss - (poff - l4off - 20)  # the peer's MSS less this segment's TCP options
            if 0 < seg < paylen:
                n_pk = -(-paylen // seg)
                n_b = ip_len + (n_pk - 1) * (poff - (l3_end - ip_len))
                self.counts["gso_packets_split"] += 1
        if paylen or flags & (FIN | RST):
            self._l7(conn, from_client, ts, seq, flags, frame, poff, paylen, l3_end, sport, dport)
        self.conns.after(conn, key if from_client else rev)
        return n_pk, n_b

    def _l7(self, conn: Conn, from_client: bool, ts: int, seq: int, flags: int, frame: bytes, poff: int, paylen: int,
            l3_end: int, sport: int, dport: int) -> None:
        """The segment's bytes to the sink, as bpf/l7.c hands them to the recorder."""
        kind = conn.l7
        if kind is None:
            if not paylen:
                return
            data = frame[poff:l3_end]
            f = follows(data, sport, dport, self.dns_ports)
            if f is None:
                return
            kind, sender_is_client = f
            conn.l7 = kind
            conn.l7_dir = from_client == sender_is_client
            conn.l7_budget = hello_budget(data) if kind == TLS_HELLO else 0
            conn.l7_fins = 0
            conn.skip = [None, None]
            (c, s) = (conn.client, conn.server) if conn.l7_dir else (conn.server, conn.client)
            self.sink.l7_open(conn.id, kind, c[0], c[1], s[0], s[1], data)
        l7c = conn.l7_dir == from_client
        end = flags & (FIN | RST)
        if kind == TLS_HELLO:
            if l7c and paylen:
                budget = conn.l7_budget
                self.sink.hello(conn.id, ts, frame[poff:min(l3_end, poff + budget)], paylen)
                conn.l7_budget = budget - paylen
                if conn.l7_budget <= 0 or end:
                    conn.l7 = None
            elif l7c and end:
                conn.l7 = None
            return
        if paylen:
            st = conn.skip[l7c]
            if end or st is None or not paylen < (st - seq) % SEQ_MOD < HALF:
                conn.skip[l7c] = None  # this segment reaches the body's end (or ends the flow): sent
                if not self.sink.l7_data(conn.id, l7c, ts, seq, frame[poff:l3_end], paylen):
                    conn.l7 = None  # the sink ended the flow (idle)
                    return
        if end:
            conn.l7_fins |= 4 if flags & RST else (2 if l7c else 1)
            self.sink.l7_fin(conn.id, l7c, bool(flags & RST), ts)
            if conn.l7_fins & 4 or conn.l7_fins == 3:
                conn.l7 = None

    # --- flows and the end ----------------------------------------------------------------------

    def flush_flows(self) -> None:
        """Hand the interval's flows to the sink (as columns) and start the next."""
        if not self.flows:
            return
        items, self.flows = self.flows, {}
        cols: list[list] = [[] for _ in range(15)]
        for (file_no, ifc, ifindex, dirn, macs, src, dst, proto, sport, dport), (pk, b, t0, t1, fl) in items.items():
            for i, v in enumerate((t0, t1, file_no, ifc, ifindex, dirn, macs, src, dst, proto, sport, dport, pk, b,
                                   fl if proto == 6 else None)):
                cols[i].append(v)
        self.sink.flows(*cols)

    def finish(self) -> None:
        """The end of the input: the flows and every connection go to the sink."""
        self.flush_flows()
        self.conns.finish(self.last_ns if self.last_ns is not None else 0)

    def counters(self) -> dict[str, int]:
        return {**self.counts, "connections_started_before_capture": self.conns.started_before,
                "file_first_ns": self.file_first, "file_last_ns": self.file_last}
