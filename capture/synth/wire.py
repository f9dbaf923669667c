"""How bytes become packets: the exact relation between connection counters and flows.

Every TCP segment carries 52 bytes of headers (20 IPv4 + 32 TCP with the timestamps option);
SYN and SYN-ACK carry 60 (their TCP options are 8 bytes longer). A message of `b` payload
bytes is sent as ceil(b / 1448) data segments, and its receiver answers with one pure ACK per
two data segments (delayed ACK), rounded up. A connection opens with SYN / SYN-ACK / ACK and
closes with FIN / FIN / ACK (the closer sends two segments, the peer one). Hence, for each
endpoint of a connection and on every node that records it:

    sum(flows.packets)  == segs_sent
    sum(flows.bytes)    == bytes_sent + 52 * segs_sent + 8

over the flow rows of that direction (src = the endpoint). TLS connections count TLS bytes as
payload: a 517-byte ClientHello, a 4200-byte server flight, an 80-byte client Finished, and
22 bytes of record overhead per 16 KiB of application data.

Where a packet is counted (once per node): at the host-side device (Cilium `lxc*`) of the
local pod that sent it ('ingress') or, if only the receiver is local, at the receiver's device
('egress'); host-network pods use eth0 ('egress' to send, 'ingress' to receive).
"""

from __future__ import annotations

import numpy as np

MSS = 1448
HDR = 52
SYN_EXTRA = 8
TLS_RECORD = 16384
TLS_OVERHEAD = 22
TLS_CLIENT_HELLO, TLS_SERVER_FLIGHT, TLS_CLIENT_FINISHED = 517, 4200, 80

FIN, SYN, RST, PSH, ACK = 1, 2, 4, 8, 16


def data_segments(payload: np.ndarray) -> np.ndarray:
    return np.maximum(1, -(-payload // MSS))


def acks_for(segments: np.ndarray) -> np.ndarray:
    return -(-segments // 2)


def tls_payload(plain: np.ndarray) -> np.ndarray:
    return plain + TLS_OVERHEAD * np.maximum(1, -(-plain // TLS_RECORD))
