"""RingReader's two loops (capture/live/_ring.c and Python) on a ring laid out in memory as the
kernel lays it out: same records, same consumer position, through wraps, discarded records
and a record still being written. (tests/test_ringbuf.py runs both against a real BPF ring.)"""

from __future__ import annotations

import random

import pytest
from ebpf_support import in_ci
from ring_fake import SIZE, FakeRing

from flowtape.capture.live import ringbuf
from flowtape.capture.live.ringbuf import BUSY_BIT, DISCARD_BIT, PAGE

if ringbuf._ring is None:
    reason = "capture/live/_ring.c was not built (no C compiler when flowtape was installed)"
    if in_ci():
        pytest.fail(f"CI host: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


@pytest.mark.parametrize("seed", range(5))
def test_both_loops_read_the_same(seed):
    rng = random.Random(seed)
    rings = [FakeRing(), FakeRing()]
    readers = [rings[0].reader(True), rings[1].reader(False)]
    sent: list[bytes] = []
    got: list[list[bytes]] = [[], []]
    for _ in range(300):  # ~40 wraps of the 16 KiB area
        for _ in range(rng.randint(0, 12)):
            payload = bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 300)))
            discard = rng.random() < 0.2
            for ring in rings:
                ring.write(payload, DISCARD_BIT if discard else 0)
            if not discard:
                sent.append(payload)
        for i, reader in enumerate(readers):
            got[i] += reader.read()
        assert readers[0]._cons.value == readers[1]._cons.value == rings[0].prod
    assert got[0] == got[1] == sent


def test_a_busy_record_stops_the_read():
    ring = FakeRing()
    ring.write(b"first")
    ring.write(b"being written", BUSY_BIT)
    reader = ring.reader(True)
    assert reader.read() == [b"first"]
    assert reader._cons.value == 16  # past the first record only
    ring.data_map[PAGE + 16 : PAGE + 20] = len(b"being written").to_bytes(4, "little")  # committed now
    assert reader.read() == [b"being written"]
    assert reader._cons.value == ring.prod


def test_a_corrupt_length_is_an_error_not_a_read_past_the_ring():
    ring = FakeRing()
    ring.data_map[PAGE : PAGE + 4] = (SIZE + 8).to_bytes(4, "little")
    ring.prod = SIZE + 16
    ring.data_map[0:8] = ring.prod.to_bytes(8, "little")
    with pytest.raises(ValueError, match="corrupt"):
        ring.reader(True).read()


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("split", [0, 1, 7, 100])
def test_a_sample_wrapping_past_the_area_end_is_read_whole(compiled, split):
    """The data area is mapped once (RingReader), so a sample crossing its end comes in two pieces;
    `split` is how many of the sample's bytes sit before the end (0: the header ends the area)."""
    ring = FakeRing()
    reader = ring.reader(compiled)
    filler = SIZE - 8 - split - 8  # one record that leaves exactly 8 + split bytes before the end
    ring.write(bytes(filler))
    assert reader.read() == [bytes(filler)]
    payload = bytes(range(256)) * 2
    ring.write(payload)
    assert ring.prod % SIZE < 8 + len(payload)  # it did wrap
    assert reader.read() == [payload]
    assert reader._cons.value == ring.prod
