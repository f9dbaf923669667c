"""A small fixed-rate DNS load client (dnsperf-like) for bench_l7's DNS arm.

    python dns_load.py SERVER_IP QPS SECONDS NAME [NAME ...]

Sends A queries for the names in turn, at QPS queries/s in bursts every millisecond (open loop: it
does not wait for answers), from 16 UDP sockets (16 source ports, like a resolver's clients),
and matches every reply to its query by (socket, txid). Stops by itself after SECONDS plus a 1 s
drain. Prints one JSON line: sent, answered, unanswered, the achieved send rate and the answer rate.
Traffic goes only to SERVER_IP (a lab namespace's address).
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time


def query(txid: int, name: str) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0) + qname + b"\x00\x01\x00\x01"


def main() -> int:
    server, qps, seconds, names = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
    socks = []
    for _ in range(16):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setblocking(False)
        s.connect((server, 53))
        socks.append(s)
    # the query bytes per (name, txid) are built ahead: the client must not be the bottleneck
    bodies = [query(0, n)[2:] for n in names]
    pending: list[set[int]] = [set() for _ in socks]
    by_fd = {s.fileno(): i for i, s in enumerate(socks)}
    sent = answered = 0
    txid = 0
    t0 = time.monotonic()
    end = t0 + seconds
    tick = 0

    def drain(timeout: float) -> None:
        nonlocal answered
        ready, _, _ = select.select(socks, [], [], timeout)
        for s in ready:
            i = by_fd[s.fileno()]
            while True:
                try:
                    data = s.recv(2048)
                except BlockingIOError:
                    break
                t = (data[0] << 8) | data[1]
                if t in pending[i]:
                    pending[i].discard(t)
                    answered += 1

    while (now := time.monotonic()) < end:
        due = int((now - t0) * qps)  # queries that should have been sent by now
        while sent < due:
            i = sent % 16
            txid = (sent // 16) & 0xFFFF
            try:
                socks[i].send(struct.pack("!H", txid) + bodies[sent % len(bodies)])
            except BlockingIOError:
                break  # the socket buffer is full: counted as sent-late, retried next tick
            pending[i].add(txid)
            sent += 1
        tick += 1
        drain(max(0.0, t0 + tick / 1000 - time.monotonic()))
    drain_end = time.monotonic() + 1.0
    while time.monotonic() < drain_end and answered < sent:
        drain(0.05)
    elapsed = end - t0
    print(json.dumps({"sent": sent, "answered": answered, "unanswered": sent - answered,
                      "send_rate": round(sent / elapsed, 1), "answer_rate": round(answered / elapsed, 1), "seconds": elapsed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
