"""A BPF ring buffer laid out in memory as the kernel lays it out (Documentation/bpf/ringbuf.rst),
for RingReader without a kernel: tests/test_ring_reader.py and benchmarks/bench_ring.py."""

from __future__ import annotations

import ctypes
import mmap

import numpy as np

from flowtape.capture.live.ringbuf import PAGE, RingReader

SIZE = 4 * PAGE


class FakeRing:
    """The consumer page and the data mapping (producer page + the data area, once, as RingReader maps
    it: a record past the area's end wraps to its start) in memory."""

    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self.cons_map = mmap.mmap(-1, PAGE)
        self.data_map = mmap.mmap(-1, PAGE + size)
        self.prod = 0

    def write(self, payload: bytes, flags: int = 0) -> None:
        rec = (len(payload) | flags).to_bytes(4, "little") + bytes(4) + payload
        rec += bytes(-len(rec) % 8)
        k = self.prod % self.size
        first = min(len(rec), self.size - k)
        self.data_map[PAGE + k : PAGE + k + first] = rec[:first]
        if first < len(rec):  # wraps to the area's start
            self.data_map[PAGE : PAGE + len(rec) - first] = rec[first:]
        self.prod += len(rec)
        self.data_map[0:8] = self.prod.to_bytes(8, "little")

    def reader(self, compiled: bool) -> RingReader:
        r = object.__new__(RingReader)
        r.size, r.mask, r.compiled = self.size, self.size - 1, compiled
        r._cons_map, r._data_map = self.cons_map, self.data_map
        r._cons = ctypes.c_uint64.from_buffer(self.cons_map)
        r._prod = np.frombuffer(self.data_map, dtype=np.uint64, count=1)
        r._words = np.frombuffer(self.data_map, dtype=np.uint32)
        r._view = memoryview(self.data_map)
        return r
