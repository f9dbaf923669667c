"""pcap and pcapng files (gzip-compressed too) read as a stream of packet records.

    open_capture(path, problems) -> Capture      (NotACapture: not a capture at all; nothing read)
    Capture.records() -> (ts_ns, interface index, captured bytes, original length, direction), in file order

Written with `struct` rather than dpkt's readers: the importer's speed is this loop, and a damaged
file must yield every record that can be read (dpkt stops at the first bad record header). The
reader reads 1 MiB at a time, so memory does not grow with the file.

Damage is counted in `Problems`, never raised:
- a record cut by the end of the file (a capture copied while tcpdump wrote it): its bytes are
  yielded as captured, like a snaplen cut (`truncated_record`);
- bytes that are no record where one should start (`garbage`): the reader looks for the next
  position where a plausible record header is followed by another one (or by the end of the
  file), skips to it and counts the bytes skipped (`garbage_bytes`);
- a gzip stream that is corrupt or cut (`gzip_damaged`): what was decompressed before is kept.

Formats: pcap (microsecond and nanosecond magic, either byte order; the "modified" pcap of old
Red Hat tcpdump with 24-byte record headers), pcapng (sections, several interfaces with their
own link type, if_tsresol and if_tsoffset, Enhanced, Simple and obsolete Packet blocks,
epb_flags direction; other blocks skipped). References: the libpcap savefile format and
draft-ietf-opsawg-pcapng.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator

from ...errors import FlowtapeError

CHUNK = 1 << 20
MAX_CAPLEN = 1 << 18  # 256 KiB: tcpdump's largest snaplen; a record claiming more is not a record
MAX_BLOCK = 1 << 24  # pcapng blocks larger than 16 MiB are taken for damage
PCAP_MAGIC = {  # magic as read little-endian -> (byte order of the file, nanosecond timestamps, record header bytes)
    0xA1B2C3D4: ("<", False, 16), 0xD4C3B2A1: (">", False, 16),
    0xA1B23C4D: ("<", True, 16), 0x4D3CB2A1: (">", True, 16),
    0xA1B2CD34: ("<", False, 24), 0x34CDB2A1: (">", False, 24),
}
PCAPNG_SHB = 0x0A0D0D0A
BYTE_ORDER_MAGIC = 0x1A2B3C4D
EPB, SPB, OPB, IDB = 6, 3, 2, 1
EPB_INBOUND, EPB_OUTBOUND = 1, 2  # epb_flags bits 0-1


class NotACapture(FlowtapeError):
    """The file is not a pcap or pcapng capture (exit 3: bad input)."""


@dataclass
class Interface:
    """One capture interface: a pcap file's only one, or a pcapng Interface Description Block."""

    link_type: int
    snaplen: int
    name: str | None = None
    ts_div: int = 1  # ns = ts * ts_mul // ts_div + ts_offset_ns (pcapng if_tsresol, if_tsoffset)
    ts_mul: int = 1000
    ts_offset_ns: int = 0


@dataclass
class Problems:
    """Counted damage and oddities of the input, by kind; `first` holds one example per kind."""

    counts: Counter = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)

    def add(self, kind: str, n: int = 1, example: str | None = None) -> None:
        self.counts[kind] += n
        if example is not None and kind not in self.first:
            self.first[kind] = example


class _Input:
    """A file (or its gzip stream) read in chunks; a damaged gzip stream ends the input, counted."""

    def __init__(self, f: IO[bytes], problems: Problems, name: str) -> None:
        self.f, self.problems, self.name = f, problems, name
        self.eof = False

    def read(self, n: int) -> bytes:
        if self.eof:
            return b""
        try:
            data = self.f.read(n)
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
            self.eof = True
            self.problems.add("gzip_damaged", 1, f"{self.name}: the gzip stream is damaged or cut ({e}); packets before the damage are kept")
            return b""
        if not data:
            self.eof = True
        return data


@dataclass
class Capture:
    """An opened capture file; iterate `records()` once, then close()."""

    path: Path
    format: str  # "pcap" or "pcapng"
    compressed: bool
    problems: Problems
    interfaces: list[Interface] = field(default_factory=list)
    records_read: int = 0
    _f: IO[bytes] | None = None
    _raw: Any = None  # the file under a gzip stream (GzipFile does not close what it was given)
    _head: bytes = b""
    _pcap: tuple = ()

    @property
    def link_types(self) -> list[int]:
        return sorted({i.link_type for i in self.interfaces})

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def records(self) -> Iterator[tuple[int, int, bytes, int, int]]:
        """(ts_ns, interface index, captured bytes, original length, direction) of every readable
        record; direction is pcapng's epb_flags bits (EPB_INBOUND, EPB_OUTBOUND), else 0."""
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[tuple[int, int, bytes, int, int]]]:
        """The records of `records()` a list at a time."""
        out: list[list] = []
        collector = Collector(out)
        for _ in self._drive(collector):
            if collector.batch:
                yield collector.take()
        if collector.batch:
            yield collector.take()

    def feed(self, loop: Any) -> None:
        """Hand every readable record to `loop` (a RecordLoop: the importer's packet loop)."""
        for _ in self._drive(loop):
            pass

    def _drive(self, loop: Any) -> Iterator[None]:
        assert self._f is not None, "a capture is read once"
        src = _Input(self._f, self.problems, str(self.path))
        if self.format == "pcap":
            yield from self._pcap_drive(src, loop)
        else:
            yield from self._pcapng_drive(src, loop)

    # --- pcap ------------------------------------------------------------------------------

    def _pcap_drive(self, src: _Input, loop: Any) -> Iterator[None]:
        """Frames the file's records: `loop.run_pcap` takes every complete, plausible record of a
        buffer; here are the rest (a record the buffer does not hold whole, the end, damage)."""
        order, nano, hlen = self._pcap
        big = order == ">"
        unpack = struct.Struct(order + "IIII").unpack_from
        frac_max = 1_000_000_000 if nano else 1_000_000
        mul = 1 if nano else 1000
        limit = max(MAX_CAPLEN, min(self.interfaces[0].snaplen, MAX_BLOCK))
        buf, pos = self._head, 0
        count = 0
        lo, hi = 0, 1 << 32  # plausible seconds: a day before to a year after the record before
        while True:
            pos, lo, hi, n = loop.run_pcap(buf, pos, big, nano, hlen, limit, lo, hi)
            count += n
            yield None
            blen = len(buf)
            if pos + hlen <= blen:
                sec, frac, caplen, origlen = unpack(buf, pos)
                if not (caplen > limit or frac >= frac_max or origlen < caplen or not lo <= sec <= hi):
                    # a plausible record that the buffer does not hold whole
                    need = hlen + caplen
                    buf, pos = buf[pos:], 0
                    while len(buf) < need and not src.eof:
                        buf += src.read(max(CHUNK, need - len(buf)))
                    if len(buf) < need:
                        data = buf[hlen:]
                        self.problems.add("truncated_record", 1, f"{self.path}: the last record is cut by the end of the file ({len(data)} of {caplen} bytes); kept as captured")
                        count += 1
                        loop.packet(sec * 1_000_000_000 + frac * mul, 0, data, origlen, 0)
                        break
                    continue
                buf, pos, skipped = self._pcap_resync(src, buf, pos, unpack, hlen, limit, frac_max, (lo, hi) if count else None)
                self.problems.add("garbage", 1, f"{self.path}: bytes that are not a record where one should start; skipped to the next record")
                self.problems.add("garbage_bytes", skipped)
                if pos is None:
                    break
                continue
            more = src.read(CHUNK)
            if not more:
                if blen - pos:
                    self.problems.add("truncated_record", 1, f"{self.path}: the last record header is cut by the end of the file ({blen - pos} bytes)")
                break
            buf, pos = buf[pos:] + more, 0
        self.records_read = count

    def _pcap_resync(self, src: _Input, buf: bytes, pos: int, unpack, hlen: int, limit: int, frac_max: int,
                     window: tuple[int, int] | None) -> tuple[bytes, int | None, int]:
        """The next position after `pos` where a plausible record header is followed by another
        (or by the end of the file). Returns (buffer, position or None at the end, bytes skipped)."""
        buf = buf[pos:]
        while not src.eof and len(buf) < 2 * MAX_CAPLEN + 64:
            buf += src.read(CHUNK)

        def plausible(p: int) -> int | None:
            if p + hlen > len(buf):
                return None
            sec, frac, caplen, origlen = unpack(buf, p)
            if caplen > limit or frac >= frac_max or origlen < caplen or origlen > 1 << 20:
                return None
            if window is not None and not window[0] <= sec <= window[1]:
                return None
            return p + hlen + caplen

        skipped = 0
        p = 1
        while True:
            if p + hlen > len(buf):
                if src.eof:
                    return b"", None, skipped + len(buf)
                buf, p, skipped = buf[p:] + src.read(CHUNK), 0, skipped + p
                continue
            nxt = plausible(p)
            if nxt is not None:
                while nxt + hlen > len(buf) and not src.eof:
                    buf += src.read(CHUNK)
                if nxt == len(buf) and src.eof or plausible(nxt) is not None:
                    return buf[p:], 0, skipped + p
            p += 1

    # --- pcapng ----------------------------------------------------------------------------

    def _pcapng_drive(self, src: _Input, loop: Any) -> Iterator[None]:
        """Walks the file's blocks: `loop.run_pcapng` takes every run of complete Enhanced Packet
        Blocks of known interfaces; here are the other blocks, the end, and damage."""
        buf, pos = self._head, 0
        order = "<"
        base = 0  # index in self.interfaces of this section's interface 0
        hdr = struct.Struct("<II")
        epb = struct.Struct("<IIIII")
        count = 0
        last_ts = 0
        ifaces: tuple = ()
        while True:
            if len(ifaces) != len(self.interfaces):
                ifaces = tuple((i.link_type, i.ts_mul, i.ts_div, i.ts_offset_ns) for i in self.interfaces)
            if len(buf) - pos >= 32 and ifaces:
                pos, n, ts = loop.run_pcapng(buf, pos, order == ">", base, ifaces)
                if n:
                    count += n
                    last_ts = ts
                    yield None
            if len(buf) - pos < 12:
                buf, pos = buf[pos:] + src.read(CHUNK), 0
                if len(buf) < 12:
                    if buf:
                        self.problems.add("truncated_record", 1, f"{self.path}: the last block is cut by the end of the file")
                    break
            btype, blen = hdr.unpack_from(buf, pos)
            if btype == PCAPNG_SHB:
                if len(buf) - pos < 12:
                    continue
                bom = struct.unpack_from("<I", buf, pos + 8)[0]
                order = "<" if bom == BYTE_ORDER_MAGIC else ">" if bom == 0x4D3C2B1A else order
                hdr, epb = struct.Struct(order + "II"), struct.Struct(order + "IIIII")
                btype, blen = hdr.unpack_from(buf, pos)
            if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                buf, pos, skipped = self._pcapng_resync(src, buf, pos, hdr)
                self.problems.add("garbage", 1, f"{self.path}: bytes that are not a block where one should start; skipped to the next block")
                self.problems.add("garbage_bytes", skipped)
                if pos is None:
                    break
                continue
            end = pos + blen
            if end > len(buf):
                buf, pos = buf[pos:] + src.read(max(CHUNK, blen)), 0
                end = blen
                while end > len(buf) and not src.eof:
                    buf += src.read(end - len(buf))
                if end > len(buf):
                    cut = self._cut_block(buf, hdr, epb, base)
                    self.problems.add("truncated_record", 1, f"{self.path}: the last block is cut by the end of the file; its packet kept as captured")
                    if cut is not None:
                        count += 1
                        loop.packet(*cut)
                    break
            if struct.unpack_from(order + "I", buf, end - 4)[0] != blen:
                buf, pos, skipped = self._pcapng_resync(src, buf, pos, hdr)
                self.problems.add("garbage", 1, f"{self.path}: a block whose trailing length does not match; skipped to the next block")
                self.problems.add("garbage_bytes", skipped)
                if pos is None:
                    break
                continue
            if btype == EPB:
                ifc, hi, lo, caplen, origlen = epb.unpack_from(buf, pos + 8)
                if caplen > blen - 32:
                    caplen = max(0, blen - 32)  # a caplen the block cannot hold: keep what it holds
                i = base + ifc
                if i >= len(self.interfaces):
                    self.problems.add("unknown_interface", 1, f"{self.path}: packets of an interface never described (no IDB)")
                else:
                    it = self.interfaces[i]
                    data = buf[pos + 28 : pos + 28 + caplen]
                    opt_at = pos + 28 + ((caplen + 3) & ~3)
                    flags = _epb_flags(buf, opt_at, end - 4, order) if opt_at + 4 < end - 4 else 0
                    count += 1
                    last_ts = pcapng_ts(hi, lo, it.ts_mul, it.ts_div, it.ts_offset_ns)
                    loop.packet(last_ts, i, data, origlen, flags)
            elif btype == IDB:
                self.interfaces.append(_idb(buf, pos, blen, order))
            elif btype == SPB:
                if base < len(self.interfaces):
                    origlen = struct.unpack_from(order + "I", buf, pos + 8)[0]
                    it = self.interfaces[base]
                    caplen = min(origlen, blen - 16, it.snaplen or origlen)
                    count += 1
                    self.problems.add("no_timestamps")
                    loop.packet(last_ts, base, buf[pos + 12 : pos + 12 + caplen], origlen, 0)  # SPBs carry no time: the last one seen
            elif btype == OPB:
                ifc, _drops, hi, lo, caplen, origlen = struct.unpack_from(order + "HHIIII", buf, pos + 8)
                i = base + ifc
                if i < len(self.interfaces):
                    it = self.interfaces[i]
                    count += 1
                    last_ts = pcapng_ts(hi, lo, it.ts_mul, it.ts_div, it.ts_offset_ns)
                    loop.packet(last_ts, i, buf[pos + 28 : pos + 28 + min(caplen, blen - 32)], origlen, 0)
            elif btype == PCAPNG_SHB:
                base = len(self.interfaces)  # interface ids restart in each section
            pos = end
        yield None
        self.records_read = count

    def _cut_block(self, buf: bytes, hdr: struct.Struct, epb: struct.Struct, base: int) -> tuple | None:
        """The packet of an EPB cut by the end of the file, as captured (None for other blocks)."""
        btype, _ = hdr.unpack_from(buf, 0)
        if btype != EPB or len(buf) < 28:
            return None
        ifc, hi, lo, caplen, origlen = epb.unpack_from(buf, 8)
        i = base + ifc
        if i >= len(self.interfaces):
            return None
        it = self.interfaces[i]
        return pcapng_ts(hi, lo, it.ts_mul, it.ts_div, it.ts_offset_ns), i, buf[28 : 28 + caplen], origlen, 0

    def _pcapng_resync(self, src: _Input, buf: bytes, pos: int, hdr: struct.Struct) -> tuple[bytes, int | None, int]:
        """The next position after `pos` where a packet or interface block's lengths agree."""
        buf = buf[pos:]
        skipped = 0
        p = 4
        while True:
            if p + 12 > len(buf):
                if src.eof:
                    return b"", None, skipped + len(buf)
                buf, p, skipped = buf[p:] + src.read(CHUNK), 0, skipped + p
                continue
            btype, blen = hdr.unpack_from(buf, p)
            if btype in (EPB, IDB, SPB, PCAPNG_SHB) and 12 <= blen <= MAX_BLOCK and blen % 4 == 0:
                while p + blen > len(buf) and not src.eof:
                    buf += src.read(CHUNK)
                if p + blen <= len(buf) and struct.unpack_from(hdr.format[0] + "I", buf, p + blen - 4)[0] == blen:
                    return buf[p:], 0, skipped + p
            p += 4


MAX_TS = 1 << 62  # ns: the year 2116. pcapng timestamps are 64-bit counts of any unit: a damaged one is clamped here


def pcapng_ts(hi: int, lo: int, mul: int, div: int, offset: int) -> int:
    """An EPB's timestamp in ns since the epoch, clamped to [0, MAX_TS]."""
    ts = ((hi << 32) | lo) * mul // div + offset
    return 0 if ts < 0 else MAX_TS if ts > MAX_TS else ts


class RecordLoop:
    """What a Capture feeds: the framing of runs of records (run_pcap, run_pcapng) and single
    records (packet). This class frames in Python and hands each record to `packet`; the importer's
    compiled loop (capture/importers/_pcap.c) does the same steps in C."""

    def packet(self, ts: int, ifc: int, frame: bytes, orig_len: int, direction: int) -> None:
        raise NotImplementedError

    def run_pcap(self, buf: bytes, pos: int, big: bool, nano: bool, hlen: int, limit: int, lo: int, hi: int) -> tuple[int, int, int, int]:
        """Every complete record from pos whose header is plausible: caplen <= limit, the fraction
        below a second, origlen >= caplen, seconds in [lo, hi] (then a day before to a year after
        it). Returns (pos after them, lo, hi, records)."""
        unpack = (_REC_BE if big else _REC_LE).unpack_from
        frac_max = 1_000_000_000 if nano else 1_000_000
        mul = 1 if nano else 1000
        blen = len(buf)
        n = 0
        packet = self.packet
        while pos + hlen <= blen:
            sec, frac, caplen, origlen = unpack(buf, pos)
            end = pos + hlen + caplen
            if end > blen or caplen > limit or frac >= frac_max or origlen < caplen or not lo <= sec <= hi:
                break
            packet(sec * 1_000_000_000 + frac * mul, 0, buf[pos + hlen : end], origlen, 0)
            lo, hi = sec - 86400, sec + 366 * 86400
            pos = end
            n += 1
        return pos, lo, hi, n

    def run_pcapng(self, buf: bytes, pos: int, big: bool, base: int, ifaces: tuple) -> tuple[int, int, int]:
        """Every complete Enhanced Packet Block from pos (total length in [32, MAX_BLOCK], a multiple
        of 4, the trailing copy equal) of a known interface (ifaces: (link, ts_mul, ts_div,
        ts_offset_ns) by index; the block's id is relative to `base`). Returns (pos after them,
        records, the last one's ts)."""
        order = ">" if big else "<"
        hdr = _HDR_BE if big else _HDR_LE
        epb = _EPB_BE if big else _EPB_LE
        blen_buf = len(buf)
        n = ts = 0
        packet = self.packet
        while pos + 32 <= blen_buf:
            btype, blen = hdr.unpack_from(buf, pos)
            end = pos + blen
            if btype != EPB or blen < 32 or blen % 4 or blen > MAX_BLOCK or end > blen_buf or (_U32_BE if big else _U32_LE).unpack_from(buf, end - 4)[0] != blen:
                break
            ifc, thi, tlo, caplen, origlen = epb.unpack_from(buf, pos + 8)
            i = base + ifc
            if i >= len(ifaces):
                break
            if caplen > blen - 32:
                caplen = blen - 32  # a caplen the block cannot hold: keep what it holds
            _link, mul, div, offset = ifaces[i]
            opt_at = pos + 28 + ((caplen + 3) & ~3)
            flags = _epb_flags(buf, opt_at, end - 4, order) if opt_at + 4 < end - 4 else 0
            ts = pcapng_ts(thi, tlo, mul, div, offset)
            packet(ts, i, buf[pos + 28 : pos + 28 + caplen], origlen, flags)
            pos = end
            n += 1
        return pos, n, ts


class Collector(RecordLoop):
    """Records as tuples, a list at a time (Capture.batches, tests)."""

    def __init__(self, out: list | None = None) -> None:
        self.batch: list[tuple[int, int, bytes, int, int]] = []

    def packet(self, ts: int, ifc: int, frame: bytes, orig_len: int, direction: int) -> None:
        self.batch.append((ts, ifc, frame, orig_len, direction))

    def take(self) -> list[tuple[int, int, bytes, int, int]]:
        out, self.batch = self.batch, []
        return out


_REC_LE, _REC_BE = struct.Struct("<IIII"), struct.Struct(">IIII")
_HDR_LE, _HDR_BE = struct.Struct("<II"), struct.Struct(">II")
_EPB_LE, _EPB_BE = struct.Struct("<IIIII"), struct.Struct(">IIIII")
_U32_LE, _U32_BE = struct.Struct("<I"), struct.Struct(">I")


def _epb_flags(buf: bytes, pos: int, end: int, order: str) -> int:
    """The direction bits of an EPB's epb_flags option (0 when absent)."""
    opt = struct.Struct(order + "HH")
    while pos + 4 <= end:
        code, length = opt.unpack_from(buf, pos)
        if code == 0:
            break
        if code == 2 and length == 4 and pos + 8 <= end:
            return struct.unpack_from(order + "I", buf, pos + 4)[0] & 3
        pos += 4 + ((length + 3) & ~3)
    return 0


def _idb(buf: bytes, pos: int, blen: int, order: str) -> Interface:
    link, _reserved, snaplen = struct.unpack_from(order + "HHI", buf, pos + 8)
    it = Interface(link, snaplen)
    p, end = pos + 16, pos + blen - 4
    opt = struct.Struct(order + "HH")
    while p + 4 <= end:
        code, length = opt.unpack_from(buf, p)
        if code == 0:
            break
        value = buf[p + 4 : p + 4 + length]
        if code == 2:  # if_name
            it.name = value.decode("utf-8", "replace").rstrip("\0") or None
        elif code == 9 and length >= 1:  # if_tsresol: 10^-n, or 2^-n with the high bit set
            r = value[0]  # resolutions finer than 2^-62 or 10^-18 s cannot be real: taken as those
            if r & 0x80:
                it.ts_mul, it.ts_div = 1_000_000_000, 1 << min(r & 0x7F, 62)
            else:
                n = min(r & 0x7F, 18)
                it.ts_mul, it.ts_div = (10 ** (9 - n), 1) if n <= 9 else (1, 10 ** (n - 9))
        elif code == 14 and length == 8:  # if_tsoffset: seconds
            it.ts_offset_ns = max(-MAX_TS, min(MAX_TS, struct.unpack(order + "q", value)[0] * 1_000_000_000))
        p += 4 + ((length + 3) & ~3)
    return it


class _Prefixed:
    """A file whose first bytes were read already (to tell gzip from a capture), without seeking:
    the file may be a pipe or a reader that hashes what passes."""

    def __init__(self, head: bytes, f: Any) -> None:
        self.head, self.f = head, f

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n < 0:
                out, self.head = self.head + self.f.read(), b""
                return out
            out, self.head = self.head[:n], self.head[n:]
            if len(out) < n:
                out += self.f.read(n - len(out))
            return out
        return self.f.read(n)

    def close(self) -> None:
        self.f.close()


def _not_a_capture(path: Path, head: bytes, compressed: bool) -> NotACapture:
    what = "gzip-compressed data" if compressed else "a file"
    if not head:
        return NotACapture(f"{path}: {what} with nothing in it, not a pcap or pcapng capture")
    return NotACapture(f"{path}: not a pcap or pcapng capture ({what} starting with {head[:8].hex(' ')})")


def open_capture(path: Path, problems: Problems | None = None, fileobj: Any = None) -> Capture:
    """Open a capture and read its header (NotACapture, one line, when it is not a capture).
    `fileobj`: the file already opened (read from its start), e.g. one that hashes what is read."""
    path = Path(path)
    problems = problems if problems is not None else Problems()
    if fileobj is not None:
        raw = fileobj
    else:
        try:
            raw = open(path, "rb")
        except OSError as e:
            raise NotACapture(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        first = raw.read(2)
        compressed = first == b"\x1f\x8b"
        f: IO[bytes] = gzip.GzipFile(fileobj=_Prefixed(first, raw), mode="rb") if compressed else _Prefixed(first, raw)  # type: ignore[assignment]
        try:
            head = f.read(64 * 1024)
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
            raise NotACapture(f"{path}: a damaged gzip stream, not a readable capture ({e})") from None
        if len(head) >= 24 and struct.unpack_from("<I", head)[0] in PCAP_MAGIC:
            order, nano, hlen = PCAP_MAGIC[struct.unpack_from("<I", head)[0]]
            _major, _minor, _zone, _sigfigs, snaplen, link = struct.unpack_from(order + "HHiIII", head, 4)
            # the link type's upper bits may hold an FCS length (LINKTYPE_FCS): the type is the low 16
            cap = Capture(path, "pcap", compressed, problems, [Interface(link & 0xFFFF, snaplen)], _f=f, _raw=raw, _head=head[24:],
                          _pcap=(order, nano, hlen))
            return cap
        if len(head) >= 28 and struct.unpack_from("<I", head)[0] == PCAPNG_SHB:
            bom = head[8:12]
            if bom in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
                cap = Capture(path, "pcapng", compressed, problems, [], _f=f, _raw=raw, _head=head)
                return cap
        raise _not_a_capture(path, head, compressed)
    except BaseException:
        raw.close()
        raise
