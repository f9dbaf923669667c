"""DNS over UDP from ring records straight to an Arrow table of the `dns` schema.

ColumnPairer wraps capture/decode/_dns.c's Pairer: it takes the raw struct l7_event records of a run
of DNS_UDP events, parses and pairs them in C with DnsPairer's semantics (dns_pairing.py, the
reference, kept under FLOWTAPE_DNS_DECODER=python) and keeps the finished rows as column buffers;
take() turns those into Arrow arrays without a Python object per row (pa.Array.from_buffers).

Why: at 20k queries/s the recorder's DNS path cost about 7.6 µs of CPU per query in Python (a
DnsMessage, two address strings, a row dict and a dict-to-Arrow pass per query); issue 24 asks for
at most 5x tcpdump's. Messages the C reading declines go to dns.decode_dns (dnslib) as in
DnsPairer.feed_udp, with the same stats.
"""

from __future__ import annotations

import os
from typing import Sequence

import pyarrow as pa

from ...schema import DNS_ANSWER, table
from .addresses import ip_text as default_ip_text
from .dns import decode_dns, qtype_name, rcode_name
from .dns_pairing import DEFAULT_TIMEOUT_NS
from .stats import DecodeStats

try:
    from . import _dns  # type: ignore[attr-defined]
except ImportError:  # no compiler at install time
    _dns = None

SCHEMA = table("dns").arrow_schema
_TS = SCHEMA.field("ts_query").type
_ANSWERS = SCHEMA.field("answers").type
_COUNTERS = ("dns_duplicate_queries", "dns_unmatched_answers")


def decoder_in_use() -> str:
    """Which UDP DNS path the live recorder runs (the manifest's probes.l7.dns_decoder): 'c' or 'python' and why."""
    if os.environ.get("FLOWTAPE_DNS_DECODER", "").lower() == "python":
        return "python (FLOWTAPE_DNS_DECODER=python)"
    if _dns is None or not hasattr(_dns, "Pairer"):
        return "python (capture/decode/_dns.c not built)"
    return "c"


class ColumnPairer:
    """DnsPairer for UDP ring records, rows as a table. layout: the offsets in a record of kind, ts_ns,
    cap_len, family, saddr, daddr, sport, dport and data, the sizes of cap_len and family (ts_ns: 8
    bytes, ports: 2, addresses: 16, all little-endian), then the kind DNS_UDP."""

    def __init__(self, layout: Sequence[int], stats: DecodeStats | None = None, timeout_ns: int = DEFAULT_TIMEOUT_NS,
                 ip_text=None) -> None:
        self.stats = stats if stats is not None else DecodeStats()
        stats_ = self.stats
        self._c = _dns.Pairer(timeout_ns, tuple(layout), lambda data: decode_dns(data, stats_), ip_text or default_ip_text,
                              qtype_name, rcode_name)
        self._counted = dict.fromkeys(_COUNTERS, 0)

    def feed_ring(self, records: Sequence[bytes], start: int = 0, stop: int | None = None, offset_ns: int = 0,
                  last_ts: int = 0) -> tuple[int, int]:
        """records[start:stop] up to the first that is not DNS_UDP, timestamps + offset_ns as wall
        time. Returns (the index of that first other record or stop, the largest kernel ts seen or last_ts)."""
        out = self._c.feed_ring(records, start, len(records) if stop is None else stop, offset_ns, last_ts)
        self._sync()
        return out

    def _sync(self) -> None:
        got = self._c.counters()
        for name in _COUNTERS:
            if got[name] != self._counted[name]:
                self.stats.add(name, got[name] - self._counted[name])
                self._counted[name] = got[name]

    @property
    def pending(self) -> int:
        return self._c.counters()["pending"]

    def take(self, now_ns: int | None, final: bool = False) -> pa.Table:
        """Rows finished so far, after expiring queries older than the timeout at now_ns (wall), or
        with every query still waiting when final; as a table of the dns schema (without `node`)."""
        n, unanswered, n_ans, *b = self._c.take(0 if now_ns is None else now_ns, final)
        self._sync()
        if n == 0:
            return SCHEMA.empty_table()
        (ts_query, ts_answer, latency, answered, cport, sport, txid, qtype, rcode, ttl, ans_off,
         cip_o, cip_d, sip_o, sip_d, qn_o, qn_d, qtn_o, qtn_d, rcn_o, rcn_d, an_o, an_d, at_o, at_d, ad_o, ad_d, tr_o, tr_d) = map(pa.py_buffer, b)
        valid = answered if unanswered else None

        def fixed(t: pa.DataType, data: pa.Buffer, length: int = n, validity=None, nulls: int = 0) -> pa.Array:
            return pa.Array.from_buffers(t, length, [validity, data], null_count=nulls)

        def text(off: pa.Buffer, data: pa.Buffer, length: int = n, validity=None, nulls: int = 0) -> pa.Array:
            return pa.Array.from_buffers(pa.string(), length, [validity, off, data], null_count=nulls)

        struct = pa.StructArray.from_arrays(
            [text(an_o, an_d, n_ans), text(at_o, at_d, n_ans), fixed(pa.uint32(), ttl, n_ans), text(ad_o, ad_d, n_ans)],
            fields=list(DNS_ANSWER))
        columns = {
            "ts_query": fixed(_TS, ts_query),
            "ts_answer": fixed(_TS, ts_answer, n, valid, unanswered),
            "latency_ns": fixed(pa.int64(), latency, n, valid, unanswered),
            "client_ip": text(cip_o, cip_d),
            "client_port": fixed(pa.uint16(), cport),
            "server_ip": text(sip_o, sip_d),
            "server_port": fixed(pa.uint16(), sport),
            "transport": text(tr_o, tr_d),
            "pid": pa.nulls(n, pa.int32()),
            "comm": pa.nulls(n, pa.string()),
            "txid": fixed(pa.uint16(), txid),
            "qname": text(qn_o, qn_d),
            "qtype": fixed(pa.uint16(), qtype),
            "qtype_name": text(qtn_o, qtn_d),
            "rcode": fixed(pa.uint8(), rcode, n, valid, unanswered),
            "rcode_name": text(rcn_o, rcn_d, n, valid, unanswered),
            "answers": pa.Array.from_buffers(_ANSWERS, n, [valid, ans_off], null_count=unanswered, children=[struct]),
        }
        return pa.Table.from_arrays([columns[f.name] for f in SCHEMA], schema=SCHEMA)



def as_rows(t: pa.Table) -> list[dict]:
    """A dns table's rows as DnsPairer makes them (timestamps as int ns): for tests and benchmarks."""
    return t.cast(pa.schema([pa.field(f.name, pa.int64()) if pa.types.is_timestamp(f.type) else f for f in t.schema])).to_pylist()
