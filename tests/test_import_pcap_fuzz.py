"""Hypothesis fuzzing of the importer: the packet parser, the TCP state machine, and the whole packet
loop on generated packet sequences and on mutated capture files, with the compiled loop (_pcap.c)
held to the Python one (packet_loop.py): the same calls on the sink, with the same arguments.

FLOWTAPE_FUZZ_EXAMPLES raises the number of examples for a longer local run (the default suits CI).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from flowtape.capture.importers import packets as P
from flowtape.capture.importers import pcap as pcap_import
from flowtape.capture.importers.packet_loop import PacketLoop
from flowtape.capture.importers.pcap_reader import NotACapture, open_capture
from flowtape.capture.importers.tcp_conns import SEQ_MOD, ConnTable, close_state
from pcap_build import (ACK, FIN, PSH, RST, SYN, bsd_loopback, cooked_v1, cooked_v2, ethernet, ip_packet, tcp_segment, udp_datagram,
                        write_pcap, write_pcapng)

EXAMPLES = int(os.environ.get("FLOWTAPE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LINKS = [1, 113, 276, 101, 228, 229, 12, 14, 0, 108, 105]
DATA = Path(__file__).parent / "data"


# --- the packet parser ----------------------------------------------------------------------------------


@FUZZ
@given(st.sampled_from(LINKS), st.binary(max_size=200), st.integers(0, 70000))
def test_parser_never_raises_and_its_fields_hold(link, frame, orig_len):
    p = P.parse(link, frame, orig_len)
    if isinstance(p, str):
        assert p in ("not_ip", "ip_header_cut", "unknown_link_type")
        return
    assert p[P.FAMILY] in (4, 6) and len(p[P.SRC]) == len(p[P.DST]) == (4 if p[P.FAMILY] == 4 else 16)
    assert p[P.PAYLEN] >= 0 and p[P.IP_LEN] >= 0
    if p[P.SPORT] is not None:
        assert 0 <= p[P.SPORT] < 65536 and p[P.POFF] >= p[P.L4OFF] >= 0
        assert p[P.PAYLEN] == max(0, p[P.L3_END] - p[P.POFF])


# --- generated packet sequences through both loops -------------------------------------------------------


class Recorder:
    """A sink that writes down every call (the loops' whole output)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name: str):
        def call(*args):
            self.calls.append((name, *args))
            return True
        return call


HOSTS = ["198.18.0.1", "198.18.0.2", "2001:db8::1", "2001:db8::2"]
PAYLOADS = [b"", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            b"\x16\x03\x01\x00\x30\x01" + b"\0" * 48, b"\x00\x1c" + b"\x12\x34\x01\x00" + b"\0" * 24, b"x" * 1500, b"POST"]


@st.composite
def segment(draw) -> bytes:
    v6 = draw(st.booleans())
    a, b = (HOSTS[2], HOSTS[3]) if v6 else (HOSTS[0], HOSTS[1])
    if draw(st.booleans()):
        a, b = b, a
    ports = draw(st.sampled_from([(40000, 80), (80, 40000), (40001, 53), (53, 40001), (40002, 443), (443, 40002)]))
    proto = draw(st.sampled_from([6, 6, 6, 17, 1]))
    payload = draw(st.one_of(st.sampled_from(PAYLOADS), st.binary(max_size=64)))
    if proto == 6:
        flags = draw(st.sampled_from([SYN, SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK, ACK | FIN | PSH, 0xFF]))
        seq = draw(st.sampled_from([1000, 1001, 1029, 5000, 5001, SEQ_MOD - 10])) + draw(st.integers(-3, 3))
        opts = struct.pack("!BBH", 2, 4, draw(st.sampled_from([536, 1460, 0]))) if flags & SYN else b""
        l4 = tcp_segment(*ports, seq, draw(st.integers(0, 10000)), flags, payload, opts)
    elif proto == 17:
        l4 = udp_datagram(*ports, payload)
    else:
        l4 = b"\x08\0\0\0" + payload
    ip = ip_packet(a, b, proto, l4, frag=draw(st.sampled_from([0x4000, 0x4000, 0x2000, 0x0010])))
    if draw(st.integers(0, 9)) == 0:  # a cut or flipped byte
        ip = bytearray(ip)
        i = draw(st.integers(0, len(ip) - 1))
        ip[i] = draw(st.integers(0, 255))
        ip = bytes(ip[: draw(st.integers(0, len(ip)))])
    return ip


@st.composite
def capture(draw) -> tuple[int, list[tuple[int, bytes, int]]]:
    link = draw(st.sampled_from([1, 113, 276, 101, 0]))
    wrap = {1: ethernet, 113: cooked_v1, 276: lambda ip: cooked_v2(ip, draw(st.sampled_from([3, 4]))), 101: lambda ip: ip, 0: bsd_loopback}[link]
    t = 1_767_225_600_000_000_000
    out = []
    for _ in range(draw(st.integers(1, 40))):
        t += draw(st.sampled_from([0, 1000, 500_000, 3_000_000, 1_100_000_000, 31_000_000_000]))
        fr = wrap(draw(segment())) if draw(st.integers(0, 15)) else draw(st.binary(max_size=80))
        out.append((t, fr, len(fr) + draw(st.sampled_from([0, 0, 0, 100]))))
        if draw(st.integers(0, 5)) == 0:
            out.append(out[-1])  # the same frame again: a duplicate, or a second sighting
    return link, out


def normalised(calls: list[tuple]) -> list:
    """Runs of conn_end calls sorted: the compiled loop ends connections in slot order."""
    out, run = [], []
    for c in calls:
        if c[0] == "conn_end":
            run.append(repr(c))
            continue
        out += sorted(run)
        run = []
        out.append(repr(c))
    return out + sorted(run)


def feed(loop, link: int, records) -> None:
    loop.start_file(0)
    loop.set_links([link])
    for ts, fr, orig in records:
        loop.packet(ts, 0, fr, orig, 0)
    loop.finish()


needs_c = pytest.mark.skipif(pcap_import._pcap is None, reason="capture/importers/_pcap.c was not built")


@needs_c
@FUZZ
@given(capture(), st.sampled_from([1_000_000_000, 5_000_000_000]))
def test_compiled_loop_makes_the_python_loops_calls(cap, interval):
    link, records = cap
    a, b = Recorder(), Recorder()
    feed(pcap_import._pcap.Loop(a, interval, (53,)), link, records)
    feed(PacketLoop(b, interval, (53,)), link, records)
    assert normalised(a.calls) == normalised(b.calls)


# --- mutated capture files through the reader and both loops -------------------------------------------


def seed_files(tmp: Path) -> list[bytes]:
    frames = [(1_767_225_600_000_000_000 + i * 1000, ethernet(ip_packet("198.18.0.1", "198.18.0.2", 6, tcp_segment(40000, 80, 1000 + i, 1, ACK, b"p" * i))))
              for i in range(12)]
    return [(DATA / "http.pcap").read_bytes()[:6000], write_pcap(tmp / "a.pcap", frames).read_bytes(),
            write_pcapng(tmp / "a.pcapng", frames).read_bytes(), write_pcap(tmp / "n.pcap", frames, nano=True, big=True).read_bytes()]


@needs_c
@FUZZ
@given(st.data())
def test_damaged_files_read_the_same_with_both_loops(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("fz")
    raw = bytearray(data.draw(st.sampled_from(seed_files(tmp))))
    for _ in range(data.draw(st.integers(0, 5))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        i = data.draw(st.integers(24, max(24, len(raw) - 1)))
        if op == "flip" and i < len(raw):
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=40))
        elif op == "delete":
            del raw[i : i + data.draw(st.integers(1, 40))]
        else:
            del raw[i:]
    path = tmp / "x.cap"
    path.write_bytes(bytes(raw))
    logs = []
    for make in (lambda s: pcap_import._pcap.Loop(s, 1_000_000_000, (53,)), lambda s: PacketLoop(s, 1_000_000_000, (53,))):
        try:
            cap = open_capture(path)
        except NotACapture:
            return
        sink = Recorder()
        loop = make(sink)
        loop.start_file(0)
        cap.feed(pcap_import._LinkWatch(cap, loop))
        loop.finish()
        cap.close()
        logs.append((normalised(sink.calls), dict(cap.problems.counts), cap.records_read))
    assert logs[0] == logs[1]


# --- the TCP state machine -------------------------------------------------------------------------------


@FUZZ
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([SYN, SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, 0]),
                          st.integers(0, SEQ_MOD - 1), st.integers(0, 3000)), max_size=50))
def test_tcp_state_machine_holds_its_invariants(segments):
    ended = []
    table = ConnTable(lambda st_, end: ended.append((st_, end)))
    key, rev = (b"\x01" * 4, 40000, b"\x02" * 4, 80), (b"\x02" * 4, 80, b"\x01" * 4, 40000)
    ts = 0
    for from_client, flags, seq, paylen in segments:
        ts += 1000
        hit = table.lookup(key if from_client else rev, rev if from_client else key, flags, seq, ts)
        if hit is None:
            continue
        conn, fc = hit
        conn.packet(ts, fc, seq, flags, paylen)
        table.after(conn, key if fc else rev)
        for d in (conn.c2s, conn.s2c):
            assert d.high >= 0 and 0 <= d.retrans <= d.segs
    table.finish(ts)
    for st_, end in ended:
        assert close_state(st_, end) in ("closed", "reset", "refused", "timeout", "open")
    assert not table.by_key and not table.by_id


@st.composite
def http_capture(draw) -> list[tuple[int, bytes]]:
    """HTTP/1.1 connections with bodies of any size, cut into segments of any size, some segments
    repeated or swapped: the compiled loop's in-order path and the Python path must agree."""
    from pcap_build import Conversation

    t = 1_767_225_600_000_000_000
    frames: list[tuple[int, bytes]] = []
    for c in range(draw(st.integers(1, 3))):
        conv = Conversation("198.18.0.1", 40000 + c, "198.18.0.2", 80, isn_c=draw(st.integers(0, SEQ_MOD - 1)))
        frames += conv.handshake(t)
        for _ in range(draw(st.integers(1, 3))):
            body = b"b" * draw(st.sampled_from([0, 10, 1500, 9000, 70_000]))
            req = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
            resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            for from_client, data in ((True, req), (False, resp)):
                segs = conv.send(t, from_client, data, mss=draw(st.sampled_from([7, 100, 1448])))
                if len(segs) > 2 and draw(st.booleans()):
                    i = draw(st.integers(0, len(segs) - 2))
                    segs[i], segs[i + 1] = segs[i + 1], segs[i]
                if segs and draw(st.booleans()):
                    segs.append(segs[draw(st.integers(0, len(segs) - 1))])
                frames += segs
                t += 1_000_000
        frames += conv.close(t)
        t += 10_000_000
    return frames


@needs_c
@settings(max_examples=max(20, EXAMPLES // 10), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(http_capture())
def test_http_tapes_are_the_same_with_both_loops(tmp_path_factory, frames):
    from test_import_pcap import both_loops

    tmp = tmp_path_factory.mktemp("http")
    path = write_pcap(tmp / "h.pcap", frames)
    mp = pytest.MonkeyPatch()
    try:
        got = both_loops(tmp, [path], mp)
    finally:
        mp.undo()
    assert got["http"]
