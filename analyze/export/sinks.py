"""Where batches go: an OTLP/HTTP receiver (protobuf, gzip) or a JSON Lines file.

OTLP/HTTP follows the spec's rules (opentelemetry-specification, protocol/otlp.md), written
once for traces and metrics: one request per batch, POSTed to ENDPOINT/v1/traces or /v1/metrics;
retried only on 429, 502, 503 and 504 and when the connection fails, after the Retry-After the
receiver asked for or else an exponential backoff with jitter; never on 400 or another status
(the receiver said the data is wrong: sending it again gives the same answer). A 2xx answer may
carry `partial_success`: its rejected count and message are kept and reported.
Header values (tokens) are never printed: errors name the header, not its value, and an
endpoint's user:password is shown as `***`.
"""

from __future__ import annotations

import email.utils
import gzip
import http.client
import os
import random
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from ... import __version__
from ...errors import Exit, FlowtapeError, PermissionDenied, UsageError

RETRYABLE = frozenset({429, 502, 503, 504})
"""The statuses OTLP/HTTP says to retry (the receiver is overloaded or restarting)."""


class ExportError(FlowtapeError):
    """The receiver refused the data or could not be reached (exit 9)."""

    exit_code = Exit.EXPORT_FAILED


@dataclass
class Answer:
    """What the receiver said to one request: items it rejected and why (partial_success)."""

    rejected: int = 0
    message: str = ""


def parse_headers(text: str | None) -> dict[str, str]:
    """`k=v,k2=v2` (the OTEL_EXPORTER_OTLP_HEADERS form: values URL-encoded) -> a dict. A
    malformed entry is a UsageError that names its position, never its value."""
    out: dict[str, str] = {}
    if not text:
        return out
    for i, item in enumerate(text.split(","), 1):
        if not item.strip():
            continue
        k, sep, v = item.partition("=")
        k = k.strip()
        if not sep or not k or any(c in k for c in " \t:\r\n"):
            raise UsageError(f"--headers: entry {i} is not key=value (header values are not shown)")
        out[k] = urllib.parse.unquote(v.strip())
    return out


def redact_url(url: str) -> str:
    """The URL with any user:password replaced by ***."""
    p = urllib.parse.urlsplit(url)
    if p.username is None and p.password is None:
        return url
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = "***@" + host + (f":{p.port}" if p.port else "")
    return urllib.parse.urlunsplit((p.scheme, netloc, p.path, p.query, p.fragment))


@dataclass
class Backoff:
    """Exponential backoff with jitter: base * 2^attempt, each delay scaled by a random factor in
    [0.5, 1.5) so that many exporters restarted together do not retry in step; capped at `cap`."""

    base: float = 1.0
    cap: float = 32.0
    retries: int = 6
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.base * (2 ** attempt)) * (0.5 + self.rng.random())


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class OtlpHttp:
    """POSTs protobuf requests to an OTLP/HTTP receiver, gzip-compressed, with the spec's retries.

    `sleep` is injectable (tests record the waits instead of sleeping). One connection is kept
    open and reused (HTTP/1.1 keep-alive) and reopened after an error.
    """

    def __init__(self, endpoint: str, headers: dict[str, str] | None = None, timeout: float = 10.0, backoff: Backoff | None = None,
                 sleep: Callable[[float], None] = time.sleep, compress: bool = True):
        p = urllib.parse.urlsplit(endpoint)
        if p.scheme not in ("http", "https") or not p.hostname:
            raise UsageError(f"--endpoint {redact_url(endpoint)!r}: not an http:// or https:// URL (for example http://localhost:4318)")
        self.endpoint = endpoint
        self.shown = redact_url(endpoint).rstrip("/")
        self._scheme, self._host, self._port = p.scheme, p.hostname, p.port or (443 if p.scheme == "https" else 80)
        self._base = p.path.rstrip("/")
        self._auth = None
        if p.username is not None:
            import base64

            cred = f"{urllib.parse.unquote(p.username)}:{urllib.parse.unquote(p.password or '')}".encode()
            self._auth = "Basic " + base64.b64encode(cred).decode()
        self.headers = dict(headers or {})
        self.timeout, self.backoff, self.sleep, self.compress = timeout, backoff or Backoff(), sleep, compress
        self._conn: http.client.HTTPConnection | None = None
        self.requests = 0
        self.retries = 0
        self.bytes_sent = 0

    def url(self, signal: str) -> str:
        return f"{self.shown}/v1/{signal}"

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._scheme == "https":
                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout, context=ssl.create_default_context())
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def send(self, signal: str, body: bytes, what: str) -> Answer:
        """POST one request to /v1/{signal}; `what` names it in errors ("batch 3 of traces")."""
        # level 1: several times less CPU than the default (6) for somewhat bigger requests
        data = gzip.compress(body, compresslevel=1) if self.compress else body
        headers = {"Content-Type": "application/x-protobuf", "User-Agent": f"flowtape/{__version__}", **self.headers}
        if self.compress:
            headers["Content-Encoding"] = "gzip"
        if self._auth and "authorization" not in {k.lower() for k in headers}:
            headers["Authorization"] = self._auth
        path = f"{self._base}/v1/{signal}"
        attempt = 0
        while True:
            status, wait_hint, reason, payload, ctype = self._post(path, data, headers)
            self.requests += 1
            if status is not None and 200 <= status < 300:
                self.bytes_sent += len(data)
                return _answer(signal, payload, ctype)
            retryable = status is None or status in RETRYABLE
            if not retryable:
                raise ExportError(_refusal(self.url(signal), what, status, reason, payload, ctype))
            if attempt >= self.backoff.retries:
                said = f"{status} {reason}" if status is not None else reason
                raise ExportError(f"{self.url(signal)}: {what} not accepted after {attempt + 1} attempts (last: {said})")
            delay = wait_hint if wait_hint is not None else self.backoff.delay(attempt)
            attempt += 1
            self.retries += 1
            self.sleep(delay)

    def _post(self, path: str, data: bytes, headers: dict[str, str]) -> tuple[int | None, float | None, str, bytes, str]:
        """(status or None when the connection failed, Retry-After seconds, reason, body, content type)."""
        try:
            conn = self._connection()
            conn.request("POST", path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            if resp.getheader("Connection", "").lower() == "close":
                self._drop()
            return resp.status, retry_after(resp.getheader("Retry-After")), resp.reason or "", payload, resp.getheader("Content-Type", "") or ""
        except (OSError, http.client.HTTPException) as e:
            self._drop()
            why = e.strerror if isinstance(e, OSError) and e.strerror else (type(e).__name__ if not str(e) else str(e).splitlines()[0][:120])
            if isinstance(e, ssl.SSLError):
                why = f"TLS: {e.reason or e}"
            return None, None, why, b"", ""

    def close(self) -> None:
        self._drop()


def _answer(signal: str, payload: bytes, ctype: str) -> Answer:
    if not payload:
        return Answer()
    msg = ExportTraceServiceResponse() if signal == "traces" else ExportMetricsServiceResponse()
    try:
        if "json" in ctype:
            from google.protobuf.json_format import Parse

            Parse(payload.decode("utf-8", "replace"), msg, ignore_unknown_fields=True)
        else:
            msg.ParseFromString(payload)
    except Exception:  # an answer we cannot read is still a 2xx: the data was taken
        return Answer()
    ps = msg.partial_success
    rejected = ps.rejected_spans if signal == "traces" else ps.rejected_data_points
    return Answer(int(rejected), ps.error_message)


def _refusal(url: str, what: str, status: int, reason: str, payload: bytes, ctype: str) -> str:
    """One line for a receiver's refusal, with its google.rpc.Status message when it sent one."""
    detail = ""
    if payload:
        detail = "" if "text" in ctype or "json" in ctype else rpc_status_message(payload)
        if not detail and ("text" in ctype or "json" in ctype):
            detail = payload.decode("utf-8", "replace")
    detail = " ".join(detail.split())[:200]
    hint = {401: " (check --headers)", 403: " (check --headers)", 404: " (is this an OTLP/HTTP receiver? /v1/<signal> is appended to --endpoint)",
            413: " (a request was over the receiver's size limit: lower --batch-spans)"}.get(status, "")
    return f"{url}: the receiver refused {what}: {status} {reason}{hint}" + (f": {detail}" if detail else "")


def rpc_status_message(payload: bytes) -> str:
    """The `message` (field 2) of a protobuf google.rpc.Status, which OTLP/HTTP receivers send
    with a 4xx/5xx; "" when the body is not one. (Read by hand: the googleapis protos are not a
    dependency of opentelemetry-proto.)"""

    def varint(i: int) -> tuple[int, int]:
        v = shift = 0
        while True:
            b = payload[i]
            v |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                return v, i
            shift += 7
            if shift > 63:
                raise ValueError("varint")

    i, message = 0, ""
    try:
        while i < len(payload):
            tag, i = varint(i)
            field_no, wire = tag >> 3, tag & 7
            if wire == 0:
                _, i = varint(i)
            elif wire == 2:
                n, i = varint(i)
                if i + n > len(payload):
                    return ""
                if field_no == 2:
                    message = payload[i:i + n].decode("utf-8", "replace")
                i += n
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            else:
                return ""
    except (IndexError, ValueError):
        return ""
    return message


class JsonLines:
    """Writes one JSON line per batch to FILE, through FILE.partial renamed at the end: a file
    export that stops halfway leaves no half file under the name asked for. FILE that exists and
    is not a regular file (/dev/null, /dev/stdout, a FIFO) is written directly: renaming over it
    would replace the device node itself."""

    def __init__(self, path: Path):
        self.path = Path(path)
        direct = self.path.exists() and not self.path.is_file()
        self.tmp = self.path if direct else self.path.with_name(self.path.name + ".partial")
        try:
            self._f = open(self.tmp, "wb")
        except OSError as e:
            raise PermissionDenied(f"cannot write {self.path}: {e.strerror or e}") from None
        self.lines = 0
        self.bytes = 0

    def write(self, line: bytes | str) -> None:
        data = line.encode() if isinstance(line, str) else line
        self._f.write(data)
        self._f.write(b"\n")
        self.lines += 1
        self.bytes += len(data) + 1

    def commit(self) -> None:
        self._f.close()
        if self.tmp != self.path:
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._f.close()
        if self.tmp == self.path:
            return
        try:
            os.unlink(self.tmp)
        except OSError:
            pass
