"""tls._fast_client_hello against its reference (parse_client_hello_reference): on the seed
capture's real ClientHellos, on generated ones (every extension the decoder reads, GREASE, several
names, extension orders, hellos without extensions) and on mutations and cuts of them: the fast
path answers exactly as the reference, or declines (None) and the reference answers."""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from flowtape.capture.decode.tls import Malformed, _fast_client_hello, parse_client_hello, parse_client_hello_reference
from pcap_seeds import segments


def _vec(width: int, body: bytes) -> bytes:
    return len(body).to_bytes(width, "big") + body


def hello(rng: random.Random) -> bytes:
    exts = []
    if rng.random() < 0.9:
        names = b"".join(bytes([rng.choice([0, 0, 1])]) + _vec(2, rng.choice([b"Api.Example.COM.", b"a.test", b"\xff\x00x"])) for _ in range(rng.randint(1, 3)))
        exts.append((0, _vec(2, names)))
    if rng.random() < 0.8:
        exts.append((16, _vec(2, b"".join(_vec(1, p) for p in rng.sample([b"h2", b"http/1.1", b"grpc-exp", b""], rng.randint(0, 3))))))
    if rng.random() < 0.8:
        versions = rng.sample([0x0304, 0x0303, 0x0A0A, 0x7A7A, 0x0302], rng.randint(0, 4))
        exts.append((43, _vec(1, b"".join(struct.pack("!H", v) for v in versions))))
    for _ in range(rng.randint(0, 8)):  # extensions the decoder steps over
        exts.append((rng.choice([10, 11, 13, 35, 45, 51, 0x1A1A, 21]), bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))))
    rng.shuffle(exts)
    body = (struct.pack("!H", rng.choice([0x0303, 0x0301, 0x0302])) + bytes(32) + _vec(1, bytes(rng.randint(0, 32)))
            + _vec(2, bytes(2 * rng.randint(1, 40))) + _vec(1, b"\x00"))
    if exts or rng.random() < 0.9:
        body += _vec(2, b"".join(struct.pack("!H", t) + _vec(2, b) for t, b in exts))
    hs = b"\x01" + _vec(3, body)
    return b"\x16\x03\x01" + _vec(2, hs)


def reference(data: bytes):
    try:
        return parse_client_hello_reference(data)
    except Malformed:
        return "malformed"


def test_real_hellos_take_the_fast_path_and_equal_the_reference():
    hellos = [s.payload for s in segments("tls") if s.payload[:1] == b"\x16" and len(s.payload) > 5 and s.payload[5] == 1]
    assert hellos
    for h in hellos:
        assert _fast_client_hello(h) is not None
        assert _fast_client_hello(h) == reference(h)


def test_generated_hellos_are_taken_and_equal():
    rng = random.Random(20261201)
    for _ in range(3000):
        h = hello(rng)
        got = _fast_client_hello(h)
        assert got is not None and got == reference(h), h


@settings(max_examples=800, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 255)), max_size=5), st.integers(0, 800))
def test_mutated_and_cut_hellos_are_declined_or_equal(seed, flips, cut):
    data = bytearray(hello(random.Random(seed)))
    for at, value in flips:
        data[at % len(data)] = value
    h = bytes(data[:cut]) if cut < len(data) else bytes(data)
    got = _fast_client_hello(h)
    ref = reference(h)
    if got is not None:
        assert got == ref
    try:
        assert parse_client_hello(h) == ref
    except Malformed:
        assert ref == "malformed"
