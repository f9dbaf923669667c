"""capture/decode/_dns.c and _tls.c (the compiled DNS message and ClientHello fast paths) against their
references: dns_fast.fast_parse (which dnslib holds in tests/test_dns_fast.py), and for ClientHellos
tls.parse_client_hello_reference (_tls.c is that reader for one record, whole or cut; it must also
answer wherever the Python fast path tls._fast_client_hello does).

They get the same bytes — the real seed captures at every cut, generated messages and hellos of every
handled kind, hand-built compression (chains, loops, the 32-jump limit, pointers into earlier names,
forward pointers, more names than the compiled name cache starts with), mutations, random bytes — and
must return the same value (a message, a hello, or None for "decline"). The same corpus then runs
through copies built with AddressSanitizer and UndefinedBehaviorSanitizer.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from ebpf_support import in_ci
from hypothesis import given, settings
from hypothesis import strategies as st

from flowtape.capture.decode import dns, tls
from flowtape.capture.decode.dns import DnsAnswer, DnsMessage, parse_dns, parse_dns_dnslib, qtype_name, rcode_name
from flowtape.capture.decode.dns_fast import fast_parse
from flowtape.capture.decode.tls import ClientHello, Malformed, _fast_client_hello, parse_client_hello, parse_client_hello_reference, version_name
from pcap_seeds import segments
from test_dns_fast import HANDLED, message
from test_tls_fast import hello
import sanitizer

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

if dns._dns is None or tls._tls is None:
    reason = "capture/decode/_dns.c or _tls.c is not built (no C compiler when flowtape was installed; scripts/bootstrap.sh installs gcc and python3-dev)"
    if in_ci():
        pytest.fail(f"CI host: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def py_dns(data: bytes):
    return fast_parse(data, DnsMessage, DnsAnswer, qtype_name, rcode_name)


def c_dns(data: bytes, mod=None):
    return (mod or dns._dns).fast_parse(data, DnsMessage, DnsAnswer, qtype_name, rcode_name)


def c_tls(data: bytes, mod=None):
    return (mod or tls._tls).fast_client_hello(data, ClientHello, version_name)


def same_dns(data: bytes) -> None:
    want, got = py_dns(data), c_dns(data)
    assert got == want, data
    assert type(got) is type(want) and (got is None or all(type(a) is DnsAnswer for a in got.answers))


def reference(data: bytes):
    try:
        return parse_client_hello_reference(data)
    except Malformed:
        return "malformed"


def same_tls(data: bytes) -> None:
    """The compiled reader answers as the reference does, or declines (None: the reference then answers);
    it declines nothing the Python fast path answers, and parse_client_hello is the reference."""
    got, want = c_tls(data), reference(data)
    if got is not None:
        assert got == want and type(got) is ClientHello, data
    if _fast_client_hello(data) is not None:
        assert got is not None, data
    try:
        assert parse_client_hello(data) == want
    except Malformed:
        assert want == "malformed"


# --- DNS --------------------------------------------------------------------------------------------


def compressed(rng: random.Random) -> bytes:
    """A response whose names are random mixes of labels and pointers to any earlier offset (backwards,
    at times forwards or onto themselves): chains, loops, pointers into the middle of names, the root."""
    out = bytearray(struct.pack("!HHHHHH", rng.randrange(65536), 0x8180, rng.choice([0, 1, 1, 1, 1, 1, 2]), rng.randint(0, 12), 0, 0))
    starts: list[int] = [12]

    def name() -> None:
        for _ in range(rng.randint(0, 4)):
            starts.append(len(out))
            if rng.random() < 0.3 and len(out) > 12:
                bad = [len(out) + rng.randint(0, 3), len(out)] if rng.random() < 0.1 else []  # forwards, onto itself
                out.extend(struct.pack("!H", 0xC000 | rng.choice(starts[:-1] + bad)))
                return
            label = bytes(rng.choice(b"abcXYZ09-_") for _ in range(rng.choice([1, 3, 8, 63])))
            out.append(len(label))
            out.extend(label)
        out.append(0)

    name()
    out.extend(struct.pack("!HH", rng.choice([1, 28, 5, 255]), 1))
    for _ in range(out[7]):
        name()
        rtype = rng.choice([1, 28, 2, 5, 12, 15, 16, 41, 33] if rng.random() < 0.05 else [1, 28, 2, 5, 12, 15, 16, 41])
        rd = bytearray()
        if rtype == 1:
            rd = bytearray(rng.randbytes(rng.choice([4] * 20 + [3])))
        elif rtype == 28:
            rd = bytearray(rng.choice([bytes(16), rng.randbytes(16), bytes(6) + rng.randbytes(4) + bytes(6)] * 5 + [rng.randbytes(15)]))
        elif rtype == 16:
            for _ in range(rng.randint(0, 3)):
                s = bytes(rng.choice(b' ab"\\~' * 10 + b'\x7f') for _ in range(rng.randint(0, 9)))
                rd += bytes([len(s)]) + s
        head_at = len(out)
        out.extend(struct.pack("!HHIH", rtype, 1, rng.randrange(2**32), 0))
        if rtype in (2, 5, 12, 15):
            if rtype == 15:
                out.extend(struct.pack("!H", rng.randrange(65536)))
            name()
            rd_len = len(out) - head_at - 10
        else:
            out.extend(rd)
            rd_len = len(rd)
        if rng.random() < 0.02:
            rd_len = rng.randrange(65536)
        struct.pack_into("!H", out, head_at + 8, rd_len)
    return bytes(out)


def test_the_compiled_path_is_the_one_in_use():
    assert dns._fast_parse is dns._dns.fast_parse


def test_seed_capture_at_every_cut():
    msgs = [s.payload for s in segments("dns") if s.proto == "udp"]
    assert len(msgs) >= 10
    taken = 0
    for m in msgs:
        taken += c_dns(m) is not None
        for cut in range(len(m) + 1):
            same_dns(m[:cut])
        assert parse_dns(m) == parse_dns_dnslib(m)
    assert taken == len(msgs)


def test_generated_messages_of_every_handled_type():
    rng = random.Random(20261202)
    for _ in range(3000):
        m = message(rng, [rng.choice(list(HANDLED)) for _ in range(rng.randint(0, 8))])
        assert c_dns(m) is not None
        same_dns(m)


def test_hand_built_compression_chains_and_loops():
    rng = random.Random(5)
    answered = declined = 0
    for _ in range(6000):
        m = compressed(rng)
        same_dns(m)
        got = c_dns(m)
        answered += got is not None
        declined += got is None
        for _ in range(3):
            same_dns(m[: rng.randint(0, len(m))])
    assert answered > 1000 and declined > 1000  # both outcomes are exercised, not only one


def test_jump_limit_and_loops():
    def chain(links: int) -> bytes:
        """A final answer name reached through `links` pointers kept in earlier A records' rdata (never
        read as names, so never cached) and one pointer from the name itself: links + 1 jumps."""
        out = bytearray(struct.pack("!HHHHHH", 1, 0x8180, 1, links + 1, 0, 0) + b"\x01a\x00\x00\x01\x00\x01")
        prev = 12
        for _ in range(links):
            out += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4)
            here = len(out)
            out += struct.pack("!H", 0xC000 | prev) + b"\x00\x00"
            prev = here
        return bytes(out + struct.pack("!H", 0xC000 | prev) + struct.pack("!HHIH", 1, 1, 60, 4) + b"\x0a\x00\x00\x01")

    for links, answered in ((30, True), (31, True), (32, False), (40, False)):
        m = chain(links)
        assert (c_dns(m) is not None) is answered, links
        same_dns(m)
        assert parse_dns(m) == parse_dns_dnslib(m) or not answered
    head = struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0)
    loop = head + b"\x01b\xc0\x0c\x00\x01\x00\x01"  # a label, then a pointer back onto it: a loop
    assert c_dns(loop) is None
    same_dns(loop)
    self_ptr = head + b"\xc0\x0c\x00\x01\x00\x01"
    assert c_dns(self_ptr) is None
    same_dns(self_ptr)


def test_many_names_grow_the_name_cache():
    rng = random.Random(11)
    m = message(rng, ["CNAME"] * 150 + ["A"] * 100)  # hundreds of distinct names: the 64-slot table must grow
    assert c_dns(m) is not None and len(c_dns(m).answers) == 250
    same_dns(m)


@settings(max_examples=1500, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6), st.integers(0, 900))
def test_mutated_and_cut_messages(seed, flips, cut):
    rng = random.Random(seed)
    data = bytearray(message(rng, [rng.choice(list(HANDLED)) for _ in range(rng.randint(1, 6))]) if seed % 2 else compressed(rng))
    for at, value in flips:
        data[at % len(data)] = value
    same_dns(bytes(data[:cut]))
    same_dns(bytes(data))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(data):
    same_dns(data)
    same_dns(b"\x12\x34\x81\x80\x00\x01\x00\x03\x00\x00\x00\x00" + data)


def test_not_bytes_is_a_type_error_and_memoryview_works():
    m = message(random.Random(1), ["A"])
    assert c_dns(memoryview(m)) == py_dns(m)
    with pytest.raises(TypeError):
        c_dns("not bytes")


# --- TLS --------------------------------------------------------------------------------------------


def test_the_compiled_hello_path_is_the_one_in_use(monkeypatch):
    calls = []
    real = tls._tls.fast_client_hello

    class Spy:
        def fast_client_hello(self, *a):
            calls.append(1)
            return real(*a)

    monkeypatch.setattr(tls, "_tls", Spy())
    h = hello(random.Random(3))
    assert tls.parse_client_hello(h) == _fast_client_hello(h) and calls == [1]
    cut = h[: len(h) - 3]
    assert tls.parse_client_hello(cut) == parse_client_hello_reference(cut) and calls == [1, 1]


def test_real_hellos_at_every_cut():
    hellos = [s.payload for s in segments("tls") if s.payload[:1] == b"\x16" and len(s.payload) > 5 and s.payload[5] == 1]
    assert hellos and any(c_tls(h).sni for h in hellos)
    for h in hellos:
        assert c_tls(h) is not None
        for cut in range(len(h) + 1):
            same_tls(h[:cut])
            if cut >= 11:  # 6 bytes of handshake: from there on every cut is read here, not by the reference
                assert c_tls(h[:cut]) is not None and c_tls(h[:cut]).truncated == (cut < len(h)), cut


def test_generated_hellos():
    rng = random.Random(20261202)
    for _ in range(4000):
        h = hello(rng)
        assert c_tls(h) is not None
        same_tls(h)


def test_two_alpn_and_sni_extensions_and_non_ascii():
    def ext(t: int, body: bytes) -> bytes:
        return struct.pack("!HH", t, len(body)) + body

    def sni(name: bytes) -> bytes:
        inner = b"\x00" + struct.pack("!H", len(name)) + name
        return ext(0, struct.pack("!H", len(inner)) + inner)

    def alpn(*protos: bytes) -> bytes:
        inner = b"".join(bytes([len(p)]) + p for p in protos)
        return ext(16, struct.pack("!H", len(inner)) + inner)

    exts = sni(b"Caf\xc3\xa9.Example..") + sni(b"second.test") + alpn(b"h2") + alpn(b"\xff", b"") + ext(43, b"\x04\x7a\x7a\x03\x04")
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + struct.pack("!H", len(exts)) + exts
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    h = b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs
    got = c_tls(h)
    assert got == ClientHello("TLS 1.3", "caf\\xc3\\xa9.example", ("\\xff", ""), False)
    same_tls(h)


@settings(max_examples=1500, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 255)), max_size=5), st.integers(0, 800))
def test_mutated_and_cut_hellos(seed, flips, cut):
    data = bytearray(hello(random.Random(seed)))
    for at, value in flips:
        data[at % len(data)] = value
    same_tls(bytes(data[:cut]))
    same_tls(bytes(data))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_hello_bytes(data):
    same_tls(data)
    same_tls(b"\x16\x03\x01" + struct.pack("!H", len(data) + 4) + b"\x01" + len(data).to_bytes(3, "big") + data)


# --- the same corpus under AddressSanitizer -----------------------------------------------------------

ASAN_SCRIPT = """
import random, sys
sys.path.insert(0, {tests!r})
import _dns_asan, _tls_asan
from flowtape.capture.decode.dns import DnsAnswer, DnsMessage, qtype_name, rcode_name
from flowtape.capture.decode.dns_fast import fast_parse
from flowtape.capture.decode.tls import ClientHello, Malformed, _fast_client_hello, parse_client_hello, parse_client_hello_reference, version_name
from test_dns_fast import HANDLED, message
from test_dns_tls_compiled import compressed
from test_tls_fast import hello
rng = random.Random(20261202)
for i in range({n}):
    m = message(rng, [rng.choice(list(HANDLED)) for _ in range(rng.randint(0, 6))]) if i % 2 else compressed(rng)
    m = bytearray(m)
    for _ in range(rng.randint(0, 3)):
        m[rng.randrange(len(m))] = rng.randrange(256)
    for cut in (len(m), rng.randint(0, len(m))):
        d = bytes(m[:cut])
        if fast_parse(d, DnsMessage, DnsAnswer, qtype_name, rcode_name) != _dns_asan.fast_parse(d, DnsMessage, DnsAnswer, qtype_name, rcode_name):
            print("DNS MISMATCH", d); sys.exit(3)
    h = bytearray(hello(rng))
    for _ in range(rng.randint(0, 3)):
        h[rng.randrange(len(h))] = rng.randrange(256)
    for cut in (len(h), rng.randint(0, len(h))):
        d = bytes(h[:cut])
        got = _tls_asan.fast_client_hello(d, ClientHello, version_name)
        try:
            want = parse_client_hello_reference(d)
        except Malformed:
            want = None
        if got is not None and got != want:
            print("TLS MISMATCH", d); sys.exit(3)
print("ok", {n})
"""


PLANT = ("    Py_ssize_t n = view.len;", "    Py_ssize_t n = view.len; volatile unsigned char z = d[n + 8]; (void)z;")


def test_under_address_sanitizer(tmp_path):
    sanitizer.require_gcc("capture/decode/_dns.c and _tls.c")
    # planted overreads: one byte past the message, one past the hello
    sanitizer.build(tmp_path, "capture/decode/_dns.c", "_dns_planted", PLANT)
    sanitizer.build(tmp_path, "capture/decode/_tls.c", "_tls_planted", PLANT)
    for mod, call in (("_dns_planted", "fast_parse(bytearray(b'x' * 12), *[None] * 4)"), ("_tls_planted", "fast_client_hello(bytearray(b'x' * 9), None, None)")):
        planted = sanitizer.run(tmp_path, f"import {mod}; {mod}.{call}", HERE)
        assert planted.returncode == 86 and "heap-buffer-overflow" in planted.stderr, planted.stderr[-2000:]

    sanitizer.build(tmp_path, "capture/decode/_dns.c", "_dns_asan")
    sanitizer.build(tmp_path, "capture/decode/_tls.c", "_tls_asan")
    n = 4000
    result = sanitizer.run(tmp_path, ASAN_SCRIPT.format(tests=str(HERE), n=n), HERE)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert f"ok {n}" in result.stdout
