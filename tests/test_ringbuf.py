"""capture/ringbuf.RingReader against a real BPF ring buffer: every record, in order, byte for
byte, across many wrap-arounds of a one-page ring, with discarded records skipped and a full
ring counted by the kernel, not corrupted."""

from __future__ import annotations

import os

import pytest
from ebpf_support import ebpf_host, require_ebpf, skip_or_fail  # noqa: F401  (fixture)

pytestmark = [pytest.mark.ebpf, require_ebpf()]

# One record per getppid() of this test process: a sequence number and (seq * 7) % 201 bytes of
# a pattern; every 5th record is reserved and discarded, which the reader must skip.
PROG = rb"""
struct rec { u32 seq; u32 len; u8 data[256]; };
BPF_RINGBUF_OUTPUT(ring, 1);
BPF_ARRAY(state, u64, 2);  /* [0] next seq, [1] records that found the ring full */
BPF_PERCPU_ARRAY(scratch, struct rec, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    if ((bpf_get_current_pid_tgid() >> 32) != TEST_PID)
        return 0;
    u32 zero = 0, one = 1;
    u64 *next = state.lookup(&zero);
    u64 *full = state.lookup(&one);
    struct rec *r = scratch.lookup(&zero);
    if (!next || !full || !r)
        return 0;
    u32 seq = *next;
    *next += 1;
    if (seq % 5 == 4) {
        struct rec *d = ring.ringbuf_reserve(sizeof(struct rec));
        if (d)
            ring.ringbuf_discard(d, 0);
        return 0;
    }
    u32 len = (seq * 7) % 201;  /* <= 200: within data[] */
    r->seq = seq;
    r->len = len;
    for (int i = 0; i < 200; i++)
        r->data[i] = (u8)(seq + i);
    u64 size = len;
    asm volatile("" : "+r"(size));  /* keep the mask below in the register the verifier checks */
    size &= 255;
    size += 8;
    if (ring.ringbuf_output(r, size, 0) != 0)
        __sync_fetch_and_add(full, 1);
    return 0;
}
"""


@pytest.fixture(params=["mmap-compiled", "mmap-python", "bcc"])
def ring(request):
    """Every reader ringbuf.open_ring can return: ours through mmap (its loop in capture/live/_ring.c,
    or in Python where that was not built), and bcc's fallback."""
    from bcc import BPF

    from flowtape.capture.live import ringbuf

    if request.param.startswith("mmap") and not ringbuf.supported():
        skip_or_fail("the mmap ring reader is used on x86-64 only")
    if request.param == "mmap-compiled" and ringbuf._ring is None:
        skip_or_fail("capture/live/_ring.c was not built (no C compiler when flowtape was installed)")
    bpf = BPF(text=PROG, cflags=[f"-DTEST_PID={os.getpid()}"])
    if request.param.startswith("mmap"):
        reader = ringbuf.RingReader(bpf[b"ring"].map_fd, ringbuf.PAGE, compiled=request.param == "mmap-compiled")
        assert reader.compiled == (request.param == "mmap-compiled")
    else:
        reader = ringbuf.BccRing(bpf, bpf[b"ring"])
    yield bpf, reader
    reader.close()
    bpf.cleanup()


def expected(seq: int) -> bytes:
    n = (seq * 7) % 201
    return seq.to_bytes(4, "little") + n.to_bytes(4, "little") + bytes((seq + i) & 0xFF for i in range(n))


def test_every_record_in_order_across_wraps(ring):
    bpf, reader = ring
    got: list[bytes] = []
    for _ in range(400):  # ~20 records per batch (under one page): ~30 wraps of the 4 KiB ring
        for _ in range(25):
            os.getppid()
        got += reader.read()
    want = [expected(s) for s in range(400 * 25) if s % 5 != 4]
    assert bpf[b"state"][1].value == 0, "the ring was full: batches too large for this test"
    assert len(got) == len(want) == 8000
    assert got == want
    if hasattr(reader, "pending"):  # the mmap reader: nothing left behind the consumer position
        assert not reader.pending()


def test_full_ring_is_counted_and_reading_resumes(ring):
    bpf, reader = ring
    for _ in range(500):  # far more than one page holds
        os.getppid()
    first = reader.read()
    full = bpf[b"state"][1].value
    assert full > 0 and len(first) > 0
    assert len(first) + full == 400  # every non-discarded record either read or counted as lost
    seqs = [int.from_bytes(r[:4], "little") for r in first]
    assert seqs == sorted(seqs) and all(r == expected(s) for r, s in zip(first, seqs))
    for _ in range(10):
        os.getppid()
    again = reader.read()
    assert [int.from_bytes(r[:4], "little") for r in again] == [s for s in range(500, 510) if s % 5 != 4]
