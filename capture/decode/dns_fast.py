"""A fast path for the DNS messages nearly every node sees: struct-level parsing of regular
messages whose answers are A, AAAA, CNAME, NS, PTR, MX, TXT or OPT.

`fast_parse(data)` returns the DnsMessage that `dns.parse_dns` (dnslib, the reference) returns
for the same bytes, or None when the message is anything but regular — another rdata type, a
name with a byte dnslib would escape, a forward or nested-too-deep compression pointer, a label
length of 64..191, an rdata length that does not fit its type, trailing truncation — and then the
caller asks dnslib. Differential tests (tests/test_dns_fast.py) hold the two equal on real
captures, generated messages of every handled type and mutations of them.
"""

from __future__ import annotations

from struct import Struct

_HEADER = Struct("!HHHHHH")
_RR = Struct("!HHIH")
_Q = Struct("!HH")
_A_TYPE, _NS, _CNAME, _PTR, _MX, _TXT, _AAAA, _OPT = 1, 2, 5, 12, 15, 16, 28, 41
_NAME_TYPES = {_NS: "NS", _CNAME: "CNAME", _PTR: "PTR"}  # DNAME: dnslib reads it as raw bytes
_PRINTABLE = frozenset(range(33, 127))  # dnslib escapes any other byte of a label as \DDD
_TXT_PRINTABLE = frozenset(range(32, 127))  # and of a TXT string (as \ooo)
_MAX_JUMPS = 32


def _name(data: bytes, pos: int, cache: dict[int, str]) -> tuple[str, int] | None:
    """The name at pos as dnslib prints it without the trailing dot (the root: '.'), case kept,
    and the position after it; None for anything dnslib would not read the same way."""
    n = len(data)
    if pos + 1 < n and data[pos] >= 0xC0:  # most answer names: a pointer to a name read before
        ptr = ((data[pos] & 0x3F) << 8) | data[pos + 1]
        hit = cache.get(ptr)
        if hit is not None and ptr < pos:
            return hit, pos + 2
    labels: list[str] = []
    end = -1
    jumps = 0
    start = pos
    while True:
        if pos >= n:
            return None
        ln = data[pos]
        if ln == 0:
            pos += 1
            break
        if ln >= 0xC0:
            if pos + 1 >= n:
                return None
            ptr = ((ln & 0x3F) << 8) | data[pos + 1]
            if ptr >= pos:  # dnslib refuses pointers that do not point backwards
                return None
            if end < 0:
                end = pos + 2
            jumps += 1
            if jumps > _MAX_JUMPS:
                return None
            hit = cache.get(ptr)
            if hit is not None:
                if hit != ".":
                    labels.append(hit)
                pos = -1
                break
            pos = ptr
            continue
        if ln >= 64:
            return None
        label = data[pos + 1: pos + 1 + ln]
        if len(label) != ln or not _PRINTABLE.issuperset(label):
            return None
        labels.append(label.decode("ascii"))
        pos += 1 + ln
    text = ".".join(labels) if labels else "."
    cache[start] = text
    return text, (end if end >= 0 else pos)


def _ipv6(a: bytes) -> str:
    """dnslib's own IPv6 text (dns._format_ipv6): the first run of two or more zero groups
    becomes '::' (not the longest run, as inet_ntop would)."""
    groups = [(a[i] << 8) | a[i + 1] for i in range(0, 16, 2)]
    left: list[str] = []
    right: list[str] = []
    compressing = False
    for i, g in enumerate(groups):
        if not compressing:
            if g == 0 and i < 7:
                if groups[i + 1] == 0:
                    compressing = True
                else:
                    left.append("0")
            else:
                left.append("%x" % g)
        elif g == 0 and not right:
            pass
        else:
            right.append("%x" % g)
    return ":".join(left) + "::" + ":".join(right) if len(left) < 8 else ":".join(left)


def fast_parse(data: bytes, make_message, make_answer, qtype_name, rcode_name):
    """See the module docstring. The constructors and the name tables come from capture.decode.dns
    (one definition of the message types)."""
    n = len(data)
    if n < 12:
        return None
    txid, flags, qd, an, _ns, _ar = _HEADER.unpack_from(data)
    cache: dict[int, str] = {}
    pos = 12
    qname = qtype = None
    if qd:
        if qd != 1:
            return None
        got = _name(data, pos, cache)
        if got is None or got[1] + 4 > n:
            return None
        qname, pos = got
        qname = qname.lower()
        qtype, _qclass = _Q.unpack_from(data, pos)
        pos += 4
    qr = flags >> 15
    answers = []
    if qr:
        for _ in range(an):
            got = _name(data, pos, cache)
            if got is None or got[1] + 10 > n:
                return None
            rname, pos = got
            rname = rname.lower()
            rtype, _rclass, ttl, rdlen = _RR.unpack_from(data, pos)
            pos += 10
            end = pos + rdlen
            if end > n:
                return None
            if rtype == _A_TYPE:
                if rdlen != 4:
                    return None
                d = data[pos:end]
                answers.append(make_answer(rname, "A", ttl, f"{d[0]}.{d[1]}.{d[2]}.{d[3]}"))
            elif rtype == _AAAA:
                if rdlen != 16:
                    return None
                answers.append(make_answer(rname, "AAAA", ttl, _ipv6(data[pos:end])))
            elif rtype in _NAME_TYPES:
                target = _name(data, pos, cache)
                if target is None or target[1] != end:
                    return None
                answers.append(make_answer(rname, _NAME_TYPES[rtype], ttl, target[0].lower()))
            elif rtype == _MX:
                if rdlen < 3:
                    return None
                target = _name(data, pos + 2, cache)
                if target is None or target[1] != end:
                    return None
                text = target[0]  # dnslib prints the exchange as it came, with the trailing dot
                answers.append(make_answer(rname, "MX", ttl, f"{(data[pos] << 8) | data[pos + 1]} {text if text == '.' else text + '.'}"))
            elif rtype == _TXT:
                # dnslib's own reading: a string is taken while the lengths so far stay under rdlen
                parts, p, total = [], pos, 0
                while p < end:
                    tl = data[p]
                    if total + tl >= rdlen:
                        return None
                    total += tl
                    chunk = data[p + 1: p + 1 + tl]
                    if len(chunk) != tl or not _TXT_PRINTABLE.issuperset(chunk):
                        return None
                    parts.append('"' + chunk.decode("ascii") + '"')
                    p += 1 + tl
                if p != end:
                    return None
                answers.append(make_answer(rname, "TXT", ttl, ",".join(parts)))
            elif rtype == _OPT:
                answers.append(make_answer(rname, "OPT", ttl, ""))
            else:
                return None
            pos = end
    rcode = flags & 0xF
    return make_message(txid, bool(qr), qname, qtype, None if qtype is None else qtype_name(qtype), rcode, rcode_name(rcode),
                        tuple(answers), False)
