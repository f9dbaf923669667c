"""HTTP/1.x streams for differential testing of capture/decode/_http1.c against the Python decoder.

A stream is a list of steps (from_client, data, length): one direction's segment, in stream
order per direction, of which the decoder sees the first `len(data)` of `length` bytes — the
way the recorder hands segments over. `random_stream(rng)` builds one from real captures
(tests/data/http.pcap), from generated exchanges covering every framing rule (Content-Length,
chunked with extensions and trailers, HEAD, 1xx, 101, CONNECT, 204/304, close-delimited,
pipelining, malformed lengths) cut at random places, and from mutations and random bytes.
It takes a `random.Random`, so hypothesis (through st.randoms) and the AddressSanitizer run
(a plain seed) draw from the same generator.
"""

from __future__ import annotations

import random
from typing import Any

from pcap_seeds import segments

Step = tuple[bool, bytes, int]

METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"CONNECT", b"OPTIONS", b"PROPFIND", b"X-CUSTOM", b"G\xe9T", b""]
TARGETS = [b"/", b"/a/b?x=1&y=&z", b"/s?q=secret&page=2", b"*", b"/%E2%82%AC?a=b=c&&d", b"/caf\xe9?k=v"]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTX/1.1", b"HTTP/1.1 extra"]
STATUSES = [b"200", b"204", b"304", b"404", b"500", b"100", b"101", b"103", b"201", b"099", b"600", b"20", b"2x0"]
NAMES = [b"Host", b"host", b"HOST", b"User-Agent", b"content-type", b"Content-Type", b"traceparent", b"X-Other", b"Content-Lengthy"]
VALUES = [b"v", b" spaced \t", b"", b"caf\xe9", b"a, b", b"\x85x\xa0", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
SEEDS: list[tuple[bool, bytes]] = [(s.dst_port == 8080, s.payload) for s in segments("http")]


def _length_headers(rng: random.Random, n: int) -> list[bytes]:
    choice = rng.random()
    if choice < 0.6:
        return [b"Content-Length: %d" % n]
    if choice < 0.7:
        return [b"Content-Length: %d" % n, b"content-length:%d " % n]  # repeated, identical
    if choice < 0.75:
        return [b"Content-Length: %d, %d" % (n, n)]
    if choice < 0.9:
        return [b"Content-Length: %d" % n]
    return [rng.choice([b"Content-Length: %d, %d" % (n, n + 1), b"Content-Length: -1", b"Content-Length: 1e3",
                        b"Content-Length: \xb2", b"Content-Length: " + b"9" * 25, b"Content-Length:", b"Content-Length: 0x10"])]


def _chunked(rng: random.Random, body: bytes) -> bytes:
    out = b""
    while body:
        k = rng.randint(1, len(body))
        size = b"%x" % k if rng.random() < 0.8 else b"%X" % k
        ext = rng.choice([b"", b"", b";name=value", b" ; x"])
        out += size + ext + b"\r\n" + body[:k] + b"\r\n"
        body = body[k:]
    if rng.random() < 0.1:
        out += rng.choice([b"-5\r\n", b"+5\r\n", b"0x5\r\n", b"1_0\r\n", b"zz\r\n", b"f" * 20 + b"\r\n"])
    out += b"0\r\n"
    if rng.random() < 0.3:
        out += b"X-Trailer: t\r\n"
    return out + b"\r\n"


def _headers(rng: random.Random) -> list[bytes]:
    return [rng.choice(NAMES) + b":" + rng.choice(VALUES) for _ in range(rng.randint(0, 5))]


def _body(rng: random.Random, is_request: bool) -> tuple[list[bytes], bytes]:
    """Framing headers and the body bytes after the head."""
    body = bytes(rng.randint(0, 255) for _ in range(rng.choice([0, 1, 5, 40, 300])))
    kind = rng.random()
    if kind < 0.45:
        return _length_headers(rng, len(body)), body
    if kind < 0.7:
        te = rng.choice([b"Transfer-Encoding: chunked", b"transfer-encoding: gzip, CHUNKED ", b"Transfer-Encoding: chunked\xa0",
                         b"Transfer-Encoding: gzip"])
        if te.lower().strip().endswith(b"chunked"):
            return [te] + ([b"Content-Length: 3"] if rng.random() < 0.2 else []), _chunked(rng, body)
        return [te], body
    if kind < 0.8 and not is_request:
        return [], body  # runs until the connection closes
    return [], b""


def _request(rng: random.Random) -> tuple[bytes, bytes]:
    method = rng.choice(METHODS) if rng.random() < 0.15 else rng.choice([b"GET", b"POST", b"HEAD"])
    version = rng.choice(VERSIONS) if rng.random() < 0.1 else b"HTTP/1.1"
    framing, body = _body(rng, True)
    lines = [method + b" " + rng.choice(TARGETS) + b" " + version] + _headers(rng) + framing
    rng.shuffle(lines[1:])
    return method, b"\r\n".join(lines) + b"\r\n\r\n" + body


def _response(rng: random.Random, method: bytes) -> bytes:
    out = b""
    if rng.random() < 0.15:
        out += b"HTTP/1.1 " + rng.choice([b"100 Continue", b"103 Early Hints"]) + b"\r\n\r\n"
    status = rng.choice(STATUSES) if rng.random() < 0.4 else b"200"
    framing, body = _body(rng, False)
    if method in (b"HEAD", b"CONNECT") or status in (b"204", b"304", b"101"):
        body = b"" if rng.random() < 0.8 else body
    reason = rng.choice([b" OK", b"", b" Not Found"])
    lines = [rng.choice([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.1"]) + b" " + status + reason] + _headers(rng) + framing
    return out + b"\r\n".join(lines) + b"\r\n\r\n" + body


def _segments(rng: random.Random, stream: bytes, from_client: bool, prefix: int | None) -> list[Step]:
    """Cut a direction's bytes into segments; some seen only in part (a capture prefix)."""
    out, pos = [], 0
    while pos < len(stream):
        n = rng.choice([1, 3, 17, 64, 200, 1460, len(stream)])
        seg = stream[pos : pos + n]
        seen = seg if prefix is None else seg[:prefix]
        if rng.random() < 0.01:
            seen = b""  # a segment lost entirely: only its length is known
        out.append((from_client, seen, len(seg)))
        pos += n
    return out


def generated_stream(rng: random.Random) -> list[Step]:
    """Exchanges on one connection. A response's segments come after its request's last one
    (a server answers what it has read); requests may run ahead of responses (pipelining)."""
    prefix = rng.choice([None, None, None, None, 7, 40, 128, 512])
    client: list[tuple[int, Step]] = []  # (exchange, step)
    server: list[tuple[int, Step]] = []
    if rng.random() < 0.05:  # an HTTP/2 preface (or its start) first
        client.append((-1, (True, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[: rng.randint(1, 24)], 0)))
    for i in range(rng.randint(1, 5)):
        method, req = _request(rng)
        req = (b"\r\n" if rng.random() < 0.05 else b"") + req
        client += [(i, step) for step in _segments(rng, req, True, prefix)]
        if rng.random() < 0.9:
            server += [(i, step) for step in _segments(rng, _response(rng, method), False, prefix)]
    out: list[Step] = []
    sent = -2  # last exchange whose request is wholly sent
    while client or server:
        can_answer = server and server[0][0] < sent + 1 and (not client or client[0][0] > server[0][0])
        if can_answer and (not client or rng.random() < 0.6):
            out.append(server.pop(0)[1])
        elif client:
            i, step = client.pop(0)
            out.append(step)
            if not client or client[0][0] != i:
                sent = i
        else:  # responses with no request left to wait for
            out.append(server.pop(0)[1])
    return out


def mutated_stream(rng: random.Random) -> list[Step]:
    steps = []
    for _ in range(rng.randint(1, 8)):
        from_client, data = rng.choice(SEEDS)
        data = bytearray(data)
        for _ in range(rng.randint(0, 4)):
            i = rng.randint(0, max(0, len(data) - 1))
            op = rng.random()
            if op < 0.4 and data:
                data[i] = rng.randint(0, 255)
            elif op < 0.7:
                data[i:i] = bytes(rng.randint(0, 255) for _ in range(rng.randint(1, 8)))
            elif data:
                del data[i : i + rng.randint(1, 8)]
        cut = rng.randint(0, len(data))
        steps.append((from_client, bytes(data[:cut]), len(data) + rng.choice([0, 0, 1, 100, 5000])))
    return steps


def random_bytes_stream(rng: random.Random) -> list[Step]:
    return [(rng.random() < 0.5, bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 300))), rng.randint(0, 600))
            for _ in range(rng.randint(0, 6))]


def random_stream(rng: random.Random) -> list[Step]:
    r = rng.random()
    if r < 0.6:
        return generated_stream(rng)
    if r < 0.9:
        return mutated_stream(rng)
    return random_bytes_stream(rng)


CLIENT_SEQ, SERVER_SEQ = 0xFFFFFFC0, 7


def run(conn: Any, steps: list[Step]) -> list[Any]:
    """Everything a decoder says about a stream: rows per step, body_remaining, close rows."""
    out: list[Any] = []
    # sequence numbers of each direction's first byte: near the wrap for the requests, so the
    # rows' request_seq/response_seq also check the modulo
    conn.set_seq_base(True, CLIENT_SEQ)
    conn.set_seq_base(False, SERVER_SEQ)
    for i, (from_client, data, length) in enumerate(steps):
        out.append(conn.feed_tuples(1000 + i, data, from_client, max(length, len(data))))
        out.append((conn.body_remaining(True), conn.body_remaining(False)))
    out.append(conn.close_tuples(1000 + len(steps)))
    out.append(conn.close_tuples(2000 + len(steps)))  # a second close emits nothing
    return out
