"""One captured frame -> its IP and TCP/UDP header fields: the importer's packet parser.

    parse(link_type, frame) -> Packet (a tuple, fields at the indices below) or a problem kind (str)

Link types: Ethernet (1) with any number of 802.1Q / 802.1ad (QinQ) tags, Linux cooked v1
(113, `tcpdump -i any` before libpcap 1.10) and v2 (276), raw IP (101, and DLT_RAW's 12 and 14),
LINKTYPE_IPV4/IPV6 (228, 229), BSD loopback (0 and 108). IPv4 with options and fragments; IPv6
with its extension headers walked (hop-by-hop, routing, fragment, destination options, AH) to the
transport header. bpf/events.h's ft_parse_packet reads one VLAN tag and IPv6's first next-header
only: the importer names the real transport of packets the recorder would count as ip<N>.

Lengths come from the IP header, never from the captured bytes: a frame cut by the snaplen still
counts its wire size (`l3_end` may lie beyond the frame; `paylen` is the payload on the wire). A
TSO/GSO super-packet's IPv4 total length (or IPv6 payload length) of 0 means "the frame's": then
the original frame length is used.

Never raises: a frame that does not hold what its headers promise returns a problem kind:
"not_ip" (ARP, LLDP, ...), "unknown_link_type", "ip_header_cut" (the IP header itself is cut
or invalid). A transport header cut by the snaplen still returns a Packet, with ports None
and `l4_cut` set (the recorder counts such packets in a flow without ports too).
"""

from __future__ import annotations

import struct

ETHERNET, NULL, RAW, RAW_BSD, RAW_OPENBSD, SLL, LOOP, IPV4, IPV6, SLL2 = 1, 0, 101, 12, 14, 113, 108, 228, 229, 276
LINK_NAMES = {ETHERNET: "Ethernet", NULL: "BSD loopback", LOOP: "OpenBSD loopback", RAW: "raw IP", RAW_BSD: "raw IP",
              RAW_OPENBSD: "raw IP", SLL: "Linux cooked v1", SLL2: "Linux cooked v2", IPV4: "raw IPv4", IPV6: "raw IPv6"}
SUPPORTED = frozenset(LINK_NAMES)
ETH_IP, ETH_IP6, ETH_VLAN, ETH_QINQ, ETH_QINQ_OLD = 0x0800, 0x86DD, 0x8100, 0x88A8, 0x9100
VLAN_TYPES = (ETH_VLAN, ETH_QINQ, ETH_QINQ_OLD)
IP6_EXTENSIONS = {0, 43, 44, 51, 60}  # hop-by-hop, routing, fragment, AH, destination options
TCP, UDP, SCTP = 6, 17, 132

# SLL packet types (include/uapi/linux/if_packet.h): PACKET_OUTGOING is the host's own send
SLL_OUTGOING = 4

# Packet fields
(FAMILY, SRC, DST, PROTO, IP_LEN, L4OFF, L3_END, SPORT, DPORT, SEQ, ACK, FLAGS, POFF, PAYLEN, MACS, DIRECTION,
 IFINDEX, L4_CUT, FRAGMENT) = range(19)

_IP4 = struct.Struct("!BxHxxHxB2x4s4s")  # version/ihl, total length, flags/fragment offset, protocol, src, dst
_IP6 = struct.Struct("!4xHBx16s16s")  # payload length, next header, src, dst
_TCP = struct.Struct("!HHIIBB")  # ports, seq, ack, data offset, flags
_PORTS = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_SLL2 = struct.Struct("!H2xiHB")  # protocol, ifindex, ARPHRD type, packet type


def link_header(link: int, frame: bytes) -> tuple[int, int, bytes | None, str | None, int | None] | str:
    """(offset of the network header, its ethertype, MACs (dst + src, 12 bytes) or None,
    direction from a cooked header or None, ifindex or None), or a problem kind."""
    n = len(frame)
    if link == ETHERNET:
        if n < 14:
            return "ip_header_cut"
        off, etype = 14, (frame[12] << 8) | frame[13]
        while etype in VLAN_TYPES:  # 802.1Q, QinQ: skip each tag to the type it carries
            if off + 4 > n:
                return "ip_header_cut"
            etype = (frame[off + 2] << 8) | frame[off + 3]
            off += 4
        return off, etype, frame[:12], None, None
    if link == SLL2:
        if n < 20:
            return "ip_header_cut"
        etype, ifindex, _hatype, pkttype = _SLL2.unpack_from(frame)
        off = 20
        direction = "egress" if pkttype == SLL_OUTGOING else "ingress"
    elif link == SLL:
        if n < 16:
            return "ip_header_cut"
        pkttype = (frame[0] << 8) | frame[1]
        etype, off, ifindex = (frame[14] << 8) | frame[15], 16, None
        direction = "egress" if pkttype == SLL_OUTGOING else "ingress"
    elif link in (RAW, RAW_BSD, RAW_OPENBSD, IPV4, IPV6):
        if n < 1:
            return "ip_header_cut"
        v = frame[0] >> 4
        return 0, ETH_IP if v == 4 else ETH_IP6 if v == 6 else 0, None, None, None
    elif link in (NULL, LOOP):
        if n < 4:
            return "ip_header_cut"
        fam = struct.unpack_from("<I" if link == NULL and frame[0] else "!I", frame)[0]
        etype = ETH_IP if fam == 2 else ETH_IP6 if fam in (10, 24, 28, 30) else 0
        return 4, etype, None, None, None
    else:
        return "unknown_link_type"
    while etype in VLAN_TYPES:  # cooked captures keep the tags of VLAN devices in the payload
        if off + 4 > n:
            return "ip_header_cut"
        etype = (frame[off + 2] << 8) | frame[off + 3]
        off += 4
    return off, etype, None, direction, ifindex


def parse(link: int, frame: bytes, orig_len: int | None = None) -> tuple | str:
    """The frame's Packet tuple, or a problem kind. `orig_len`: the frame's length on the wire
    (the record's original length) when the capture cut it."""
    lh = link_header(link, frame)
    if isinstance(lh, str):
        return lh
    off, etype, macs, direction, ifindex = lh
    n = len(frame)
    wire = n if orig_len is None or orig_len < n else orig_len
    if etype == ETH_IP:
        if off + 20 > n:
            return "ip_header_cut"
        vihl, ip_len, frag, proto, src, dst = _IP4.unpack_from(frame, off)
        hlen = (vihl & 15) * 4
        if vihl >> 4 != 4 or hlen < 20:
            return "ip_header_cut"
        if ip_len == 0:  # TSO: the total length is left to the frame
            ip_len = wire - off
        first = frag & 0x1FFF == 0
        family, l4off, fragment = 4, off + hlen, bool(frag & 0x3FFF)  # MF set or an offset: a fragment
    elif etype == ETH_IP6:
        if off + 40 > n:
            return "ip_header_cut"
        plen, proto, src, dst = _IP6.unpack_from(frame, off)
        if frame[off] >> 4 != 6:
            return "ip_header_cut"
        ip_len = 40 + plen if plen else wire - off  # 0: a jumbogram or a GSO super-packet
        family, l4off, first, fragment = 6, off + 40, True, False
        while proto in IP6_EXTENSIONS:
            if l4off + 8 > n:
                return 6, src, dst, proto, ip_len, -1, off + ip_len, None, None, None, None, None, -1, 0, macs, direction, ifindex, True, fragment
            nxt = frame[l4off]
            if proto == 44:  # fragment header: 8 bytes; offset non-zero means no transport header here
                fragment = True
                first = (_U16.unpack_from(frame, l4off + 2)[0] >> 3) == 0
                l4off += 8
            elif proto == 51:  # AH: length in 4-byte units, minus 2
                l4off += (frame[l4off + 1] + 2) * 4
            else:
                l4off += (frame[l4off + 1] + 1) * 8
            proto = nxt
            if not first:
                break
    else:
        return "not_ip"
    l3_end = off + ip_len
    if not first:  # a later fragment: no transport header (the recorder counts it without ports)
        return family, src, dst, proto, ip_len, -1, l3_end, None, None, None, None, None, -1, 0, macs, direction, ifindex, False, fragment
    if proto == TCP:
        if l4off + 14 > n:
            return family, src, dst, proto, ip_len, l4off, l3_end, None, None, None, None, None, -1, 0, macs, direction, ifindex, True, fragment
        sport, dport, seq, ack, doff, flags = _TCP.unpack_from(frame, l4off)
        poff = l4off + (doff >> 4) * 4
        paylen = l3_end - poff
        return (family, src, dst, proto, ip_len, l4off, l3_end, sport, dport, seq, ack, flags, poff, paylen if paylen > 0 else 0,
                macs, direction, ifindex, False, fragment)
    if proto == UDP or proto == SCTP:
        if l4off + 4 > n:
            return family, src, dst, proto, ip_len, l4off, l3_end, None, None, None, None, None, -1, 0, macs, direction, ifindex, True, fragment
        sport, dport = _PORTS.unpack_from(frame, l4off)
        poff = l4off + (8 if proto == UDP else 12)
        paylen = l3_end - poff
        return (family, src, dst, proto, ip_len, l4off, l3_end, sport, dport, None, None, None, poff, paylen if paylen > 0 else 0,
                macs, direction, ifindex, False, fragment)
    return family, src, dst, proto, ip_len, l4off, l3_end, None, None, None, None, None, -1, 0, macs, direction, ifindex, False, fragment


def tcp_mss(frame: bytes, l4off: int, poff: int) -> int | None:
    """The MSS option of a SYN's TCP header (options between l4off + 20 and poff), or None."""
    p, end = l4off + 20, min(poff, len(frame))
    while p < end:
        kind = frame[p]
        if kind == 0:
            break
        if kind == 1:
            p += 1
            continue
        if p + 1 >= end:
            break
        length = frame[p + 1]
        if length < 2:
            break
        if kind == 2 and length == 4 and p + 4 <= end:
            return _U16.unpack_from(frame, p + 2)[0]
        p += length
    return None
