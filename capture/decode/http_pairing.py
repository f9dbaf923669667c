"""Pairs HTTP requests with their responses on one connection and produces `http` rows.

HTTP/1.x answers requests in order (pipelining included), so the n-th final response of a
connection answers its n-th request. Interim 1xx responses (100 Continue, 103 Early Hints)
belong to the request being answered and are counted in its response_bytes.

A row is produced once both messages have ended (their sizes are then known), in request
order, or when the connection closes (then with whatever is known: a request without a
response has null response fields).

Timing: `ts_request` is the time of the segment holding the request head's first byte,
`ts_response` that of the *final* (non-1xx) response head's first byte, and latency_ns is
their difference: time to first byte of the final response, as seen at this endpoint.

Redaction (on by default, recorded in the manifest): query string values become empty
(`/s?q=secret&page=2` -> `/s?q=&page=`), and of the header-valued columns only those whose
header is on the allow-list are written; bodies are never read beyond their length.
"""

from __future__ import annotations

import functools
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .http1 import BODY, HttpMessage, HttpParser
from .stats import DecodeStats

try:
    from . import _http1  # type: ignore[attr-defined]  # capture/decode/_http1.c, built at install when a C compiler is present
except ImportError:  # no compiler at install time: the Python decoder does the same work, slower
    _http1 = None

DEFAULT_HEADER_ALLOW_LIST = ("host", "user-agent", "content-type", "traceparent", "tracestate", "grpc-message")  # grpc-message: HTTP/2 trailers
MAX_PENDING = 256  # exchanges waiting on one connection; beyond this the oldest is emitted unanswered
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 3.4: a client's first bytes over HTTP/2

# Row columns filled from a header: column -> (header name, which message carries it).
_HEADER_COLUMNS = (
    ("host", "host", "request"),
    ("traceparent", "traceparent", "request"),
    ("user_agent", "user-agent", "request"),
    ("content_type", "content-type", "response"),
    ("tracestate", "tracestate", "request"),
)


@dataclass(frozen=True)
class Redaction:
    """What is kept of a request's target and headers. `Redaction(enabled=False)` is --no-redact."""

    enabled: bool = True
    header_allow_list: frozenset[str] = field(default_factory=lambda: frozenset(DEFAULT_HEADER_ALLOW_LIST))

    @classmethod
    def from_settings(cls, no_redact: bool = False, allow_list: Iterable[str] | None = None) -> "Redaction":
        names = DEFAULT_HEADER_ALLOW_LIST if allow_list is None else allow_list
        return cls(enabled=not no_redact, header_allow_list=frozenset(n.strip().lower() for n in names))

    def allows(self, header: str) -> bool:
        return not self.enabled or header in self.header_allow_list

    def path(self, target: str) -> str:
        if not self.enabled:
            return target
        return redact_query(target)

    def manifest(self) -> dict[str, Any]:
        """The manifest's `redaction` section (TapeWriter.update('redaction', ...))."""
        return {
            "query_strings": "values removed" if self.enabled else "kept",
            "header_allow_list": sorted(self.header_allow_list) if self.enabled else "all",
            "bodies": "never stored",
        }


def redact_query(target: str) -> str:
    """Keep the keys of a query string and drop its values: `/p?a=1&b` -> `/p?a=&b`."""
    q = target.find("?")
    if q < 0:
        return target
    parts = []
    for item in target[q + 1 :].split("&"):
        eq = item.find("=")
        parts.append(item if eq < 0 else item[: eq + 1])
    return target[: q + 1] + "&".join(parts)


class _Exchange:
    __slots__ = ("request", "response", "interim_bytes")

    def __init__(self, request: HttpMessage) -> None:
        self.request = request
        self.response: HttpMessage | None = None
        self.interim_bytes: int | None = 0  # 1xx heads before the final response


def is_http2(first: bytes, from_client: bool) -> bool:
    """Whether the first bytes of a connection's direction are HTTP/2: the client's preface, or
    the SETTINGS frame (type 4, stream 0, no flag but ACK) a server must send first. A prefix
    of the preface counts too (a segment may end inside it)."""
    if from_client:
        n = min(len(first), len(H2_PREFACE))
        return n >= 4 and first[:n] == H2_PREFACE[:n]
    return len(first) >= 9 and first[3] == 4 and first[4] & 0xFE == 0 and first[5:9] == b"\0\0\0\0"


EXCHANGE_FIELDS = ("ts_request", "ts_response", "latency_ns", "http_version", "method", "path", "status",
                   "request_bytes", "response_bytes", "host", "traceparent", "user_agent", "content_type",
                   "tracestate", "request_seq", "response_seq")
SEQ_MOD = 1 << 32


def header_mask(redaction: Redaction) -> int:
    """Bit i set: the header of _HEADER_COLUMNS[i] is written (capture/decode/_http1.c's `allow`)."""
    return sum(1 << i for i, (_, h, _) in enumerate(_HEADER_COLUMNS) if redaction.allows(h))


class HttpConnection:
    """Both directions of one connection, as seen by one local endpoint.

    feed_tuples() each segment with `from_client` saying its direction; it returns the
    exchanges that ended, as tuples in EXCHANGE_FIELDS order (the recorder's path: the
    connection's own columns are added by the caller). feed() and close() return the same
    as row dicts, with `row_base` (conn_id, client_ip, ..., tls) copied into each.

    capture/decode/_http1.c is this class compiled (`connection_factory` picks it); this one is the
    reference that tests/test_http1_differential.py holds it to.
    """

    def __init__(self, stats: DecodeStats | None = None, redaction: Redaction | None = None,
                 row_base: dict[str, Any] | None = None) -> None:
        self.stats = stats if stats is not None else DecodeStats()
        self.redaction = redaction or Redaction()
        self.row_base = row_base or {}
        self.exchanges: deque[_Exchange] = deque()  # not yet emitted, in request order
        self.requests = HttpParser(True, self.stats, self._on_request)
        self.responses = HttpParser(False, self.stats, self._on_response)
        self.closed = False
        self.fresh = True  # no byte seen yet in either direction
        # TCP sequence number of each direction's first byte fed ([0] server->client, [1] client->server),
        # from set_seq_base; None (TLS plaintext, or never told): the rows' *_seq columns are null.
        self.seq_base: list[int | None] = [None, None]
        # which header columns this redaction keeps, decided once rather than per row
        self._allowed = tuple(self.redaction.allows(h) for _, h, _ in _HEADER_COLUMNS)

    # --- input ---------------------------------------------------------------------------

    def feed_tuples(self, ts_ns: int, data: bytes, from_client: bool, length: int | None = None) -> list[tuple]:
        """One segment (its first bytes `data` of `length`) of one direction, in stream order."""
        if self.fresh and data:
            self.fresh = False
            if is_http2(data, from_client):
                # HTTP/2 (ALPN h2, or prior knowledge): not decoded. A note, not a loss.
                self.requests.enter_tunnel()
                self.responses.enter_tunnel()
                self.stats.add("http2_connections")
                return []
        # Heads reach the pairing through the parsers' on_head callbacks, as they are parsed.
        (self.requests if from_client else self.responses).feed(ts_ns, data, length)
        return self._ready()

    def close_tuples(self, ts_ns: int) -> list[tuple]:
        """The connection ended: finish close-delimited bodies and emit every pending exchange."""
        if self.closed:
            return []
        self.closed = True
        self.requests.close(ts_ns)
        self.responses.close(ts_ns)
        rows = [self._row(x) for x in self.exchanges]
        self.exchanges.clear()
        return rows

    def set_seq_base(self, from_client: bool, seq: int) -> None:
        """The TCP sequence number of the first byte this direction will be fed (the caller's
        segment ordering starts there): heads' stream offsets become request_seq/response_seq."""
        self.seq_base[bool(from_client)] = seq % SEQ_MOD

    def body_remaining(self, from_client: bool) -> int:
        """Bytes of a Content-Length body this direction still has to pass (0 outside one)."""
        parser = self.requests if from_client else self.responses
        return parser.remaining if parser.state == BODY else 0

    def feed(self, ts_ns: int, data: bytes, from_client: bool, length: int | None = None) -> list[dict[str, Any]]:
        return [self.as_dict(t) for t in self.feed_tuples(ts_ns, data, from_client, length)]

    def close(self, ts_ns: int) -> list[dict[str, Any]]:
        return [self.as_dict(t) for t in self.close_tuples(ts_ns)]

    def as_dict(self, exchange: tuple) -> dict[str, Any]:
        return {**self.row_base, **dict(zip(EXCHANGE_FIELDS, exchange))}

    # --- pairing -------------------------------------------------------------------------

    def _awaiting(self) -> _Exchange | None:
        """The first exchange without a final response: the next response head answers it."""
        for x in self.exchanges:
            if x.response is None:
                return x
        return None

    def _on_request(self, msg: HttpMessage) -> None:
        self.exchanges.append(_Exchange(msg))  # (an HTTP/2 preface never gets here: see feed)

    def _on_response(self, msg: HttpMessage) -> str | None:
        """Attach a response head to the request it answers; return that request's method."""
        x = self._awaiting()
        if x is None:
            self.stats.add("http_orphan_responses")  # recording started mid-connection, or a lost request
            return None
        method = x.request.method
        if msg.interim and msg.status != 101:  # 101 Switching Protocols is final: the tunnel follows
            x.interim_bytes = None if x.interim_bytes is None or msg.head_bytes is None else x.interim_bytes + msg.head_bytes
            return method
        x.response = msg
        if msg.status == 101 or (method == "CONNECT" and msg.status is not None and 200 <= msg.status < 300):
            self.requests.enter_tunnel()  # the response parser enters its own tunnel in its framing
        return method

    def _ready(self) -> list[tuple]:
        rows = []
        while self.exchanges:
            x = self.exchanges[0]
            if not (x.request.done and x.response is not None and x.response.done):
                if len(self.exchanges) <= MAX_PENDING:
                    break
            rows.append(self._row(self.exchanges.popleft()))
        return rows

    def _row(self, x: _Exchange) -> tuple:
        req, resp = x.request, x.response
        size = None if resp is None or not resp.done else resp.size
        qh, rh = req.headers, (resp.headers if resp is not None else {})
        host, trace, agent, ctype, tstate = self._allowed
        qbase, rbase = self.seq_base[1], self.seq_base[0]
        return (
            req.ts_ns,
            None if resp is None else resp.ts_ns,
            None if resp is None else resp.ts_ns - req.ts_ns,
            req.version,
            req.method,
            self.redaction.path(req.target or ""),
            None if resp is None else resp.status,
            req.size if req.done else None,
            None if size is None or x.interim_bytes is None else size + x.interim_bytes,
            qh.get("host") if host else None,
            qh.get("traceparent") if trace else None,
            qh.get("user-agent") if agent else None,
            rh.get("content-type") if ctype else None,
            qh.get("tracestate") if tstate else None,
            None if qbase is None else (qbase + req.at) % SEQ_MOD,
            None if rbase is None or resp is None else (rbase + resp.at) % SEQ_MOD,
        )


def decoder_in_use() -> str:
    """'c' when connection_factory() makes compiled decoders, else 'python' (and why)."""
    if _http1 is None:
        return "python (capture/decode/_http1.c was not built: install gcc and python3-dev, then reinstall flowtape)"
    if os.environ.get("FLOWTAPE_HTTP_DECODER", "").lower() == "python":
        return "python (FLOWTAPE_HTTP_DECODER=python)"
    return "c"


def connection_factory(stats: DecodeStats, redaction: Redaction) -> Callable[[], Any]:
    """Makes HTTP/1.x connection decoders (feed_tuples/close_tuples/body_remaining): the compiled
    one (capture/decode/_http1.c) unless it is missing or FLOWTAPE_HTTP_DECODER=python. Decided once,
    here, not per connection."""
    if decoder_in_use() == "c":
        return functools.partial(_http1.Http1Connection, stats, redaction.enabled, header_mask(redaction))
    return functools.partial(HttpConnection, stats, redaction)


def new_connection(stats: DecodeStats, redaction: Redaction) -> Any:
    """One connection decoder, as connection_factory makes them."""
    return connection_factory(stats, redaction)()
