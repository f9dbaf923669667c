"""TCP connections from the packets of a capture: the `connections` table of an imported tape.

A capture sees both ends of a connection on the wire, so each connection gives the rows the
recorder writes when both processes are on its node: a client row and a server row (the
analysis pairs them and counts the connection once), each with its own direction's counters.
A connection that never completed its handshake (refused, timed out) has a client row only, as
the server had no socket.

Per direction, bytes are counted in sequence space: the payload between the first data byte
(ISN + 1, or the first sequence number seen when the capture joined mid-way) and the highest
byte sent, so retransmitted bytes count once and bytes the capture missed (dropped by tcpdump)
still count. A segment that carries nothing new (all of it at or below the highest byte seen) is
a retransmission, except keep-alives (one byte or none, just below it): tshark calls these
retransmissions, fast retransmissions, spurious retransmissions or out-of-order segments.

The life of a connection:
- SYN (no ACK) opens it; its first SYN is ts_start of the client row, the SYN-ACK (minus that
  SYN) its connect_latency_ns, and the ACK of the SYN-ACK ends the handshake: ts_start of the
  server row, and srtt_us = that ACK minus the most recent SYN (tshark's tcp.analysis.initial_rtt);
- a RST before a SYN-ACK: 'refused'; a RST later (before both FINs): 'reset'; both FINs: 'closed';
- SYNs never answered: 'timeout' once the capture went on past the client's next retry time
  (3 s, or 2.5 times the last gap between its SYNs) without an answer, else still 'open';
- a connection whose SYN the capture did not see starts at its first packet (no latency, no
  srtt); its server is the endpoint of the lower port (the SYN-ACK's sender when one is seen);
- anything still open when the capture ends: 'open', ts_end null, counters as far as seen.
ts_end is the connection's last packet once it closed (the final ACK of a FIN exchange).
"""

from __future__ import annotations

from typing import Callable

SEQ_MOD = 1 << 32
HALF = 1 << 31
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
CLOSE_GRACE_NS = 2_000_000_000  # a closed connection still takes its late packets (final ACK, duplicate RSTs)
SYN_RETRY_NS = 3_000_000_000  # an unanswered SYN with no retry within this long was given up (timeout)
SYN_EXPIRE_NS = 30_000_000_000  # unanswered connections are written after this long (SYN scans stay bounded)

COLUMNS = ("conn_id", "ts_start", "ts_end", "role", "client_ip", "client_port", "server_ip", "server_port", "pid", "comm",
           "cgroup_id", "container_id", "bytes_sent", "bytes_received", "segs_sent", "segs_received", "srtt_us",
           "retransmits", "connect_latency_ns", "close_state")


class Direction:
    """One direction's sequence space: `base` is its first data byte's sequence number, `high`
    the payload bytes from base to the highest byte seen (64-bit: streams may pass 4 GiB)."""

    __slots__ = ("base", "high", "segs", "retrans", "fin", "mss")

    def __init__(self) -> None:
        self.base: int | None = None
        self.high = 0
        self.segs = 0
        self.retrans = 0
        self.fin = False
        self.mss: int | None = None  # the MSS option this direction's sender announced in its SYN

    def data(self, seq: int, paylen: int) -> bool:
        """A segment carrying paylen payload bytes at seq: True when it brings bytes not seen before."""
        if self.base is None:
            self.base = seq
        high = self.high
        delta = (seq - self.base - high) % SEQ_MOD
        start = high + delta if delta < HALF else high - (SEQ_MOD - delta)
        end = start + paylen
        if end > high:
            if start < high:
                self.retrans += 1  # partly old: a retransmission that also carries new bytes
            self.high = end
            return True
        if not (paylen <= 1 and start == high - 1):  # a keep-alive sits one byte below the highest
            self.retrans += 1
        return False


STATE_FIELDS = ("id", "client_addr", "client_port", "server_addr", "server_port", "ts_first", "ts_syn", "ts_prev_syn",
                "ts_synack", "ts_est", "ts_last", "closed", "rst", "from_syn",
                "c2s_high", "c2s_segs", "c2s_retrans", "c2s_fin", "s2c_high", "s2c_segs", "s2c_retrans", "s2c_fin")
"""What a packet loop hands over when a connection ends (Conn.state(); the compiled loop builds the same tuple)."""


class Conn:
    """One TCP connection (both directions)."""

    __slots__ = ("id", "client", "server", "c2s", "s2c", "ts_first", "ts_syn", "ts_prev_syn", "ts_synack", "ts_est",
                 "ts_last", "isn", "rst", "closed", "from_syn", "l7", "l7_dir", "l7_budget", "l7_fins", "skip")

    def __init__(self, cid: int, client: tuple, server: tuple, ts: int, from_syn: bool) -> None:
        self.id = cid
        self.client, self.server = client, server  # (address bytes, port)
        self.c2s, self.s2c = Direction(), Direction()
        self.ts_first = ts
        self.ts_syn: int | None = None  # the most recent SYN
        self.ts_prev_syn: int | None = None
        self.ts_synack: int | None = None
        self.ts_est: int | None = None  # the ACK that completed the handshake
        self.ts_last = ts
        self.isn: int | None = None
        self.rst = False
        self.closed = False
        self.from_syn = from_syn
        # The L7 side, as bpf/l7.c keeps it per flow: what the decoders follow it as (a
        # tcp_streams kind) once decided, which TCP direction (packet()'s from_client) the L7
        # client sends in, ClientHello bytes still to send, FIN/RST seen (1 server, 2 client,
        # 4 RST), and per L7 direction the sequence number a skipped body ends at.
        self.l7: str | None = None
        self.l7_dir = True
        self.l7_budget = 0
        self.l7_fins = 0
        self.skip: list[int | None] = [None, None]

    def packet(self, ts: int, from_client: bool, seq: int, flags: int, paylen: int) -> None:
        """Account one segment of this connection."""
        d = self.c2s if from_client else self.s2c
        d.segs += 1
        r0 = d.retrans
        self.ts_last = ts
        if flags & SYN:
            if flags & ACK:
                if self.ts_synack is None:
                    self.ts_synack = ts
                    d.base = (seq + 1) % SEQ_MOD
                else:
                    d.retrans += 1
            else:
                if self.ts_syn is not None:
                    d.retrans += 1
                self.ts_prev_syn, self.ts_syn = self.ts_syn, ts
                if d.base is None:
                    d.base = (seq + 1) % SEQ_MOD
                    self.isn = seq
        elif from_client and self.ts_est is None and self.ts_synack is not None and flags & ACK:
            self.ts_est = ts
        if paylen:
            d.data(seq if not flags & SYN else (seq + 1) % SEQ_MOD, paylen)
        elif flags & FIN:
            if d.fin and d.base is not None and (seq - d.base) % SEQ_MOD <= d.high:
                d.retrans += 1  # the FIN again
        if d.retrans > r0 + 1:
            d.retrans = r0 + 1  # a segment is retransmitted once, whatever it carries again (a SYN with data)
        if flags & FIN:
            d.fin = True
        if flags & RST:
            self.rst = True
        if not self.closed and (self.rst or (self.c2s.fin and self.s2c.fin)):
            self.closed = True

    def state(self) -> tuple:
        """The connection as STATE_FIELDS."""
        c, s = self.c2s, self.s2c
        return (self.id, *self.client, *self.server, self.ts_first, self.ts_syn, self.ts_prev_syn, self.ts_synack,
                self.ts_est, self.ts_last, self.closed, self.rst, self.from_syn,
                c.high, c.segs, c.retrans, c.fin, s.high, s.segs, s.retrans, s.fin)


def close_state(st: tuple, capture_end: int | None) -> str:
    """How a connection (STATE_FIELDS) ended; capture_end None: it was expired mid-capture."""
    (_id, _ca, _cp, _sa, _sp, _first, ts_syn, ts_prev_syn, ts_synack, _est, _last, closed, rst, from_syn,
     _ch, _cs, _cr, c_fin, _sh, _ss, _sr, s_fin) = st
    if ts_synack is None and from_syn:
        if rst:
            return "refused"
        if capture_end is None:
            return "timeout"  # expired mid-capture: nothing answered for SYN_EXPIRE_NS, or a new SYN replaced it
        gap = 0 if ts_prev_syn is None or ts_syn is None else ts_syn - ts_prev_syn
        if ts_syn is not None and capture_end - ts_syn > max(SYN_RETRY_NS, gap * 5 // 2):
            return "timeout"
        return "open"
    if rst and not (c_fin and s_fin):
        return "reset"
    return "closed" if closed else "open"


def conn_ids(node: str, cid: int) -> tuple[str, str]:
    """The conn_id of a connection's client row and of its server row."""
    base = f"{node}-i{cid:x}"
    return base + "c", base + "s"


def conn_rows(node: str, st: tuple, capture_end: int | None, ip_text: Callable[[bytes], str]) -> list[tuple]:
    """The client row and, after a handshake (or for a connection joined mid-way), the server row
    of a connection (STATE_FIELDS), in COLUMNS order."""
    (cid, caddr, cport, saddr, sport, ts_first, ts_syn, _prev, ts_synack, ts_est, ts_last, _closed, _rst, from_syn,
     c_high, c_segs, c_retrans, _cf, s_high, s_segs, s_retrans, _sf) = st
    state = close_state(st, capture_end)
    ts_end = None if state == "open" else (ts_syn if state == "timeout" else ts_last)
    srtt = None if ts_est is None or ts_syn is None else (ts_est - ts_syn) // 1000
    latency = None if ts_synack is None or ts_syn is None else ts_synack - ts_first
    cip, sip = ip_text(caddr), ip_text(saddr)
    c_id, s_id = conn_ids(node, cid)
    rows = [(c_id, ts_first, ts_end, "client", cip, cport, sip, sport, None, None, None, None,
             c_high, s_high, c_segs, s_segs, srtt, c_retrans, latency, state)]
    if ts_est is not None or ts_synack is not None or not from_syn:
        start = ts_est if ts_est is not None else (ts_synack if from_syn else ts_first)
        rows.append((s_id, start, ts_end, "server", cip, cport, sip, sport, None, None, None, None,
                     s_high, c_high, s_segs, c_segs, srtt, s_retrans, None, state))
    return rows


class ConnTable:
    """The connections of one import by directional address key (src, sport, dst, dport: address
    bytes and ports); ends them and hands their state to `on_end(state, capture_end)`."""

    def __init__(self, on_end: Callable[[tuple, int | None], None]) -> None:
        self.on_end = on_end
        self.by_key: dict[tuple, tuple[Conn, bool]] = {}  # key -> (conn, the key is client->server)
        self.by_id: dict[int, Conn] = {}
        self.closing: dict[int, tuple[Conn, tuple]] = {}  # closed connections waiting CLOSE_GRACE_NS, by id
        self.unanswered: dict[int, tuple[Conn, tuple]] = {}  # connections with only SYNs so far
        self.next_id = 1
        self.started_before = 0  # connections joined mid-way (no SYN seen)

    def lookup(self, key: tuple, rev: tuple, flags: int, seq: int, ts: int) -> tuple[Conn, bool] | None:
        """The connection of a segment src->dst (`key`; `rev` is dst->src), made when new.
        None for a lone RST or FIN of a connection not known (nothing to account it to)."""
        hit = self.by_key.get(key)
        if hit is not None:
            conn = hit[0]
            if flags & SYN and not flags & ACK and hit[1] and conn.isn is not None and seq != conn.isn:
                if conn.closed or conn.ts_synack is None or conn.ts_est is not None:
                    # the port was reused: a new connection. An established one whose close the
                    # capture missed is closed at its last packet.
                    conn.closed = conn.closed or conn.ts_synack is not None
                    self.end(conn, key if hit[1] else rev, None)
                    hit = None
            elif conn.closed and flags & SYN and not flags & ACK:
                self.end(conn, key if hit[1] else rev, None)
                hit = None
            if hit is not None:
                return hit
        if flags & (RST | FIN) and not flags & SYN:
            return None
        _src, sport, _dst, dport = key
        if flags & SYN:
            from_client = not flags & ACK  # a SYN-ACK seen first: the capture missed the SYN
            mid = False
        else:
            from_client = sport >= dport  # joined mid-way: the server is the endpoint of the lower port
            mid = True
            self.started_before += 1
        ck, sk = (key, rev) if from_client else (rev, key)
        conn = Conn(self.next_id, (ck[0], ck[1]), (ck[2], ck[3]), ts, not mid and from_client)
        self.next_id += 1
        self.by_key[ck] = (conn, True)
        self.by_key[sk] = (conn, False)
        self.by_id[conn.id] = conn
        if not mid and from_client:
            self.unanswered[conn.id] = (conn, ck)
        return conn, from_client

    def after(self, conn: Conn, key: tuple) -> None:
        """Bookkeeping after a segment of `conn` (key: its client->server key)."""
        if conn.ts_synack is not None:
            self.unanswered.pop(conn.id, None)
        if conn.closed and conn.id not in self.closing:
            self.closing[conn.id] = (conn, key)

    def housekeeping(self, now: int) -> None:
        """End connections closed more than CLOSE_GRACE_NS ago and unanswered ones past SYN_EXPIRE_NS."""
        for conn, key in list(self.closing.values()):
            if now - conn.ts_last > CLOSE_GRACE_NS:
                self.end(conn, key, now)
        for cid, (conn, key) in list(self.unanswered.items()):
            if conn.ts_synack is not None:
                del self.unanswered[cid]
            elif not conn.closed and now - conn.ts_last > SYN_EXPIRE_NS:
                self.end(conn, key, None)

    def end(self, conn: Conn, key: tuple, capture_end: int | None) -> None:
        """Forget the connection and hand over its state (key: its client->server key)."""
        self.closing.pop(conn.id, None)
        self.unanswered.pop(conn.id, None)
        self.by_id.pop(conn.id, None)
        src, sport, dst, dport = key
        for k in (key, (dst, dport, src, sport)):
            hit = self.by_key.get(k)
            if hit is not None and hit[0] is conn:
                del self.by_key[k]
        self.on_end(conn.state(), capture_end)

    def finish(self, capture_end: int) -> None:
        """The capture ended: every connection is handed over (those still open as 'open')."""
        for k, (conn, is_client_key) in list(self.by_key.items()):
            if is_client_key and self.by_key.get(k, (None,))[0] is conn:
                self.end(conn, k, capture_end)
