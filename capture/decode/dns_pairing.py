"""Pairs DNS queries with their answers and produces rows of the `dns` table.

A query and its answer are paired by (transport, client ip, client port, server ip, server
port, txid, qname, qtype); qname is compared lower-case because resolvers may randomise
its case (DNS 0x20). A query without an answer within `timeout_ns` (default 10 s, longer
than the usual resolver timeout of 5 s) becomes a row with null answer fields, as do
queries still waiting at `flush()`.

Rows have every column of `dns` except `node` (the writer's partition key); timestamps are
int nanoseconds since the Unix epoch (wall-clock: the caller converts kernel time first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .dns import FAST_PARSE, DnsAnswer, DnsMessage, DnsTcpSplitter, decode_dns, qtype_name, rcode_name
from .stats import DecodeStats

DEFAULT_TIMEOUT_NS = 10_000_000_000
_NEVER = 1 << 80  # later than any timestamp

Key = tuple[str, str, int, str, int, int, str, int]


@dataclass
class _Query:
    ts_ns: int
    msg: DnsMessage
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    transport: str
    pid: int | None
    comm: str | None


def _row(q: _Query, answer: DnsMessage | None, ts_answer: int | None) -> dict[str, Any]:
    return {
        "ts_query": q.ts_ns,
        "ts_answer": ts_answer,
        "latency_ns": None if ts_answer is None else ts_answer - q.ts_ns,
        "client_ip": q.client_ip,
        "client_port": q.client_port,
        "server_ip": q.server_ip,
        "server_port": q.server_port,
        "transport": q.transport,
        "pid": q.pid,
        "comm": q.comm,
        "txid": q.msg.txid,
        "qname": q.msg.qname,
        "qtype": q.msg.qtype,
        "qtype_name": q.msg.qtype_name,
        "rcode": None if answer is None else answer.rcode,
        "rcode_name": None if answer is None else answer.rcode_name,
        "answers": None if answer is None else [{"name": a[0], "type": a[1], "ttl": a[2], "data": a[3]} for a in answer.answers],  # DnsAnswer.as_row
    }


class DnsPairer:
    """Pairs the DNS messages of one node. Not thread-safe: one pairer per consumer thread."""

    def __init__(self, stats: DecodeStats | None = None, timeout_ns: int = DEFAULT_TIMEOUT_NS) -> None:
        self.stats = stats if stats is not None else DecodeStats()
        self.timeout_ns = timeout_ns
        self._pending: dict[Key, _Query] = {}  # insertion order = query order, for expiry
        self._tcp: dict[tuple[str, int, str, int], tuple[DnsTcpSplitter, int]] = {}
        self._tcp_swept = 0  # when expire() last walked _tcp
        # expire() finds nothing before this instant: never later than the oldest query's ts + timeout
        # (queries only leave, so the oldest only gets younger), so observe() skips the call until then
        self._due = _NEVER

    # --- input -------------------------------------------------------------------------

    def feed_udp(
        self, ts_ns: int, payload: bytes, src_ip: str, src_port: int, dst_ip: str, dst_port: int,
        pid: int | None = None, comm: str | None = None,
    ) -> list[dict[str, Any]]:
        """One UDP datagram's payload (or its first bytes). Returns rows completed by it."""
        # dns.parse_dns's fast path called directly: a regular message with a question, read whole, is
        # what decode_dns would return without counting anything; any other goes through decode_dns
        msg = FAST_PARSE(payload, DnsMessage, DnsAnswer, qtype_name, rcode_name)
        if msg is None or msg.qname is None or msg.truncated:
            msg = decode_dns(payload, self.stats)
            if msg is None:
                return []
        return self.observe(ts_ns, msg, src_ip, src_port, dst_ip, dst_port, "udp", pid, comm)

    def feed_tcp(
        self, ts_ns: int, data: bytes, src_ip: str, src_port: int, dst_ip: str, dst_port: int,
        length: int | None = None, pid: int | None = None, comm: str | None = None,
    ) -> list[dict[str, Any]]:
        """One TCP segment's payload (first bytes `data` of `length`), in stream order per direction."""
        key = (src_ip, src_port, dst_ip, dst_port)
        splitter = self._tcp.get(key, (None, 0))[0] or DnsTcpSplitter(self.stats)
        self._tcp[key] = (splitter, ts_ns)
        rows: list[dict[str, Any]] = []
        for ts, raw, _complete in splitter.feed(ts_ns, data, length):
            msg = decode_dns(raw, self.stats)
            if msg is not None:
                rows += self.observe(ts, msg, src_ip, src_port, dst_ip, dst_port, "tcp", pid, comm)
        return rows

    def close_tcp(self, src_ip: str, src_port: int, dst_ip: str, dst_port: int) -> None:
        """Forget both directions' framing state of a TCP connection (call when it closes)."""
        self._tcp.pop((src_ip, src_port, dst_ip, dst_port), None)
        self._tcp.pop((dst_ip, dst_port, src_ip, src_port), None)

    def observe(
        self, ts_ns: int, msg: DnsMessage, src_ip: str, src_port: int, dst_ip: str, dst_port: int,
        transport: str = "udp", pid: int | None = None, comm: str | None = None,
    ) -> list[dict[str, Any]]:
        """One decoded message sent from src to dst. Returns the row it completes, if any."""
        rows = self.expire(ts_ns) if ts_ns >= self._due or self._tcp else []
        if not msg.is_response:
            assert msg.qname is not None and msg.qtype is not None  # decode_dns drops question-less queries
            key = (transport, src_ip, src_port, dst_ip, dst_port, msg.txid, msg.qname, msg.qtype)
            if key in self._pending:
                self.stats.add("dns_duplicate_queries")  # a retransmission: latency counts from the first
            else:
                if not self._pending:
                    self._due = ts_ns + self.timeout_ns
                self._pending[key] = _Query(ts_ns, msg, src_ip, src_port, dst_ip, dst_port, transport, pid, comm)
            return rows
        query = self._take(transport, dst_ip, dst_port, src_ip, src_port, msg)
        if query is None:
            self.stats.add("dns_unmatched_answers")
        else:
            rows.append(_row(query, msg, ts_ns))
        return rows

    def _take(self, transport: str, cip: str, cport: int, sip: str, sport: int, msg: DnsMessage) -> _Query | None:
        if msg.qname is not None:
            return self._pending.pop((transport, cip, cport, sip, sport, msg.txid, msg.qname, msg.qtype), None)
        # Some error answers (FORMERR, NOTIMP) carry no question: pair on the txid alone.
        head = (transport, cip, cport, sip, sport, msg.txid)
        for key in self._pending:
            if key[:6] == head:
                return self._pending.pop(key)
        return None

    # --- output without input -----------------------------------------------------------

    def expire(self, now_ns: int) -> list[dict[str, Any]]:
        """Rows for queries unanswered for longer than the timeout (call it now and then)."""
        rows = []
        old = []
        for key, q in self._pending.items():
            if now_ns - q.ts_ns < self.timeout_ns:
                break  # pending is in query order: the rest is younger
            old.append(key)
        for key in old:
            rows.append(_row(self._pending.pop(key), None, None))
        self._due = next(iter(self._pending.values())).ts_ns + self.timeout_ns if self._pending else _NEVER
        if self._tcp and now_ns - self._tcp_swept >= 1_000_000_000:  # a walk of all TCP framings: once a second is enough
            self._tcp_swept = now_ns
            for key, (_, last_ns) in list(self._tcp.items()):
                if now_ns - last_ns >= 10 * self.timeout_ns:  # framing of a connection whose close we missed
                    del self._tcp[key]
        return rows

    def flush(self) -> list[dict[str, Any]]:
        """Rows for every query still waiting (at the end of a recording)."""
        rows = [_row(q, None, None) for q in self._pending.values()]
        self._pending.clear()
        self._tcp.clear()
        return rows

    @property
    def pending(self) -> int:
        return len(self._pending)
