"""TCP segment ordering for one direction of a connection, shared by the live recorder and importers.

Segments arrive as (ts, seq, data, length): out of order, retransmitted, overlapping, or never (a
lost event, a packet the capture dropped). `SegmentOrder.push` emits (ts, data, length) in sequence
order; bytes never seen become an explicit gap (ts, b"", length) so the decoder above knows.
capture/decode/_http1.c's feed_http reads `next`, `held` and `skip_to` by name: keep them.
"""

from __future__ import annotations

HOLD_NS = 200_000_000  # an out-of-order segment waits this long for the gap before it to fill
MAX_HELD = 16  # segments held per direction before the gap is declared unseen
SEQ_MOD = 1 << 32


class SegmentOrder:
    """Puts one direction's segments in sequence order; drops retransmitted bytes; turns bytes
    never seen (a lost event, a segment dropped by the ring buffer) into an explicit gap.

    `skip_to`: the kernel was asked not to send body bytes before this sequence number
    (L7Decoder.skip_body); a segment arriving after such a gap follows it at once."""

    __slots__ = ("next", "held", "held_since", "skip_to")

    def __init__(self) -> None:
        self.next: int | None = None
        self.held: dict[int, tuple[int, bytes, int]] = {}
        self.held_since = 0
        self.skip_to: int | None = None

    def push(self, ts: int, seq: int, data: bytes, length: int, out: list) -> None:
        if self.next is None:
            self.next = seq
        delta = (seq - self.next) % SEQ_MOD
        if self.skip_to is not None:
            left = (self.skip_to - self.next) % SEQ_MOD  # body bytes the kernel may still skip
            if left == 0 or left >= SEQ_MOD // 2:
                self.skip_to = None  # the stream reached the body's end: gaps are losses again
            elif 0 < delta <= left:
                out.append((ts, b"", delta))  # body bytes the kernel skipped on our request: passed, not lost
                self.next = seq
                delta = 0
        if delta == 0:
            out.append((ts, data, length))
            self.next = (seq + length) % SEQ_MOD
            if self.held:
                self._drain(out)
        elif delta < SEQ_MOD // 2:  # ahead: an earlier segment is missing (reordered or lost)
            if not self.held:
                self.held_since = ts
            self.held[seq] = (ts, data, length)
            if len(self.held) > MAX_HELD:
                self.release(out)
        else:  # behind: a retransmission, maybe partly new
            back = SEQ_MOD - delta
            if back < length:
                out.append((ts, data[back:], length - back))
                self.next = (seq + length) % SEQ_MOD
                if self.held:
                    self._drain(out)

    def _drain(self, out: list) -> None:
        while self.held:
            nxt = self.next
            hit = self.held.pop(nxt, None) if nxt is not None else None
            if hit is None:
                # a held segment now behind (overlap) is cut, one still ahead waits
                behind = [s for s in self.held if (s - nxt) % SEQ_MOD >= SEQ_MOD // 2]
                if not behind:
                    return
                for s in behind:
                    ts, data, length = self.held.pop(s)
                    self.push(ts, s, data, length, out)
                continue
            ts, data, length = hit
            out.append((ts, data, length))
            self.next = (nxt + length) % SEQ_MOD

    def release(self, out: list) -> None:
        """Give up waiting: the bytes before the first held segment are an unseen gap."""
        while self.held:
            first = min(self.held, key=lambda s: (s - self.next) % SEQ_MOD)
            gap = (first - self.next) % SEQ_MOD
            ts = self.held[first][0]
            if gap:
                out.append((ts, b"", gap))
            self.next = first
            self._drain(out)
