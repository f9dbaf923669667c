"""Flow records: a slice's TCP segments and DNS datagrams aggregated as the kernel map would.

One row per (node, direction of a 5-tuple, 5 s export interval): packets and IP bytes summed,
first/last packet times, TCP flags OR-ed. Segments that fall in a later interval (a response
after the slice boundary) wait in `pending` until their interval is drained, so a flow never
has two rows for one interval.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .conns import Conn, Endpoint, Messages
from .params import SLICE_NS
from .requests import TS, split_by_node

COLUMNS = ("ts_start", "ts_end", "iface", "ifindex", "direction", "src_mac", "dst_mac", "src_ip", "dst_ip", "src_port", "dst_port", "l4", "ip_proto", "packets", "bytes", "tcp_flags")


class FlowAggregator:
    def __init__(self, node_names: list[str]):
        self.node_names = node_names
        self.pending: tuple[np.ndarray, ...] | None = None

    def drain(self, msgs: Messages, t1: int, conns: dict[int, Conn]) -> list[tuple[str, pa.Table]]:
        """Rows for every segment before t1 (the end of the interval being drained)."""
        new = msgs.take()
        parts = [x for x in (self.pending, new) if x is not None]
        if not parts:
            return []
        cols = tuple(np.concatenate([p[i] for p in parts]) for i in range(6))
        now = cols[2] < t1
        self.pending = tuple(c[~now] for c in cols) if (~now).any() else None
        conn, d, t, pkts, nbytes, flags = (c[now] for c in cols)
        if len(t) == 0:
            return []
        key = conn * 2 + d
        order = np.argsort(key, kind="stable")
        key, t, pkts, nbytes, flags = key[order], t[order], pkts[order], nbytes[order], flags[order]
        uniq, first = np.unique(key, return_index=True)
        g = {
            "ts_start": np.minimum.reduceat(t, first), "ts_end": np.maximum.reduceat(t, first),
            "packets": np.add.reduceat(pkts, first), "bytes": np.add.reduceat(nbytes, first),
            "tcp_flags": np.bitwise_or.reduceat(flags, first),
        }
        gconn, gdir = (uniq // 2).tolist(), (uniq % 2).tolist()
        src: list[Endpoint] = []
        dst: list[Endpoint] = []
        for ci, di in zip(gconn, gdir):
            c = conns[ci]
            a, b = (c.client, c.server) if di == 0 else (c.server, c.client)
            src.append(a)
            dst.append(b)
        return self._rows(src, dst, g, "tcp", 6)

    def _rows(self, src: list[Endpoint], dst: list[Endpoint], g: dict[str, np.ndarray], l4: str, proto: int) -> list[tuple[str, pa.Table]]:
        """Each aggregate on the sender's node and, if different, on the receiver's node."""
        sel, obs = [], []
        for i, (a, b) in enumerate(zip(src, dst)):
            oa, ob = a.observer(True), b.observer(False)
            if oa is not None:
                sel.append(i)
                obs.append(oa)
            if ob is not None and (oa is None or ob[0] != oa[0]):
                sel.append(i)
                obs.append(ob)
        if not sel:
            return []
        s = np.array(sel)
        n = len(s)
        tbl = pa.table({
            "ts_start": pa.array(g["ts_start"][s], TS), "ts_end": pa.array(g["ts_end"][s], TS),
            "iface": pa.array([o[1] for o in obs]), "ifindex": pa.array([o[2] for o in obs], pa.uint32()),
            "direction": pa.array([o[3] for o in obs]), "src_mac": pa.array([o[4] for o in obs]), "dst_mac": pa.array([o[5] for o in obs]),
            "src_ip": pa.array([src[i].ip for i in sel]), "dst_ip": pa.array([dst[i].ip for i in sel]),
            "src_port": pa.array([src[i].port for i in sel], pa.uint16()), "dst_port": pa.array([dst[i].port for i in sel], pa.uint16()),
            "l4": pa.array(np.full(n, l4)), "ip_proto": pa.array(np.full(n, proto, np.uint8)),
            "packets": pa.array(g["packets"][s].astype(np.uint64)), "bytes": pa.array(g["bytes"][s].astype(np.uint64)),
            "tcp_flags": pa.array(g["tcp_flags"][s].astype(np.uint16)) if l4 == "tcp" else pa.nulls(n, pa.uint16()),
        })
        return split_by_node(tbl, np.array([o[0] for o in obs]), self.node_names)

    def datagrams(self, packets: list) -> list[tuple[str, pa.Table]]:
        """DNS over UDP: every query and answer is its own 5-tuple, one packet each way."""
        if not packets:
            return []
        src = [Endpoint(a.ip, sp, a) for a, b, sp, dp, t, n in packets]
        dst = [Endpoint(b.ip, dp, b) for a, b, sp, dp, t, n in packets]
        t = np.array([p[4] for p in packets], np.int64)
        g = {"ts_start": t, "ts_end": t, "packets": np.ones(len(t), np.int64), "bytes": np.array([p[5] for p in packets], np.int64), "tcp_flags": None}
        return self._rows(src, dst, g, "udp", 17)


def interval_of(t: int, start: int) -> int:
    return (t - start) // SLICE_NS
