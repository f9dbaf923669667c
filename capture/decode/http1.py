"""Incremental HTTP/1.x parser for one direction of one connection.

Written by hand rather than with h11. h11 is an excellent HTTP/1.1 state machine, but it
needs every byte of the stream: the recorder sees only the first bytes of each segment (a
bounded prefix), so body bytes are usually missing and heads may be cut. This parser takes
"n bytes of this direction passed, of which we saw the first k" (`feed(ts, data, length)`)
and steps over unseen body bytes by their declared length, which no general parser offers.
It is also several times faster than h11 for the one thing we need (message boundaries and
a few header values), which matters for the recorder's CPU budget.

Framing follows RFC 9112 section 6.3: a response to HEAD, any 1xx, 204 and 304 has no body;
101 and a 2xx to CONNECT turn the connection into a tunnel; Transfer-Encoding: chunked
wins over Content-Length; a response with neither runs until the connection closes; a
request with neither has no body.

When bytes we needed are missing (a head cut by the capture prefix, a gap inside chunk
framing), the direction is *desynced*: the message in progress ends with an unknown size
and bytes are ignored until a segment starts with something that looks like a new head
(a request line, or "HTTP/1." for responses). Heads are usually sent at segment starts,
so this resynchronises after one message.
"""

from __future__ import annotations

import re
from typing import Callable

from .stats import DecodeStats

MAX_HEAD = 64 * 1024  # a head larger than this is not HTTP we can read (servers cap at 8-64 kB)

# Parser states.
HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, TRAILERS, UNTIL_CLOSE, TUNNEL, DESYNC = range(8)

# Methods accepted when resynchronising on a request line (RFC 9110 + WebDAV). A head that
# starts the stream or follows a complete message may use any token.
KNOWN_METHODS = frozenset(
    b"GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH PROPFIND PROPPATCH MKCOL COPY MOVE LOCK UNLOCK".split()
)
# Headers read from each head: the two that frame bodies, and those of the `http` table's
# columns (which the redaction allow-list may still drop). Others are never decoded.
WANTED_HEADERS = ("content-length", "transfer-encoding", "host", "user-agent", "content-type", "traceparent", "tracestate")
# One C-level pass finds every wanted header line (field names are case-insensitive; no space
# may precede the colon, RFC 9112 5.1).
_WANTED_RE = re.compile(rb"\r\n(" + b"|".join(n.encode() for n in WANTED_HEADERS) + rb"):([^\r\n]*)", re.IGNORECASE)
_WANTED_NAMES: dict[bytes, str] = {n.encode(): n for n in WANTED_HEADERS}  # as sent -> lower-case name
# Start-line tokens seen on nearly every message, decoded once (a method is a token, so every
# KNOWN_METHODS member is valid; versions are what servers send).
_METHODS: dict[bytes, str] = {m: m.decode() for m in KNOWN_METHODS}
_VERSIONS: dict[bytes, str] = {v: v.decode() for v in (b"HTTP/1.1", b"HTTP/1.0")}
_STATUSES: dict[bytes, int] = {str(n).encode(): n for n in range(100, 600)}
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class HttpMessage:
    """One request or response head, and the size of its message once known."""

    __slots__ = ("is_request", "ts_ns", "at", "method", "target", "version", "status", "headers",
                 "head_bytes", "body_bytes", "truncated", "done")

    def __init__(self, is_request: bool, ts_ns: int) -> None:
        self.is_request = is_request
        self.ts_ns = ts_ns  # time of the segment holding the head's first byte
        self.at = 0  # the head's first byte: its offset in the direction's byte stream (HttpParser.fed)
        self.method: str | None = None  # requests
        self.target: str | None = None  # requests: request-target as sent (not redacted)
        self.version: str | None = None  # 'HTTP/1.1'
        self.status: int | None = None  # responses
        self.headers: dict[str, str] = {}  # WANTED_HEADERS present: lower-case name -> value (repeats joined with ', ')
        self.head_bytes: int | None = None  # start line to the blank line included; None if cut
        self.body_bytes: int | None = 0  # wire bytes of the body (chunk framing included); None if unknown
        self.truncated = False  # the head was cut before its end: headers after the cut are missing
        self.done = False  # the message (head and body) has ended

    @property
    def interim(self) -> bool:
        return self.status is not None and 100 <= self.status < 200

    @property
    def size(self) -> int | None:
        """Head plus body bytes; None when either is unknown."""
        if self.head_bytes is None or self.body_bytes is None:
            return None
        return self.head_bytes + self.body_bytes

    def __repr__(self) -> str:  # for test failure messages
        start = f"{self.method} {self.target}" if self.is_request else str(self.status)
        return f"<HttpMessage {start} head={self.head_bytes} body={self.body_bytes} done={self.done}>"


HEAD_EVENT = "head"
END_EVENT = "end"
Event = tuple[str, HttpMessage]


MAX_DIGITS = 18  # a longer Content-Length is malformed (it would not fit capture/decode/_http1.c's int64)
MAX_HEX = 15  # likewise a chunk size
_HEX = frozenset(b"0123456789abcdefABCDEF")


def content_length(value: str) -> int:
    """The body length a (joined) Content-Length value declares, or -1 if it is malformed.
    Repeated identical values are allowed (RFC 9110 8.6); digits are ASCII only (str.isdigit
    also takes '²', which int() then refuses)."""
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1:
        return -1
    v = values.pop()
    return int(v) if 0 < len(v) <= MAX_DIGITS and v.isascii() and v.isdigit() else -1


def chunk_size(text: bytes) -> int:
    """A chunk-size line's number: 1*HEXDIG (RFC 9112 7.1), or -1. Not int(text, 16), which
    also takes signs, underscores and a 0x prefix."""
    return int(text, 16) if 0 < len(text) <= MAX_HEX and _HEX.issuperset(text) else -1


def looks_like_request(data: bytes) -> bool:
    sp = data.find(b" ", 0, 12)
    return sp > 0 and data[:sp] in KNOWN_METHODS


def looks_like_response(data: bytes) -> bool:
    return data[:7] == b"HTTP/1."


class HttpParser:
    """Parses one direction: requests (client->server) or responses (server->client).

    `on_head` is called with each head as soon as it is parsed, before its body is framed;
    for a response it returns the method of the request the response answers (the pairing
    layer knows), because a HEAD or CONNECT changes the response's framing.
    """

    def __init__(self, is_request: bool, stats: DecodeStats | None = None,
                 on_head: Callable[[HttpMessage], str | None] | None = None) -> None:
        self.is_request = is_request
        self.stats = stats if stats is not None else DecodeStats()
        self.on_head = on_head or (lambda msg: None)
        self.state = HEAD
        self.buf = bytearray()  # a head, chunk-size line or trailer being gathered
        self.buf_ts = 0  # ts of the first byte in buf (a head's ts)
        # Bytes of this direction fed so far, seen or not (the sum of the segments' lengths): a
        # head's offset in the stream, which the caller turns into its TCP sequence number.
        self.fed = 0
        self.buf_at = 0  # offset of the first byte in buf
        self._base = 0  # offset of the segment being fed
        self.remaining = 0  # BODY / CHUNK_DATA: bytes still to pass
        self.msg: HttpMessage | None = None  # the message whose body is being passed
        self._looks_like = looks_like_request if is_request else looks_like_response

    # --- input ---------------------------------------------------------------------------

    def feed(self, ts_ns: int, data: bytes, length: int | None = None) -> list[Event]:
        """Feed the next segment of this direction, in stream order.

        `data` are the bytes seen; `length` (default len(data)) is how many bytes the segment
        carried: the `length - len(data)` bytes after `data` were not seen. Returns the
        ("head", msg) and ("end", msg) events, in order, that this segment produced.
        """
        events: list[Event] = []
        end = len(data)
        base = self.fed
        self.fed = base + (end if length is None or length < end else length)
        if self.state == DESYNC:
            if end and self._looks_like(data):
                self.state = HEAD
            else:
                return events
        self._base = base
        pos = 0
        while pos < end:
            state = self.state
            if state == HEAD:
                pos = self._head(ts_ns, data, pos, events)
            elif state == BODY or state == CHUNK_DATA:
                take = min(self.remaining, end - pos)
                self._pass(take, events)
                pos += take
            elif state == CHUNK_SIZE or state == TRAILERS:
                pos = self._line(data, pos, events)
            elif state == UNTIL_CLOSE:
                self.msg.body_bytes += end - pos  # type: ignore[union-attr, operator]
                pos = end
            else:  # TUNNEL, DESYNC: the rest of the segment is not ours to read
                break
        if length is not None and length > end:
            self._skip(length - end, events)
        return events

    def close(self, ts_ns: int) -> list[Event]:
        """The direction ended (FIN/RST or connection gone): a close-delimited body ends here."""
        events: list[Event] = []
        if self.state == UNTIL_CLOSE and self.msg is not None:
            self._end(events)
        elif self.msg is not None and not self.msg.done:
            self.msg.body_bytes = None  # ended before its declared length: size unknown
            self._end(events)
        elif self.state == HEAD and self.buf.strip():
            self._cut_head(events)
        self.state = TUNNEL  # nothing more comes
        return events

    def enter_tunnel(self) -> None:
        """The other direction agreed to an upgrade (101, CONNECT 2xx): stop reading HTTP."""
        self.state = TUNNEL
        self.buf.clear()

    # --- states --------------------------------------------------------------------------

    def _head(self, ts_ns: int, data: bytes, pos: int, events: list[Event]) -> int:
        end = len(data)
        if not self.buf:
            # Empty lines before a head are allowed (RFC 9112 2.2): skip them.
            while pos + 1 < end and data[pos] == 13 and data[pos + 1] == 10:
                pos += 2
            if pos >= end:
                return end
            i = data.find(b"\r\n\r\n", pos)
            if i >= 0:  # the common case: the whole head in this segment
                self._start(ts_ns, data[pos : i + 4], events, self._base + pos)
                return i + 4
            self.buf_ts = ts_ns
            self.buf_at = self._base + pos
            self.buf += data[pos:]
            if len(self.buf) > MAX_HEAD:
                self._malformed(events)
            return end
        old = len(self.buf)
        self.buf += data[pos:]
        i = self.buf.find(b"\r\n\r\n", max(0, old - 3))
        if i < 0:
            if len(self.buf) > MAX_HEAD:
                self._malformed(events)
            return end
        head = bytes(self.buf[: i + 4])
        self.buf.clear()
        self._start(self.buf_ts, head, events, self.buf_at)
        return pos + (i + 4 - old)

    def _start(self, ts_ns: int, head: bytes, events: list[Event], at: int) -> None:
        msg = self._parse_head(ts_ns, head)
        if msg is None:
            self._malformed(events)
            return
        msg.at = at
        msg.head_bytes = len(head)
        events.append((HEAD_EVENT, msg))
        self.msg = msg
        self._frame(msg, self.on_head(msg), events)

    def _parse_head(self, ts_ns: int, head: bytes, complete: bool = True) -> HttpMessage | None:
        """Start line and the headers we use (WANTED_HEADERS); None if the start line is not HTTP.

        Headers are found by one compiled regular expression over the head instead of a Python
        loop over every line: heads carry 10-20 headers and we keep six, and this is the
        recorder's hottest path. When `complete` is False the
        head was cut: only lines ending before the cut are read.
        """
        eol = head.find(b"\r\n")
        if eol < 0:
            return None  # cut inside the start line: method or target unknown
        msg = HttpMessage(self.is_request, ts_ns)
        start = head[:eol].split(b" ", 2)
        if self.is_request:
            if len(start) != 3:
                return None
            method, version = _METHODS.get(start[0]), _VERSIONS.get(start[2])  # the usual ones, decoded once
            if method is None:
                if not start[0] or not _TCHAR.issuperset(start[0]):
                    return None
                method = start[0].decode("ascii")
            if version is None:
                if not start[2].startswith(b"HTTP/"):
                    return None
                version = start[2].decode("latin-1")
            msg.method, msg.target, msg.version = method, start[1].decode("latin-1"), version
        else:
            if len(start) < 2:
                return None
            version, status = _VERSIONS.get(start[0]), _STATUSES.get(start[1])
            if version is None:
                if not start[0].startswith(b"HTTP/"):
                    return None
                version = start[0].decode("latin-1")
            if status is None:
                if len(start[1]) != 3 or not start[1].isdigit():
                    return None
                status = int(start[1])
            msg.version, msg.status = version, status
        end = len(head) if complete else head.rfind(b"\r\n") + 2
        headers = msg.headers
        for raw_name, raw_value in _WANTED_RE.findall(head, eol, end):
            name = _WANTED_NAMES.get(raw_name)
            if name is None:
                name = _WANTED_NAMES[raw_name] = raw_name.lower().decode("ascii")
            value = raw_value.strip().decode("latin-1")
            old = headers.get(name)
            headers[name] = value if old is None else old + ", " + value  # repeats joined, as RFC 9110 5.3 allows
        return msg

    def _frame(self, msg: HttpMessage, method: str | None, events: list[Event]) -> None:
        """Decide how this message's body ends (RFC 9112 6.3) and enter that state.

        `method` is, for a response, the method of the request it answers (None if unknown).
        """
        headers = msg.headers
        if not msg.is_request:
            status = msg.status or 0
            if status == 101 or (method == "CONNECT" and 200 <= status < 300):
                self._end(events)
                self.state = TUNNEL
                return
            if method == "HEAD" or status < 200 or status in (204, 304):
                self._end(events)
                return
        te = headers.get("transfer-encoding")
        if te is not None and te.lower().rstrip().endswith("chunked"):
            self.state = CHUNK_SIZE
            return
        cl = headers.get("content-length")
        if cl is not None:
            n = content_length(cl)
            if n < 0:
                msg.body_bytes = None
                self._end(events)
                self._malformed(events)  # body length unknowable: skip to the next head
                return
            if n == 0:
                self._end(events)
                return
            self.remaining = n
            self.state = BODY
            return
        if msg.is_request:
            self._end(events)  # a request without a length has no body
            return
        self.state = UNTIL_CLOSE  # a response without a length (or non-chunked coding) runs to close

    def _pass(self, n: int, events: list[Event]) -> None:
        """n bytes of a BODY or CHUNK_DATA passed (seen or not)."""
        self.remaining -= n
        self.msg.body_bytes += n  # type: ignore[union-attr, operator]
        if self.remaining == 0:
            if self.state == BODY:
                self._end(events)
            else:
                self.state = CHUNK_SIZE

    def _line(self, data: bytes, pos: int, events: list[Event]) -> int:
        """CHUNK_SIZE / TRAILERS: gather one line, then act on it."""
        i = data.find(b"\n", pos)
        if i < 0:
            self.buf += data[pos:]
            self.msg.body_bytes += len(data) - pos  # type: ignore[union-attr, operator]
            if len(self.buf) > 4096:
                self._desync(events)
            return len(data)
        self.buf += data[pos : i + 1]
        self.msg.body_bytes += i + 1 - pos  # type: ignore[union-attr, operator]
        line = bytes(self.buf).strip()
        self.buf.clear()
        if self.state == TRAILERS:
            if not line:
                self._end(events)
            return i + 1
        size = chunk_size(line.split(b";", 1)[0].strip())  # chunk extensions follow ';'
        if size < 0:
            self._malformed(events)
            return len(data)
        if size == 0:
            self.state = TRAILERS
        else:
            self.remaining = size + 2  # the chunk's data and the CRLF after it
            self.state = CHUNK_DATA
        return i + 1

    def _skip(self, n: int, events: list[Event]) -> None:
        """n bytes passed that we did not see."""
        while n > 0:
            state = self.state
            if state == BODY or state == CHUNK_DATA:
                take = min(self.remaining, n)
                self._pass(take, events)
                n -= take
            elif state == UNTIL_CLOSE:
                self.msg.body_bytes += n  # type: ignore[union-attr, operator]
                return
            elif state == TUNNEL or state == DESYNC:
                return
            elif state == HEAD and self.buf:
                self._cut_head(events)
                return
            else:  # a head, chunk-size line or trailer we needed is (partly) unseen
                self._desync(events)
                return

    # --- endings -------------------------------------------------------------------------

    def _end(self, events: list[Event]) -> None:
        msg = self.msg
        if msg is not None and not msg.done:
            msg.done = True
            events.append((END_EVENT, msg))
        self.msg = None
        self.state = HEAD

    def _cut_head(self, events: list[Event]) -> None:
        """The head in buf was cut by the capture prefix: emit what its complete lines say."""
        msg = self._parse_head(self.buf_ts, bytes(self.buf), complete=False)
        self.buf.clear()
        if msg is None:
            self._desync(events)
            return
        self.stats.add("http_truncated_heads")
        msg.at = self.buf_at
        msg.truncated = True
        msg.head_bytes = None
        msg.body_bytes = None
        events.append((HEAD_EVENT, msg))
        self.msg = msg
        method = self.on_head(msg)
        if not self.is_request and (msg.interim or msg.status in (204, 304) or method == "HEAD"):
            self._end(events)  # no body: the next head follows the cut one in stream order
            self.state = DESYNC
            return
        self._desync(events)

    def _desync(self, events: list[Event]) -> None:
        if self.msg is not None and not self.msg.done:
            self.msg.body_bytes = None
            self._end(events)
        self.stats.add("http_desync")
        self.buf.clear()
        self.msg = None
        self.state = DESYNC

    def _malformed(self, events: list[Event]) -> None:
        self.stats.add("http_malformed")
        if self.msg is not None and not self.msg.done:
            self.msg.body_bytes = None
            self._end(events)
        self.buf.clear()
        self.msg = None
        self.state = DESYNC
