"""HTTP/2 connections for differential testing of capture/decode/_http2.c against http2.H2Connection.

A connection is (steps, at_start): steps are (ts_ns, data, from_client, length) as the recorder
hands segments over (`length` > len(data): bytes not captured after `data`; None: all of it).
`random_connection(rng)` draws one from generated connections (hpack.Encoder header blocks with
every field the rows use, Huffman or not, never-indexed, table size updates, CONTINUATION, padding,
priority, 1xx, trailers with gRPC status and percent-encoded messages, odd statuses, resets with
late trailers, pushes, pings), from the real capture (tests/data/h2c.pcap), then cut, merged,
damaged (gaps, flipped bytes, lost segments), joined mid-way, or plain random bytes. It takes
a `random.Random`, so hypothesis (st.randoms) and the AddressSanitizer run (a seed) share it.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import hpack
from hpack import NeverIndexedHeaderTuple

from flowtape.capture.decode.http_pairing import H2_PREFACE

Step = tuple[int, bytes, bool, "int | None"]
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)

PATHS = ["/", "/index.html?user=bob&token=x", "/flowtape.test.Echo/Unary", "/a/b/c", "//m", "/s?q=1&&r", "", "/caf\xe9?k=v=w",
         "/pkg.Svc/Method?x=1"]
METHODS = ["GET", "POST", "HEAD", "PUT", "CONNECT", "X"]
AUTHORITIES = ["127.0.0.1:8082", "", "example.com", "h\xe9"]
CTYPES = ["application/grpc", "application/grpc+proto", "text/html", "application/json", "", "application/grp"]
STATUSES = ["200", "204", "404", "500", "100", "103", "101", "\xb2", "2x0", "", "0200", "9" * 19, "999999999999999999"]
GRPC_STATUSES = ["0", "5", "14", "4", "x", "", "99", "\xb9"]
MESSAGES = ["backend down", "no%20such%20key%3A%20k1", "%E2%82%AC", "%ff%fe", "plain", ""]
OTHER = ["x-id", "accept", "cookie", "date", "server", "x-\xe9", "grpc-timeout", "te", ":scheme"]


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def _value(rng: random.Random) -> str:
    return rng.choice(["v", "", "a" * rng.randint(1, 300), "caf\xe9", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                       "".join(chr(rng.randrange(256)) for _ in range(rng.randint(0, 20)))])


def _fields(rng: random.Random, base: list[tuple[str, str]]) -> list[Any]:
    fields = list(base)
    for _ in range(rng.randint(0, 4)):
        fields.insert(rng.randint(0, len(fields)), (rng.choice(OTHER), _value(rng)))
    if rng.random() < 0.1:  # a name repeated: the last one is kept
        fields.append(rng.choice(fields) if fields else ("x", "y"))
    out = []
    for n, v in fields:
        out.append(NeverIndexedHeaderTuple(n, v) if rng.random() < 0.1 else (n, v))
    return out


class _Side:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.enc = hpack.Encoder()

    def block(self, fields: list[Any]) -> bytes:
        rng = self.rng
        if rng.random() < 0.08:
            self.enc.header_table_size = rng.choice([0, 64, 256, 4096, 1024])
        return self.enc.encode(fields, huffman=rng.random() < 0.7)  # (str as UTF-8: the decoders read latin-1 bytes)


def _headers_frames(rng: random.Random, sid: int, block: bytes, end_stream: bool, ftype: int = HEADERS) -> list[bytes]:
    """HEADERS (or PUSH_PROMISE) + CONTINUATION frames for one block, with padding and priority at times."""
    cut = rng.randint(0, len(block)) if rng.random() < 0.2 else len(block)
    first, rest = block[:cut], block[cut:]
    flags = (0x1 if end_stream else 0) | (0x4 if not rest else 0)
    payload = first
    if ftype == PUSH_PROMISE:
        payload = struct.pack(">I", sid + 1) + payload
    elif rng.random() < 0.1:
        flags |= 0x20
        payload = b"\x00\x00\x00\x03\x10" + payload
    if rng.random() < 0.1:
        pad = rng.randint(0, 20)
        flags |= 0x8
        payload = bytes([pad if rng.random() < 0.9 else 255]) + payload + bytes(pad)
    out = [frame(ftype, flags, sid, payload)]
    while rest:
        k = rng.randint(1, len(rest))
        piece, rest = rest[:k], rest[k:]
        out.append(frame(CONTINUATION, 0 if rest else 0x4, sid, piece))
    return out


def generated_connection(rng: random.Random) -> list[Step]:
    cli, srv = _Side(rng), _Side(rng)
    settings = b"" if rng.random() < 0.7 else struct.pack(">HI", 1, rng.choice([0, 100, 4096, 65536, 1 << 20]))
    events: list[tuple[bool, bytes]] = [(True, H2_PREFACE + frame(SETTINGS, 0, 0, settings)), (False, frame(SETTINGS, 0, 0, b""))]
    pending: list[list] = []
    for i in range(rng.randint(1, 10)):
        sid = 2 * i + 1
        grpc = rng.random() < 0.4
        req = [(":method", "POST" if grpc else rng.choice(METHODS)), (":scheme", "http"), (":path", rng.choice(PATHS)),
               (":authority" if rng.random() < 0.9 else "host", rng.choice(AUTHORITIES))]
        if rng.random() < 0.2:
            req.append(("host", rng.choice(AUTHORITIES)))
        if rng.random() < 0.7:
            req.append(("user-agent", rng.choice(["h2load nghttp2/1.52.0", "grpc-python/1.60", _value(rng)])))
        if grpc or rng.random() < 0.2:
            req.append(("content-type", "application/grpc" if grpc else rng.choice(CTYPES)))
        if rng.random() < 0.3:
            req.append(("traceparent", _value(rng)))
        body = rng.random() < 0.4
        acts: list = [("req", sid, req, not body)]
        if body:
            acts.append(("data", True, sid, rng.randint(0, 3000), True))
        if rng.random() < 0.1:
            acts.append(("status", sid, "100", False))
        resp_ct = "application/grpc" if grpc and rng.random() < 0.9 else rng.choice(CTYPES)
        status = "200" if rng.random() < 0.7 else rng.choice(STATUSES)
        trailers = grpc or rng.random() < 0.1
        if rng.random() < 0.12:
            acts.append(("rst", rng.random() < 0.6, sid, rng.choice([8, 0, 2, 99, 7])))
            if rng.random() < 0.5:
                acts.append(("sleep",))
        if rng.random() < 0.05:
            acts.append(("push", sid))
        acts.append(("resp", sid, [(":status", status), ("content-type", resp_ct)], not trailers and rng.random() < 0.3))
        if rng.random() < 0.8:
            acts.append(("data", False, sid, rng.randint(0, 5000), not trailers))
        if trailers:
            t = [("grpc-status", rng.choice(GRPC_STATUSES))]
            if rng.random() < 0.6:
                t.append(("grpc-message", rng.choice(MESSAGES)))
            acts.append(("trailers", sid, t))
        if rng.random() < 0.1:
            acts.append(("noise", rng.random() < 0.5))
        pending.append(acts)
    while any(pending):
        acts = rng.choice([a for a in pending if a])
        act = acts.pop(0)
        kind = act[0]
        if kind == "req":
            _, sid, fields, end = act
            events += [(True, f) for f in _headers_frames(rng, sid, cli.block(_fields(rng, fields)), end)]
        elif kind in ("resp", "status"):
            if kind == "resp":
                _, sid, fields, end = act
            else:
                _, sid, code, end = act
                fields = [(":status", code)]
            events += [(False, f) for f in _headers_frames(rng, sid, srv.block(_fields(rng, fields)), end)]
        elif kind == "trailers":
            _, sid, fields = act
            events += [(False, f) for f in _headers_frames(rng, sid, srv.block(fields), True)]
        elif kind == "data":
            _, fc, sid, n, end = act
            while True:
                k = min(n, rng.randint(0, 2000))
                n -= k
                events.append((fc, frame(DATA, 0x1 if end and n == 0 else 0, sid, b"d" * k)))
                if n == 0:
                    break
        elif kind == "rst":
            _, fc, sid, code = act
            events.append((fc, frame(RST_STREAM, 0, sid, struct.pack(">I", code))))
        elif kind == "sleep":
            events.append((None, b""))  # the clock jumps past the reset linger
        elif kind == "push":
            events += [(False, f) for f in _headers_frames(rng, act[1], srv.block([(":method", "GET"), (":path", "/pushed")]), False, PUSH_PROMISE)]
        else:
            fc = act[1]
            events.append((fc, rng.choice([frame(PING, 0, 0, bytes(8)), frame(WINDOW_UPDATE, 0, 0, b"\0\0\x10\0"),
                                           frame(PRIORITY, 0, 1, bytes(5)), frame(SETTINGS, 1, 0, b""), frame(GOAWAY, 0, 0, bytes(8)),
                                           frame(RST_STREAM, 0, 1, b"\0\0"), frame(SETTINGS, 0, 0, b"\0\1\0"), frame(0x42, 0, 3, b"ext")])))
    steps: list[Step] = []
    ts = 1_000_000
    for fc, data in events:
        if fc is None:
            ts += 2 * 10**9
            continue
        ts += rng.randint(1, 50_000)
        if steps and steps[-1][2] == fc and rng.random() < 0.5:  # writers coalesce frames into one segment
            t0, d0, _, _ = steps[-1]
            steps[-1] = (t0, d0 + data, fc, None)
        else:
            steps.append((ts, data, fc, None))
    return steps


def resegment(rng: random.Random, steps: list[Step], size: int | None = None) -> list[Step]:
    out = []
    for ts, data, fc, length in steps:
        k = size or rng.choice([1, 7, 100, 1448, 1 << 20])
        pieces = [data[i : i + k] for i in range(0, len(data), k)] or [b""]
        out += [(ts, p, fc, None) for p in pieces[:-1]] + [(ts, pieces[-1], fc, length if length is None else length - (len(data) - len(pieces[-1])))]
    return out


def damage(rng: random.Random, steps: list[Step]) -> list[Step]:
    steps = list(steps)
    for _ in range(rng.randint(1, 3)):
        if not steps:
            break
        i = rng.randrange(len(steps))
        ts, data, fc, length = steps[i]
        full = len(data) if length is None else length
        what = rng.random()
        if what < 0.35:  # the capture prefix: the rest of the segment not seen
            steps[i] = (ts, data[: rng.randint(0, len(data))], fc, full)
        elif what < 0.55:  # a segment the ring buffer lost: its length is still known
            steps[i] = (ts, b"", fc, full)
        elif what < 0.8 and data:  # bytes flipped
            b = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            steps[i] = (ts, bytes(b), fc, length)
        else:
            del steps[i]
    return steps


def seed_connection(rng: random.Random, seeds: list[list[tuple[int, bytes, bool]]]) -> list[Step]:
    return [(ts, d, fc, None) for ts, d, fc in rng.choice(seeds)]


def random_connection(rng: random.Random, seeds: list[list[tuple[int, bytes, bool]]]) -> tuple[list[Step], bool]:
    what = rng.random()
    if what < 0.08:  # random bytes, with and without a preface
        steps = [(i, (H2_PREFACE if i == 0 and rng.random() < 0.5 else b"") + rng.randbytes(rng.randint(0, 200)), rng.random() < 0.5,
                  None if rng.random() < 0.7 else rng.randint(0, 300)) for i in range(rng.randint(1, 10))]
        return steps, rng.random() < 0.5
    steps = seed_connection(rng, seeds) if what < 0.3 else generated_connection(rng)
    if rng.random() < 0.5:
        steps = resegment(rng, steps)
    at_start = True
    if rng.random() < 0.2 and len(steps) > 2:  # joined mid-way
        steps = steps[rng.randrange(1, len(steps)) :]
        at_start = False
    if rng.random() < 0.4:
        steps = damage(rng, steps)
    return steps, at_start


def run(conn: Any, steps: list[Step]) -> list[Any]:
    """Everything a decoder says about a connection: rows per step, close rows, a second close."""
    out: list[Any] = [conn.feed_tuples(ts, data, fc, length) for ts, data, fc, length in steps]
    out.append(conn.close_tuples(10**12))
    out.append(conn.close_tuples(10**12 + 1))
    return out
