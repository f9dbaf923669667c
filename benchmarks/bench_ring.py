"""RingReader.read per record: capture/live/_ring.c's loop against the Python loop it replaced, same run.

    .venv/bin/python benchmarks/bench_ring.py [--records 60000] [--repeat 5]

The ring is laid out in memory as the kernel lays it out (tests/ring_fake.py), filled with
records of the L7 probe's sizes for a plain keep-alive request (a 77-byte request segment, a
252-byte response head, a 100-byte body, each behind struct l7_event's 96-byte header), then read
whole by each loop; CPU time, fastest of --repeat. A plain HTTP request is three records.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from ring_fake import FakeRing  # noqa: E402

from flowtape.capture.live import ringbuf  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=60_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if ringbuf._ring is None:
        print("bench_ring: capture/live/_ring.c was not built (install gcc and python3-dev, then reinstall flowtape)", file=sys.stderr)
        return 2
    sizes = [96 + 77, 96 + 252, 96 + 100]
    records = [bytes([i % 251]) * sizes[i % 3] for i in range(args.records)]
    ring = FakeRing(size=1 << 25)
    for r in records:
        ring.write(r)
    us = {}
    for name, compiled in (("compiled", True), ("python", False)):
        reader = ring.reader(compiled)
        best = float("inf")
        for _ in range(args.repeat):
            reader._cons.value = 0
            t0 = time.process_time()
            got = reader.read()
            best = min(best, time.process_time() - t0)
        assert got == records, f"{name} loop read other records"
        us[name] = 1e6 * best / len(records)
    print(f"RingReader.read, {len(records)} records of {'/'.join(map(str, sizes))} bytes, fastest of {args.repeat}:")
    print(f"   compiled (capture/live/_ring.c) {us['compiled']:.3f} us/record   python loop {us['python']:.3f} us/record   "
          f"ratio {us['compiled'] / us['python']:.3f}; per plain HTTP request (3 records): {3 * us['compiled']:.2f} vs {3 * us['python']:.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
