"""Reading a BPF ring buffer map directly through mmap, a batch at a time.

bcc (and libbpf under it) hands each record to a Python callback through ctypes: at tens of
thousands of records per second that dispatch alone was ~7 µs per record, a quarter of the
L7 recorder's CPU time. The kernel's ring buffer is designed to be read from user space
without a system call per record (Documentation/bpf/ringbuf.rst): the map fd mmaps as

    page 0              consumer position (u64, read-write: we advance it)
    page 1              producer position (u64, read-only)
    page 2 ...          data, max_entries bytes (the kernel also offers them twice in a row so
                        that a record wrapping past the end reads as one slice; we map them
                        once, see below)

and each record is an 8-byte header (u32 length with BUSY and DISCARD bits, u32 page offset)
followed by the sample, the whole rounded up to 8 bytes. `RingReader.read()` copies out every
committed record up to the producer position and then advances the consumer position once.
Our programs submit with BPF_RB_NO_WAKEUP and the recorder reads on its own clock, so there is
no epoll here.

The data area is mapped once, not twice: the kernel populates every page of a ring mapping at
mmap time, so the second copy counted the whole ring again in the recorder's RSS (16 + 8 MiB for
the L7 and connection rings) for the rare record that wraps. A record header never wraps (records
are 8-byte aligned and the area's size is a power of two >= a page); a sample that does is read
in two pieces.

Positions are loaded and stored with single aligned 8-byte accesses (numpy scalars / ctypes),
never byte by byte (struct's '<Q' assembles bytes): the kernel reads the consumer position
concurrently to compute free space, and a torn value could let it overwrite records not yet
read. Plain aligned loads and stores are acquire/release on x86-64 (TSO), which is what the
kernel's smp_load_acquire/smp_store_release pairs need; elsewhere `supported()` is False and
`open_ring` returns bcc's callback reader behind the same `read()`.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
from typing import Any

import numpy as np

try:
    from . import _ring  # type: ignore[attr-defined]  # capture/live/_ring.c: the same loop, compiled
except ImportError:  # built without a C compiler: the Python loop below
    _ring = None

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER = 8
PAGE = mmap.PAGESIZE


def supported() -> bool:
    return platform.machine() in ("x86_64", "AMD64")


class RingReader:
    """Consumer side of one BPF_MAP_TYPE_RINGBUF map of `size` bytes (a power of two).

    `read` is capture/live/_ring.c's loop when it was built (`compiled`; a record costs ~0.2 µs
    there and ~0.7 µs in the Python loop, three records per plain HTTP request), else Python's."""

    def __init__(self, map_fd: int, size: int, compiled: bool | None = None):
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of two")
        self.size = size
        self.mask = size - 1
        self._cons_map = mmap.mmap(map_fd, PAGE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._data_map = mmap.mmap(map_fd, PAGE + size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=PAGE)
        self._cons = ctypes.c_uint64.from_buffer(self._cons_map)
        self._prod = np.frombuffer(self._data_map, dtype=np.uint64, count=1)
        self._words = np.frombuffer(self._data_map, dtype=np.uint32)  # record headers, read as whole words
        self._view = memoryview(self._data_map)
        self.compiled = _ring is not None if compiled is None else compiled
        if self.compiled and _ring is None:
            raise ValueError("capture/live/_ring.c was not built")

    def pending(self) -> bool:
        return int(self._prod[0]) != self._cons.value

    def read(self) -> list[bytes]:
        """Every committed record, oldest first; stops at the first record still being written."""
        if self.compiled:
            return _ring.read(self._data_map, self._cons_map, self.size, PAGE)
        cons = self._cons.value
        prod = int(self._prod[0])
        out: list[bytes] = []
        append = out.append
        words, view, mask = self._words, self._view, self.mask
        base = PAGE  # the data mapping starts with the producer page
        while cons < prod:
            at = base + (cons & mask)
            length = int(words[at >> 2])
            if length & BUSY_BIT:
                break
            size = length & ~(BUSY_BIT | DISCARD_BIT)
            if size + HEADER > mask + 1:
                raise ValueError(f"ring buffer record of {size} bytes in a ring of {mask + 1}: the ring is corrupt")
            if not length & DISCARD_BIT:
                start = (cons + HEADER) & mask  # the header never wraps; the sample may
                first = min(size, mask + 1 - start)
                sample = view[base + start : base + start + first].tobytes()
                if first < size:
                    sample += view[base : base + size - first].tobytes()
                append(sample)
            cons += (size + HEADER + 7) & ~7
        if out or cons != self._cons.value:
            self._cons.value = cons
        return out

    def close(self) -> None:
        del self._cons, self._prod, self._words
        self._view.release()
        self._cons_map.close()
        self._data_map.close()


class BccRing:
    """bcc's reader (one ctypes callback per record), where RingReader is not used: same read()."""

    def __init__(self, bpf: Any, table: Any):
        self._bpf = bpf
        self._got: list[bytes] = []
        table.open_ring_buffer(lambda _ctx, data, size: self._got.append(ctypes.string_at(data, size)))

    def read(self) -> list[bytes]:
        self._bpf.ring_buffer_consume()
        out, self._got = self._got, []
        return out

    def close(self) -> None:
        pass  # bcc frees its reader with the BPF object


def open_ring(bpf: Any, name: bytes, pages: int) -> RingReader | BccRing:
    """The reader of ring buffer map `name` (BPF_RINGBUF_OUTPUT(name, pages)) of a bcc BPF object."""
    table = bpf[name]
    if supported():
        return RingReader(table.map_fd, pages * PAGE)
    return BccRing(bpf, table)
