"""L7Decoder._expand_plain (alive endpoints, conn_id and IoTurns.turn written out inline) against the
same steps made by the methods it inlines, on the same exchanges: closed and reused socket addresses,
endpoints with and without cookies, turns of both directions before and after each request."""

from __future__ import annotations

import random

import pytest

from flowtape.capture.decode.http_rows import HttpRows
from flowtape.capture.live.l7 import Endpoint, L7Decoder, c_header_class

OFFSET = 1_000_000_000_000


def _reference(dec: L7Decoder, join: tuple, row: tuple, give_up: bool) -> bool:
    """_expand's plain-HTTP branch as it was before it was inlined."""
    mono = row[0] - dec.offset
    conns = dec._alive_at(dec.endpoints.get(join, []), mono)
    if not conns:
        if give_up:
            dec.counters["l7.http_no_endpoint"] += 1
            return True
        return False
    http = dec.http_rows
    x = http.exchange(row, (*join, False))
    resp = None if row[1] is None else row[1] - dec.offset
    for c in conns:
        tid, g = dec.turns.turn(c.skaddr, c.role == "server", mono, resp, c.ts_start)
        http.add(x, dec.conn_id(c), c.pid, c.comm, c.role, tid, g)
    return True


def _state(dec: L7Decoder) -> tuple:
    h = dec.http_rows
    return h.exchanges, h.base_of, h.bases, h.of, h.side_of, h.sides, h.goroutine, dict(dec.counters)


@pytest.mark.parametrize("go", [False, True], ids=["threads", "goroutines"])
def test_inline_expand_writes_the_rows_of_the_methods_it_inlines(go):
    rnd = random.Random(11)
    dec = L7Decoder("n1", OFFSET, event_class=c_header_class())
    dec.http_rows = HttpRows()  # _expand_plain is HttpRows' path (HttpColumns': _take_plain, tests/test_http_rows_c.py)
    joins = []
    for k in range(12):
        cport = 40000 + k
        join = ("10.0.0.2", cport, "10.0.0.1", 80)
        joins.append(join)
        t = 0
        for life in range(rnd.randrange(1, 4)):  # the same 4-tuple, sockets one after the other
            start = t + rnd.randrange(1, 1000)
            end = start + rnd.randrange(100, 5000) if life < 2 and rnd.random() < 0.7 else None
            for role, sk in (("client", 0x1000 + k), ("server", 0x2000 + (k % 5))):  # server addresses shared
                local, remote = (("10.0.0.2", cport), ("10.0.0.1", 80)) if role == "client" else (("10.0.0.1", 80), ("10.0.0.2", cport))
                if rnd.random() < 0.85:
                    dec.add_endpoint(Endpoint(sk, role, start, *local, *remote, pid=100 + k, comm="p", cookie=rnd.choice([0, 77 + k]), ts_end=end))
            t = (end or start + 5000) + 1
    for sk in [0x1000 + k for k in range(12)] + [0x2000 + k for k in range(5)]:
        ts = 0
        for _ in range(rnd.randrange(0, 60)):
            ts += rnd.randrange(1, 300)
            # in a Go process some turns carry a goroutine (0: none known), from the middle of the run
            g = rnd.choice([0, 0xc000001000 + sk]) if go and ts > 3000 else 0
            dec.turns.add(sk, ts, rnd.random() < 0.5, rnd.randrange(1, 5), g)
    items = []
    for _ in range(3000):
        ts = rnd.randrange(0, 15000)
        resp = None if rnd.random() < 0.1 else ts + rnd.randrange(0, 400)
        row = (ts + OFFSET, None if resp is None else resp + OFFSET, "GET", f"/{ts}", 200)
        items.append((rnd.choice(joins + [("10.9.9.9", 1, "10.0.0.1", 80)]), row, rnd.random() < 0.5))
    got = [dec._expand_plain(*it) for it in items]
    inline = _state(dec)
    dec.http_rows, dec.counters["l7.http_no_endpoint"] = HttpRows(), 0
    ref = [_reference(dec, *it) for it in items]
    assert got == ref and inline == _state(dec)
    assert len(dec.http_rows) > 2000 and sum(not r for r in ref) > 100  # rows written, and some waiting
    assert sum(1 for s in dec.http_rows.sides if s[4] is not None) > 10 and any(s[4] is None for s in dec.http_rows.sides)
    gs = dec.http_rows.goroutine
    assert (gs is None) if not go else (sum(1 for g in gs if g) > 10 and gs.count(None) > 10)
