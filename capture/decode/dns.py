"""DNS wire decoding: one message (bytes) -> DnsMessage, and TCP DNS stream splitting.

Parsing uses dnslib (a well-kept pure-Python DNS library): it decodes name compression,
knows the type and rcode names, and prints every rdata type as its usual text (A, AAAA,
MX "10 mx.example.", TXT, SRV, HTTPS, ...), which is what the `dns.answers[].data` column
needs. dpkt is faster but leaves most rdata types as raw bytes for us to format by hand.

We drive dnslib record by record instead of calling `DNSRecord.parse`, because the recorder
may see only the first bytes of a message (a bounded capture prefix): a message cut inside
its answer section still yields its header, question and the answers before the cut
(`truncated=True`), which is enough to pair it with its query.
"""

from __future__ import annotations

import functools
import struct
from typing import NamedTuple

from dnslib import QTYPE, RCODE, DNSBuffer, DNSHeader, DNSQuestion, RR

from .dns_fast import fast_parse
from .stats import DecodeStats

try:
    from . import _dns  # type: ignore[attr-defined]  # capture/decode/_dns.c, built at install when a C compiler is present
except ImportError:  # no compiler at install time: dns_fast.fast_parse does the same work, slower
    _dns = None

# The fast path in use: the compiled twin of dns_fast.fast_parse, or that function itself (its reference).
_fast_parse = fast_parse if _dns is None else _dns.fast_parse
FAST_PARSE = _fast_parse  # the same, for DnsPairer.feed_udp's shortcut past parse_dns and decode_dns

# rdata types whose data is a domain name: normalised like qname (lower-case, no trailing
# dot) so that a CNAME's data equals the next record's name and chains can be followed.
_NAME_RDATA = {"CNAME", "NS", "PTR", "DNAME"}


# NamedTuples, not frozen dataclasses: a frozen dataclass sets each field through
# object.__setattr__, which was a third of a regular message's decode time.
class DnsAnswer(NamedTuple):
    name: str
    type: str
    ttl: int
    data: str

    def as_row(self) -> dict:
        return {"name": self.name, "type": self.type, "ttl": self.ttl, "data": self.data}


class DnsMessage(NamedTuple):
    txid: int
    is_response: bool
    qname: str | None  # None when the message has no question (qdcount 0)
    qtype: int | None
    qtype_name: str | None
    rcode: int
    rcode_name: str
    answers: tuple[DnsAnswer, ...] = ()
    truncated: bool = False  # the bytes ended (or broke) inside the answer section


def name_text(label: object) -> str:
    """A domain name as the tables store it: lower-case, without the trailing dot."""
    text = str(label).lower()
    return text[:-1] if text.endswith(".") and len(text) > 1 else text


@functools.cache  # a few dozen codes in practice; dnslib's Bimap lookup is slow on the hot path
def qtype_name(code: int) -> str:
    return QTYPE.get(code, f"TYPE{code}")


@functools.cache
def rcode_name(code: int) -> str:
    # dnslib knows 0..10; the rest of the 4-bit range are unassigned or extended codes.
    return RCODE.get(code, f"RCODE{code}")


def _answer(rr: RR) -> DnsAnswer:
    type_ = qtype_name(rr.rtype)
    if type_ in _NAME_RDATA:
        data = name_text(rr.rdata.label)
    elif rr.rtype == QTYPE.OPT:
        data = ""
    else:
        data = str(rr.rdata)
    return DnsAnswer(name_text(rr.rname), type_, int(rr.ttl), data)


_SEEN: dict[bytes, DnsMessage | None] = {}  # message bytes after the txid -> the message, for repeats
_SEEN_MAX = 4096


def parse_dns(data: bytes) -> DnsMessage | None:
    """Parse one DNS message; None when not even the header and question can be read.

    Regular messages (A/AAAA/CNAME/... answers, see capture.decode.dns_fast) take the fast path
    (compiled: capture/decode/_dns.c, when built); every other one, and the result the fast path is
    held to, is dnslib's (parse_dns_dnslib)."""
    msg = _fast_parse(data, DnsMessage, DnsAnswer, qtype_name, rcode_name)
    return msg if msg is not None else parse_dns_dnslib(data)


def parse_dns_dnslib(data: bytes) -> DnsMessage | None:
    """parse_dns through dnslib, record by record: the reference.

    Never raises: dnslib signals bad input with several exception types (DNSError,
    BufferError, struct.error, UnicodeError, IndexError in rdata parsers), so everything
    past the header is read under one broad guard and a failure ends the answer list.

    dnslib costs about 100 µs per message, and traffic repeats itself: the same questions, and
    a resolver's same answers within a second (until their TTLs tick). A message equal to a
    recent one but for its txid (the first two bytes, which nothing else depends on) is that
    message with its own txid: a pcap of a busy resolver imports several times faster.
    """
    if len(data) < 12:
        return None
    key = bytes(data[2:])
    if key in _SEEN:
        msg = _SEEN[key]
        txid = (data[0] << 8) | data[1]
        if msg is None or msg.txid == txid:
            return msg
        return msg._replace(txid=txid)
    msg = _parse_dns(data)
    if len(_SEEN) >= _SEEN_MAX:
        _SEEN.clear()
    _SEEN[key] = msg
    return msg


def _parse_dns(data: bytes) -> DnsMessage | None:
    try:
        buf = DNSBuffer(data)
        header = DNSHeader.parse(buf)
        qname = qtype = None
        if header.q:
            question = DNSQuestion.parse(buf)
            qname, qtype = name_text(question.qname), int(question.qtype)
            for _ in range(header.q - 1):  # more than one question is legal but unseen in practice
                DNSQuestion.parse(buf)
    except Exception:
        return None
    answers: list[DnsAnswer] = []
    truncated = False
    if header.qr:
        for _ in range(header.a):
            try:
                answers.append(_answer(RR.parse(buf)))
            except Exception:
                truncated = True
                break
    rcode = int(header.rcode)
    return DnsMessage(
        txid=int(header.id),
        is_response=bool(header.qr),
        qname=qname,
        qtype=qtype,
        qtype_name=None if qtype is None else qtype_name(qtype),
        rcode=rcode,
        rcode_name=rcode_name(rcode),
        answers=tuple(answers),
        truncated=truncated,
    )


def decode_dns(data: bytes, stats: DecodeStats | None = None) -> DnsMessage | None:
    """parse_dns that counts what it cannot use: `dns_malformed`, `dns_truncated`."""
    msg = parse_dns(data)
    if stats is not None:
        if msg is None or (msg.qname is None and not msg.is_response):
            stats.add("dns_malformed")  # a query without a question cannot become a row
        elif msg.truncated:
            stats.add("dns_truncated")
    if msg is not None and msg.qname is None and not msg.is_response:
        return None
    return msg


class DnsTcpSplitter:
    """Splits one direction of a TCP DNS connection into messages (RFC 1035 4.2.2).

    Each message is preceded by a 2-byte big-endian length. A segment may carry several
    messages, and a message may be split across segments. The recorder may see only the
    first `len(data)` of the `length` bytes of a segment: unseen bytes inside a message are
    skipped by its declared length, and the message is emitted with what was seen (the
    decoder then reads it as truncated). Unseen bytes inside a length prefix lose the
    framing: the rest of the stream is skipped and counted as `dns_tcp_desync`.
    """

    MAX_BUFFER = 65535 + 2

    def __init__(self, stats: DecodeStats | None = None) -> None:
        self.stats = stats
        self._prefix = b""  # bytes of a length prefix seen so far (0 or 1 byte)
        self._msg = bytearray()  # seen bytes of the current message
        self._need = 0  # bytes of the current message still to pass (seen or not)
        self._ts = 0  # ts of the segment where the current message started
        self._seen_all = True  # every byte of the current message was seen
        self.desynced = False

    def feed(self, ts_ns: int, data: bytes, length: int | None = None) -> list[tuple[int, bytes, bool]]:
        """Feed one segment: `data` are its first bytes, `length` its payload length (default len(data)).

        Returns the messages completed by this segment as (ts_ns of their first byte,
        seen bytes, complete) where complete is False when some bytes were not seen.
        """
        length = len(data) if length is None else max(length, len(data))
        out: list[tuple[int, bytes, bool]] = []
        if self.desynced:
            return out
        pos = 0
        n_seen = len(data)
        while pos < length:
            if self._need == 0:
                # Reading the length prefix.
                if pos >= n_seen:
                    self._desync()
                    return out
                if not self._prefix:
                    self._ts = ts_ns  # a message's time is that of its first byte (the prefix's)
                self._prefix += data[pos : pos + 1]
                pos += 1
                if len(self._prefix) == 2:
                    self._need = struct.unpack("!H", self._prefix)[0]
                    self._prefix = b""
                    self._msg = bytearray()
                    self._seen_all = True
                    if self._need == 0:
                        continue  # an empty message is legal framing but carries nothing
                continue
            take = min(self._need, length - pos)
            seen = data[pos : min(pos + take, n_seen)]
            if self._seen_all:  # after a gap, later bytes cannot be placed: keep the seen prefix only
                self._msg += seen
            if len(seen) < take:
                self._seen_all = False
            pos += take
            self._need -= take
            if self._need == 0:
                out.append((self._ts, bytes(self._msg), self._seen_all))
        return out

    def _desync(self) -> None:
        self.desynced = True
        if self.stats is not None:
            self.stats.add("dns_tcp_desync")
