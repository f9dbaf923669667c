"""TLS ClientHello decoding: SNI, ALPN and the offered version, from the first bytes of a
TLS connection's client direction. Rows of the `tls` table.

Written by hand (about a hundred lines) rather than with a TLS library: we read four fields
of one message, and we must read them from a message cut anywhere by the capture prefix,
which full parsers (dpkt.ssl, scapy) reject as a whole. The reader walks the structure with
bounds checks; running out of bytes ends the walk and returns what was read so far
(`truncated=True`), while lengths that contradict each other are malformed input.

Modern ClientHellos can exceed one segment (a post-quantum key share alone is 1.2 kB, and
browsers shuffle extension order, so SNI may come after it): `ClientHelloReader`
reassembles the first handshake message across segments and TLS records.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from .stats import DecodeStats

try:
    from . import _tls  # type: ignore[attr-defined]  # capture/decode/_tls.c, built at install when a C compiler is present
except ImportError:  # no compiler at install time: _fast_client_hello does the same work, slower
    _tls = None

CONTENT_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
MAX_HELLO = 1 << 16  # largest ClientHello we reassemble; real ones are < 4 kB

VERSION_NAMES = {0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}


_EXT_HEAD = struct.Struct("!HH")


def version_name(code: int) -> str:
    return VERSION_NAMES.get(code, f"0x{code:04x}")


def _is_grease(code: int) -> bool:
    # RFC 8701 reserved values 0x0a0a, 0x1a1a, ... 0xfafa: offered to keep servers tolerant.
    return code & 0x0F0F == 0x0A0A and code >> 8 == code & 0xFF


class ClientHello(NamedTuple):  # not a frozen dataclass: its per-field setattr was a sixth of a decode
    version: str  # 'TLS 1.3' if supported_versions offers it, else the legacy version's name
    sni: str | None
    alpn: tuple[str, ...] | None
    truncated: bool  # the bytes ended before the hello did: fields after the cut are unknown


class Malformed(Exception):
    """Lengths inside the message contradict each other (not just cut short)."""


class _Cut(Exception):
    """The bytes end here."""


class _Reader:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data, self.pos = data, pos
        self.end = len(data) if end is None else end

    def take(self, n: int) -> bytes:
        if self.pos + n > min(self.end, len(self.data)):
            if self.pos + n > self.end:
                raise Malformed("field overruns its enclosing length")
            raise _Cut()
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        pos = self.pos  # inlined take(2): this is the hot path
        if pos + 2 > self.end or pos + 2 > len(self.data):
            self.take(2)  # raises the right exception
        self.pos = pos + 2
        return (self.data[pos] << 8) | self.data[pos + 1]

    def skip(self, n: int) -> None:
        """Step over n bytes without reading them: a cut inside them shows at the next read."""
        if self.pos + n > self.end:
            raise Malformed("field overruns its enclosing length")
        self.pos += n

    def u24(self) -> int:
        return int.from_bytes(self.take(3), "big")

    def sub(self, n: int) -> "_Reader":
        """A reader over the next n bytes (which may be only partly present)."""
        if self.pos + n > self.end:
            raise Malformed("vector overruns its enclosing length")
        r = _Reader(self.data, self.pos, self.pos + n)
        self.pos += n
        return r

    @property
    def remaining(self) -> int:
        return self.end - self.pos


def handshake_bytes(data: bytes) -> bytes | None:
    """Concatenate the payloads of the leading handshake records; None if not TLS handshake."""
    if len(data) < 3 or data[0] != CONTENT_HANDSHAKE or data[1] != 3:
        return None
    out = bytearray()
    pos = 0
    while pos + 5 <= len(data) and data[pos] == CONTENT_HANDSHAKE:
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if length == 0 or length > (1 << 14) + 2048:
            raise Malformed("bad record length")
        out += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return bytes(out)


def parse_client_hello(data: bytes) -> ClientHello | None:
    """Decode a ClientHello from the start of a TLS stream (TLS records, possibly cut short).

    Returns None when the bytes are not a TLS handshake starting with a ClientHello (or too
    short to say what version it offers); raises Malformed on contradictory lengths.
    A whole hello in one record (nearly all of them) takes _fast_client_hello; anything else,
    and the result that one is held to, is parse_client_hello_reference. Where capture/decode/_tls.c
    is built, it takes the place of _fast_client_hello: the reference compiled for a hello in one
    record, whole or cut (the recorder's prefix cuts browsers' hellos).
    """
    hello = _fast_client_hello(data) if _tls is None else _tls.fast_client_hello(data, ClientHello, version_name)
    return hello if hello is not None else parse_client_hello_reference(data)


def _fast_client_hello(data: bytes) -> ClientHello | None:
    """The ClientHello of `data` when it is exactly one handshake record holding a whole, regular
    hello, walked with plain indexing; None otherwise (the reference then decides)."""
    n = len(data)
    if n < 9 or data[0] != CONTENT_HANDSHAKE or data[1] != 3 or data[5] != HANDSHAKE_CLIENT_HELLO:
        return None
    rec = (data[3] << 8) | data[4]
    body = 9
    end = body + ((data[6] << 16) | (data[7] << 8) | data[8])
    if n != 5 + rec or rec == 0 or rec > (1 << 14) + 2048 or end > n:
        return None
    pos = body + 2 + 32  # legacy version, random
    if pos >= end:
        return None
    pos += 1 + data[pos]  # session id
    if pos + 2 > end:
        return None
    pos += 2 + ((data[pos] << 8) | data[pos + 1])  # cipher suites
    if pos >= end:
        return None
    pos += 1 + data[pos]  # compression methods
    sni = alpn = None
    versions = []
    if pos != end:
        if pos + 2 > end:
            return None
        exts_end = pos + 2 + ((data[pos] << 8) | data[pos + 1])
        if exts_end > end:
            return None
        pos += 2
        while pos < exts_end:
            if pos + 4 > exts_end:
                return None
            ext_type, ext_len = _EXT_HEAD.unpack_from(data, pos)
            p = pos + 4
            ext_end = p + ext_len
            if ext_end > exts_end:
                return None
            if ext_type == EXT_SERVER_NAME:
                if p + 2 > ext_end:
                    return None
                names_end = p + 2 + ((data[p] << 8) | data[p + 1])
                if names_end > ext_end:
                    return None
                p += 2
                while p < names_end:
                    if p + 3 > names_end:
                        return None
                    kind, ln = data[p], (data[p + 1] << 8) | data[p + 2]
                    if p + 3 + ln > names_end:
                        return None
                    if kind == 0 and sni is None:
                        sni = data[p + 3: p + 3 + ln].decode("ascii", "backslashreplace").lower().rstrip(".")
                    p += 3 + ln
            elif ext_type == EXT_ALPN:
                if p + 2 > ext_end:
                    return None
                protos_end = p + 2 + ((data[p] << 8) | data[p + 1])
                if protos_end > ext_end:
                    return None
                p += 2
                alpn = []
                while p < protos_end:
                    ln = data[p]
                    if p + 1 + ln > protos_end:
                        return None
                    alpn.append(data[p + 1: p + 1 + ln].decode("ascii", "backslashreplace"))
                    p += 1 + ln
            elif ext_type == EXT_SUPPORTED_VERSIONS:
                if p + 1 > ext_end:
                    return None
                v_end = p + 1 + data[p]
                if v_end > ext_end or data[p] % 2:
                    return None
                versions += [(data[i] << 8) | data[i + 1] for i in range(p + 1, v_end, 2)]
            pos = ext_end
    if 0x0304 in [v for v in versions if not _is_grease(v)]:
        version = "TLS 1.3"
    else:
        version = version_name((data[body] << 8) | data[body + 1])
    return ClientHello(version, sni, None if alpn is None else tuple(alpn), False)


def parse_client_hello_reference(data: bytes) -> ClientHello | None:
    """parse_client_hello through the bounds-checked reader: every case, cut or whole."""
    hs = handshake_bytes(data)
    if hs is None or len(hs) < 6:
        return None
    r = _Reader(hs, end=MAX_HELLO + 4)  # the handshake may continue past the bytes we have
    if r.u8() != HANDSHAKE_CLIENT_HELLO:
        return None
    body = r.sub(r.u24())
    legacy = body.u16()
    fields: dict[str, Any] = {"sni": None, "alpn": None, "versions": []}
    truncated = False
    try:
        _walk(body, fields)
    except _Cut:
        truncated = True
    if body.end > len(hs):
        truncated = True  # skipped fields ran past the bytes we have
    offered = [v for v in fields["versions"] if not _is_grease(v)]
    version = "TLS 1.3" if 0x0304 in offered else version_name(legacy)
    alpn = None if fields["alpn"] is None else tuple(fields["alpn"])
    return ClientHello(version, fields["sni"], alpn, truncated)


def _walk(body: _Reader, fields: dict[str, Any]) -> None:
    body.skip(32)  # random
    body.skip(body.u8())  # session id
    body.skip(body.u16())  # cipher suites
    body.skip(body.u8())  # compression methods
    if body.remaining == 0:
        return  # no extensions (SSL 3.0 style hello): complete
    exts = body.sub(body.u16())
    while exts.remaining > 0:
        ext_type = exts.u16()
        ext = exts.sub(exts.u16())
        if ext_type == EXT_SERVER_NAME:
            names = ext.sub(ext.u16())
            while names.remaining > 0:
                kind = names.u8()
                name = names.take(names.u16())
                if kind == 0 and fields["sni"] is None:
                    fields["sni"] = name.decode("ascii", "backslashreplace").lower().rstrip(".")
        elif ext_type == EXT_ALPN:
            protos = ext.sub(ext.u16())
            fields["alpn"] = []
            while protos.remaining > 0:
                fields["alpn"].append(protos.take(protos.u8()).decode("ascii", "backslashreplace"))
        elif ext_type == EXT_SUPPORTED_VERSIONS:
            versions = ext.sub(ext.u8())
            while versions.remaining > 0:
                fields["versions"].append(versions.u16())
        # Other extensions: `sub` already stepped over them.

def decode_client_hello(data: bytes, stats: DecodeStats | None = None) -> ClientHello | None:
    """parse_client_hello that never raises: malformed input is counted (`tls_malformed`)."""
    try:
        hello = parse_client_hello(data)
    except Exception:  # Malformed, and anything a bug would raise: a decoder never stops the recorder
        if stats is not None:
            stats.add("tls_malformed")
        return None
    if hello is not None and hello.truncated and stats is not None:
        stats.add("tls_truncated")
    return hello


def tls_row(
    ts_ns: int, hello: ClientHello, client_ip: str, client_port: int, server_ip: str, server_port: int,
    pid: int | None = None, comm: str | None = None,
) -> dict[str, Any]:
    """A `tls` table row (every column but `node`)."""
    return {
        "ts": ts_ns,
        "client_ip": client_ip,
        "client_port": client_port,
        "server_ip": server_ip,
        "server_port": server_port,
        "pid": pid,
        "comm": comm,
        "sni": hello.sni,
        "version": hello.version,
        "alpn": None if hello.alpn is None else list(hello.alpn),
    }


class ClientHelloReader:
    """Reassembles the ClientHello at the start of one connection's client->server bytes.

    feed() the connection's client-direction segments in order; it returns the ClientHello
    once the whole message is in, or as soon as a segment was not fully seen (the rest is
    then unknowable: what was read so far is returned, truncated). `done` is True from then
    on, and also as soon as the stream turns out not to be TLS.
    """

    def __init__(self, stats: DecodeStats | None = None) -> None:
        self.stats = stats
        self.buf = bytearray()
        self.ts_ns: int | None = None
        self.done = False

    def feed(self, ts_ns: int, data: bytes, length: int | None = None) -> ClientHello | None:
        if self.done:
            return None
        if self.ts_ns is None:
            self.ts_ns = ts_ns
        self.buf += data
        if len(self.buf) >= 1 and (self.buf[0] != CONTENT_HANDSHAKE or (len(self.buf) >= 2 and self.buf[1] != 3)):
            self.done = True  # not TLS: nothing to count
            return None
        gap = length is not None and length > len(data)
        if gap or len(self.buf) >= MAX_HELLO or self._complete():
            return self.finish()
        return None

    def _complete(self) -> bool:
        # The record(s) hold the whole handshake message when the handshake length is covered.
        try:
            hs = handshake_bytes(bytes(self.buf))
        except Malformed:
            return True  # let finish() count it
        return hs is not None and len(hs) >= 4 and len(hs) >= 4 + int.from_bytes(hs[1:4], "big")

    def finish(self) -> ClientHello | None:
        """Decode what has been gathered (also at connection close); None if nothing usable."""
        if self.done:
            return None
        self.done = True
        return decode_client_hello(bytes(self.buf), self.stats)
