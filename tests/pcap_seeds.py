"""Reads the real-traffic seed captures in tests/data (made by tests/data/make_seeds.sh).

dpkt parses the Ethernet/IP/TCP/UDP layers; the decoders under test get only the payloads,
exactly as the recorder hands them over.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import dpkt

DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Segment:
    ts_ns: int
    proto: str  # 'tcp' or 'udp'
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    payload: bytes
    flags: int = 0  # TCP flags


def segments(name: str, with_empty: bool = False) -> list[Segment]:
    """Payload-carrying packets of tests/data/<name>.pcap, in capture order."""
    out = []
    with open(DATA / f"{name}.pcap", "rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            l4 = ip.data
            family = socket.AF_INET6 if isinstance(ip, dpkt.ip6.IP6) else socket.AF_INET
            proto = "tcp" if isinstance(l4, dpkt.tcp.TCP) else "udp"
            if not l4.data and not with_empty:
                continue
            out.append(Segment(
                round(ts * 1e9), proto, socket.inet_ntop(family, ip.src), l4.sport,
                socket.inet_ntop(family, ip.dst), l4.dport, bytes(l4.data), getattr(l4, "flags", 0),
            ))
    return out
