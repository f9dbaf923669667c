"""Packet captures made in code for the importer's tests: frames (Ethernet, VLAN, QinQ, Linux
cooked v1/v2, raw IP, BSD loopback; IPv4, IPv6; TCP, UDP, ICMP) and files (pcap in both byte orders
and timestamp resolutions, pcapng, gzip). Checksums are left zero: no parser here reads them.

    conv = Conversation("198.18.0.1", 40000, "198.18.0.2", 80)
    frames = conv.handshake(t) + conv.send(t, True, b"GET / HTTP/1.1...") + conv.close(t)
    write_pcap(path, frames)                 # frames: [(ts_ns, frame bytes), ...]
"""

from __future__ import annotations

import gzip
import ipaddress
import struct
from dataclasses import dataclass, field
from pathlib import Path

SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08
MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def _ip(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def tcp_segment(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"", options: bytes = b"") -> bytes:
    options += b"\0" * (-len(options) % 4)
    doff = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq % (1 << 32), ack % (1 << 32), doff << 4, flags, 65535, 0, 0) + options + payload


def udp_datagram(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ip_packet(src: str, dst: str, proto: int, l4: bytes, ident: int = 0, frag: int = 0x4000, total: int | None = None) -> bytes:
    s, d = _ip(src), _ip(dst)
    if len(s) == 4:
        length = 20 + len(l4) if total is None else total
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, ident, frag, 64, proto, 0, s, d) + l4
    plen = len(l4) if total is None else total
    return struct.pack("!IHBB16s16s", 6 << 28, plen, proto, 64, s, d) + l4


def ethernet(ip: bytes, vlans: tuple[int, ...] = (), src: bytes = MAC_A, dst: bytes = MAC_B, qinq: bool = False) -> bytes:
    etype = 0x86DD if ip[:1] and ip[0] >> 4 == 6 else 0x0800
    tags = b""
    for i, vid in enumerate(vlans):
        tpid = 0x88A8 if qinq and i == 0 else 0x8100
        tags += struct.pack("!HH", tpid, vid)
    return dst + src + tags + struct.pack("!H", etype) + ip


def cooked_v1(ip: bytes, outgoing: bool = False) -> bytes:
    etype = 0x86DD if ip[:1] and ip[0] >> 4 == 6 else 0x0800
    return struct.pack("!HHH8sH", 4 if outgoing else 0, 1, 6, MAC_A + b"\0\0", etype) + ip


def cooked_v2(ip: bytes, ifindex: int = 3, outgoing: bool = False) -> bytes:
    etype = 0x86DD if ip[:1] and ip[0] >> 4 == 6 else 0x0800
    return struct.pack("!HHiHBB8s", etype, 0, ifindex, 1, 4 if outgoing else 0, 6, MAC_A + b"\0\0") + ip


def bsd_loopback(ip: bytes) -> bytes:
    return struct.pack("<I", 30 if ip[:1] and ip[0] >> 4 == 6 else 2) + ip


@dataclass
class Conversation:
    """One TCP connection's frames (Ethernet + IP), with sequence numbers kept for each side."""

    client: str
    cport: int
    server: str
    sport: int
    isn_c: int = 1000
    isn_s: int = 5000
    wrap: callable = field(default=ethernet)  # IP packet -> frame
    seq_c: int = 0
    seq_s: int = 0
    step_ns: int = 100_000

    def __post_init__(self) -> None:
        self.seq_c, self.seq_s = self.isn_c + 1, self.isn_s + 1

    def frame(self, from_client: bool, seq: int, ack: int, flags: int, payload: bytes = b"", options: bytes = b"", total: int | None = None) -> bytes:
        src, sp, dst, dp = (self.client, self.cport, self.server, self.sport) if from_client else (self.server, self.sport, self.client, self.cport)
        seg = tcp_segment(sp, dp, seq, ack, flags, payload, options)
        return self.wrap(ip_packet(src, dst, 6, seg, total=total))

    def handshake(self, t: int, mss: int | None = 1460) -> list[tuple[int, bytes]]:
        opt = struct.pack("!BBH", 2, 4, mss) if mss else b""
        s = self.step_ns
        return [
            (t, self.frame(True, self.isn_c, 0, SYN, options=opt)),
            (t + s, self.frame(False, self.isn_s, self.isn_c + 1, SYN | ACK, options=opt)),
            (t + 2 * s, self.frame(True, self.seq_c, self.seq_s, ACK)),
        ]

    def send(self, t: int, from_client: bool, data: bytes, mss: int = 1448) -> list[tuple[int, bytes]]:
        """`data` in segments of at most mss bytes, each ACKed by the other side."""
        out = []
        for i in range(0, len(data), mss):
            chunk = data[i : i + mss]
            if from_client:
                out.append((t, self.frame(True, self.seq_c, self.seq_s, ACK | PSH, chunk)))
                self.seq_c += len(chunk)
                out.append((t + 10_000, self.frame(False, self.seq_s, self.seq_c, ACK)))
            else:
                out.append((t, self.frame(False, self.seq_s, self.seq_c, ACK | PSH, chunk)))
                self.seq_s += len(chunk)
                out.append((t + 10_000, self.frame(True, self.seq_c, self.seq_s, ACK)))
            t += 20_000
        return out

    def close(self, t: int, client_first: bool = True) -> list[tuple[int, bytes]]:
        a, b = (True, False) if client_first else (False, True)
        out = []
        for i, who in enumerate((a, b)):
            seq = self.seq_c if who else self.seq_s
            ack = self.seq_s if who else self.seq_c
            out.append((t + i * 20_000, self.frame(who, seq, ack, FIN | ACK)))
            if who:
                self.seq_c += 1
            else:
                self.seq_s += 1
        out.append((t + 40_000, self.frame(a, self.seq_c if a else self.seq_s, self.seq_s if a else self.seq_c, ACK)))
        return out

    def reset(self, t: int, from_client: bool) -> list[tuple[int, bytes]]:
        seq = self.seq_c if from_client else self.seq_s
        return [(t, self.frame(from_client, seq, 0, RST))]


def write_pcap(path: Path, frames: list[tuple[int, bytes]], link: int = 1, nano: bool = False, big: bool = False,
               snaplen: int = 262144, compress: bool = False, cut_at: int | None = None) -> Path:
    """A classic pcap file of `frames` (ts_ns, bytes); cut_at: frames longer are cut to it (snaplen)."""
    o = ">" if big else "<"
    out = bytearray(struct.pack(o + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, snaplen, link))
    for ts, fr in frames:
        cap = fr if cut_at is None else fr[:cut_at]
        frac = ts % 1_000_000_000 if nano else (ts % 1_000_000_000) // 1000
        out += struct.pack(o + "IIII", ts // 1_000_000_000, frac, len(cap), len(fr)) + cap
    data = bytes(out)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def write_pcapng(path: Path, frames: list[tuple[int, bytes]] | list[tuple[int, bytes, int]], links: tuple[int, ...] = (1,),
                 names: tuple[str, ...] | None = None, tsresol: int = 6, flags: dict[int, int] | None = None,
                 compress: bool = False) -> Path:
    """A pcapng file: one section, an interface per link type in `links`; frames (ts_ns, bytes[, interface])."""
    out = bytearray(_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
    for i, link in enumerate(links):
        opts = b""
        if names:
            opts += _option(2, names[i].encode())
        if tsresol != 6:
            opts += _option(9, bytes([tsresol]))
        if opts:
            opts += _option(0, b"")
        out += _block(1, struct.pack("<HHI", link, 0, 262144) + opts)
    for n, item in enumerate(frames):
        ts, fr = item[0], item[1]
        ifc = item[2] if len(item) > 2 else 0
        units = ts // (10 ** (9 - tsresol))
        opts = b""
        if flags and n in flags:
            opts = _option(2, struct.pack("<I", flags[n])) + _option(0, b"")
        body = struct.pack("<IIIII", ifc, units >> 32, units & 0xFFFFFFFF, len(fr), len(fr)) + fr + b"\0" * (-len(fr) % 4) + opts
        out += _block(6, body)
    data = bytes(out)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def http_exchange_frames(t: int, conv: Conversation, path: str = "/", body: bytes = b"hello", status: int = 200) -> list[tuple[int, bytes]]:
    req = f"GET {path} HTTP/1.1\r\nHost: lab\r\nUser-Agent: build/1\r\n\r\n".encode()
    resp = f"HTTP/1.1 {status} OK\r\nContent-Length: {len(body)}\r\nContent-Type: text/plain\r\n\r\n".encode() + body
    return conv.send(t, True, req) + conv.send(t + 1_000_000, False, resp)


def dns_query(txid: int, name: str, qtype: int = 1) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


def dns_answer(txid: int, name: str, ip: str, ttl: int = 60) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    rr = struct.pack("!HHHIH", 0xC00C, 1, 1, ttl, 4) + _ip(ip)
    return struct.pack("!HHHHHH", txid, 0x8180, 1, 1, 0, 0) + q + struct.pack("!HH", 1, 1) + rr
