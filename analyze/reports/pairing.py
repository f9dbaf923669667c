"""The two sides of one HTTP exchange: a server row and the client row that sent its request.

The nearest-time rule is the OTLP exporter's (analyze.export.spans, HttpSides.materialize, which
writes it in SQL per time slice): same client ip:port and server IP (the client row's, a
ClusterIP already replaced by the pod it was paired to), the request the client sent last
before the server saw it if the client had no answer yet then, or else the next one sent within
SKEW_NS; the nearer wins. Here it is one function over whole columns (a sort and two running
scans instead of two ASOF joins: 2.5x less CPU on 3.9M rows), used by the traces view;
tests/test_traces.py checks that it gives the exporter's pairs on the fixture tapes.
"""

from __future__ import annotations

import numpy as np

SKEW_NS = 1_000_000_000
"""How far apart in time (clock skew between nodes included) the two sides of one exchange may be
seen and still be paired (the exporter's SKEW_NS)."""


def nearest_clients(socket: np.ndarray, t: np.ndarray, t1: np.ndarray, client: np.ndarray, skew_ns: int = SKEW_NS) -> np.ndarray:
    """For every row, the index of its exchange's client row by the nearest-time rule (-1 for
    client rows and for server rows without one).

    `socket`: one key per row for (client ip, client port, server ip) (the client's pod behind
    the address it connected to); `t`, `t1`: request and response epoch ns (t1 < 0: no response);
    `client`: whether the row is a client side.
    """
    n = len(t)
    out = np.full(n, -1, np.int64)
    if n == 0:
        return out
    # by socket, then time; at one instant the client row first (the exporter's ASOF joins take
    # a client row of the same instant as the previous one): two stable sorts of one key each
    # (half the CPU of a three-key lexsort)
    by_t = np.argsort(t * 2 + ~client, kind="stable")
    order = by_t[np.argsort(socket[by_t], kind="stable")]
    cl = client[order]
    pos = np.arange(n)
    prev = np.maximum.accumulate(np.where(cl, pos, -1))
    nxt = np.minimum.accumulate(np.where(cl, pos, n)[::-1])[::-1]
    srv = np.flatnonzero(~cl)  # positions (in sorted order) of the server rows: only they are paired
    p, q = np.maximum(prev[srv], 0), np.minimum(nxt[srv], n - 1)
    op, oq, os_ = order[p], order[q], order[srv]
    sk = socket[os_]
    ts = t[os_]
    has_p = (prev[srv] >= 0) & (socket[op] == sk)
    has_n = (nxt[srv] < n) & (socket[oq] == sk)
    p_t, n_t, p_t1 = t[op], t[oq], t1[op]
    p_end = np.where(p_t1 >= 0, p_t1, p_t)
    # the request the client sent last before the server saw it, if the client had no answer yet
    # then (within the skew); or the next one, if it was sent within the skew; the nearer wins
    prev_ok = has_p & (ts <= p_end + skew_ns)
    next_ok = has_n & (n_t - ts <= skew_ns)
    use_prev = prev_ok & (~next_ok | (ts - p_t <= n_t - ts))
    use_next = next_ok & ~use_prev
    out[os_] = np.where(use_prev, op, np.where(use_next, oq, -1))
    return out
