"""`export(tape, options, target)`: a tape's spans and metrics to an OTLP/HTTP receiver or a file.

Streams, in order: "http" (HTTP spans, time slice by time slice), "dns" (DNS spans), "metrics".
Each batch is encoded and sent (or written) before the next is made: memory holds one time slice
in DuckDB (which spills beyond its memory limit) and one batch in Python, whatever the tape's size.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from ...reader import Tape
from ..reports.filters import Filters
import numpy as np
import pyarrow as pa

from . import columnar
from . import metrics as m
from . import spans as sp
from . import wire
from .checkpoint import Checkpoint, Position
from .encode import SCOPE_OPEN, Group, ResourceCache, scope_pb, split_groups, traces_json_line, traces_request, metrics_json_line
from .resources import Resources
from .sinks import ExportError, JsonLines, OtlpHttp

SIGNALS = ("traces", "metrics")

ENCODERS = ("columnar", "reference")


def encoder_from_env() -> str:
    """The HTTP span encoder: columnar (wire.py over Arrow columns; the default) or reference
    (JSON written in SQL, decoded into opentelemetry-proto's messages), by FLOWTAPE_EXPORT_ENCODER.
    Both send the same bytes (tests/test_export_wire.py); the reference is kept to hold the fast
    one to it and to measure against (benchmarks/bench_export.py)."""
    e = os.environ.get("FLOWTAPE_EXPORT_ENCODER", "columnar")
    if e not in ENCODERS:
        from ...errors import UsageError

        raise UsageError(f"FLOWTAPE_EXPORT_ENCODER={e!r}: choose {' or '.join(ENCODERS)}")
    return e


@dataclass(frozen=True)
class ExportOptions:
    signals: tuple[str, ...] = SIGNALS
    filters: Filters = Filters()
    batch_spans: int = 512
    """Spans per batch: the Collector's batch processor sends 8192; 512 keeps a request of these
    spans (about 1 KB each in protobuf) well under 1 MB before compression."""
    max_request_bytes: int = 1_000_000
    """A request bigger than this (protobuf, before gzip) is halved: receivers cap request bodies
    (aiohttp-based ones such as ddapm-test-agent at 1 MiB, gRPC gateways at 4 MiB by default)."""
    metric_points: int = 1000
    interval_s: float = 10.0
    slice_rows: int = sp.SLICE_ROWS
    memory_limit: str | None = None
    temp_directory: str | None = None
    encoder: str = "columnar"
    """How HTTP spans are encoded (ENCODERS); not part of the key: both send the same requests."""

    def key_args(self) -> dict:
        """What makes one export differ from another (the checkpoint key; see checkpoint.py)."""
        f = self.filters
        return {"signals": sorted(self.signals), "since": f.since.isoformat() if f.since else None, "until": f.until.isoformat() if f.until else None,
                "namespace": f.namespace, "batch_spans": self.batch_spans, "max_request_bytes": self.max_request_bytes,
                "metric_points": self.metric_points, "interval_s": self.interval_s, "slice_rows": self.slice_rows}


@dataclass
class Summary:
    sent: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    retries: int = 0
    bytes: int = 0
    rejected: int = 0
    messages: list[str] = field(default_factory=list)
    unpaired_server_spans: int = 0
    seconds: float = 0.0

    def line(self, target: str) -> str:
        parts = [f"{n:,} {s}" for s, n in (("HTTP spans", self.sent.get("http", 0)), ("DNS spans", self.sent.get("dns", 0)),
                                           ("metric points", self.sent.get("metrics", 0))) if n or s == "HTTP spans"]
        skipped = sum(self.skipped.values())
        extra = f"; {skipped:,} acknowledged earlier, not sent again" if skipped else ""
        rate = sum(v for k, v in self.sent.items() if k != "metrics") / self.seconds if self.seconds > 0 else 0
        return (f"exported {', '.join(parts)} to {target} in {self.requests:,} requests ({self.seconds:.1f} s, {rate:,.0f} spans/s"
                f"{f', {self.retries} retries' if self.retries else ''}){extra}")


class _Target:
    """Sends (OtlpHttp, with a checkpoint) or writes (JsonLines) one batch at a time."""

    def __init__(self, sink: OtlpHttp | JsonLines, options: ExportOptions, checkpoint: Checkpoint | None, summary: Summary):
        self.sink, self.o, self.ck, self.s = sink, options, checkpoint, summary
        self.cache = ResourceCache()

    def traces(self, stream: str, pos: tuple[int, int], groups: list[Group], first_request: int) -> None:
        n_items = sum(len(x) for _, x in groups)
        if isinstance(self.sink, JsonLines):
            self.sink.write(traces_json_line(groups))
            self.s.requests += 1
            self.s.sent[stream] = self.s.sent.get(stream, 0) + n_items
            return
        requests = self._sized(groups)
        for k, (req, n) in enumerate(requests):
            if k < first_request:
                continue
            ans = self.sink.send("traces", req.SerializeToString(), f"batch {pos[1] + 1} of slice {pos[0] + 1} ({stream} spans)")
            self._answered(stream, (pos[0], pos[1], k + 1) if k + 1 < len(requests) else (pos[0], pos[1] + 1, 0), n, ans)

    def traces_wire(self, stream: str, pos: tuple[int, int], batch: wire.Batch, res: "_WireResources", first_request: int) -> None:
        """`traces` for wire.Batch batches (the columnar encoder): the same lines and requests."""
        if isinstance(self.sink, JsonLines):
            self.sink.write(wire.json_line(batch, res.json, SCOPE_OPEN))
            self.s.requests += 1
            self.s.sent[stream] = self.s.sent.get(stream, 0) + len(batch)
            return
        requests = self._sized_wire(batch.groups(), res)
        for k, (body, n) in enumerate(requests):
            if k < first_request:
                continue
            ans = self.sink.send("traces", body, f"batch {pos[1] + 1} of slice {pos[0] + 1} ({stream} spans)")
            self._answered(stream, (pos[0], pos[1], k + 1) if k + 1 < len(requests) else (pos[0], pos[1] + 1, 0), n, ans)

    def _sized_wire(self, groups: list[wire.Group], res: "_WireResources") -> list[tuple[bytes, int]]:
        body = wire.traces_request_bytes(groups, res.pb(self.cache), scope_pb())
        n = sum(len(g) for g in groups)
        if n <= 1 or len(body) <= self.o.max_request_bytes:
            return [(body, n)]
        a, b = wire.split_groups(groups)
        return self._sized_wire(a, res) + self._sized_wire(b, res)

    def _sized(self, groups: list[Group]) -> list[tuple]:
        """The batch as requests each within max_request_bytes (halved until they fit)."""
        req = traces_request(groups, self.cache)
        n = sum(len(x) for _, x in groups)
        if n <= 1 or req.ByteSize() <= self.o.max_request_bytes:
            return [(req, n)]
        a, b = split_groups(groups)
        return self._sized(a) + self._sized(b)

    def metrics(self, index: int, req, n: int) -> None:
        if isinstance(self.sink, JsonLines):
            self.sink.write(metrics_json_line(req))
            self.s.requests += 1
            self.s.sent["metrics"] = self.s.sent.get("metrics", 0) + n
            return
        ans = self.sink.send("metrics", req.SerializeToString(), f"metrics batch {index + 1}")
        self._answered("metrics", (0, index + 1, 0), n, ans)

    def _answered(self, stream: str, next_pos: Position, n: int, ans) -> None:
        self.s.requests += 1
        self.s.sent[stream] = self.s.sent.get(stream, 0) + n
        if ans.rejected:
            self.s.rejected += ans.rejected
            if ans.message and ans.message not in self.s.messages and len(self.s.messages) < 3:
                self.s.messages.append(ans.message)
        if self.ck is not None:
            self.ck.acknowledged(stream, next_pos, n, ans.rejected)

    def slice_done(self, stream: str, next_slice: int) -> None:
        if self.ck is not None and not isinstance(self.sink, JsonLines):
            self.ck.acknowledged(stream, (next_slice, 0, 0), 0, 0)

    def position(self, stream: str) -> Position:
        return self.ck.position(stream) if self.ck is not None and not isinstance(self.sink, JsonLines) else (0, 0, 0)

    def finish(self, stream: str) -> None:
        if self.ck is not None and not isinstance(self.sink, JsonLines):
            self.ck.finish(stream)

    def done(self, stream: str) -> bool:
        return self.ck is not None and not isinstance(self.sink, JsonLines) and self.ck.done(stream)


def _prefetched(produce: Callable[[], Iterable], depth: int = 4) -> Iterator:
    """The items of `produce()`, made by a second thread up to `depth` ahead. That thread does all
    the DuckDB work (creating each slice, running its query, reading its Arrow batches; DuckDB
    releases the GIL), so DuckDB computes while this thread encodes and writes or sends."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        gen = iter(produce())
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)
        finally:
            # a stopped consumer (a refusal, Ctrl-C) must not leave DuckDB's result open on the
            # connection: closing the generator drops its Arrow reader now
            close = getattr(gen, "close", None)
            if close is not None:
                close()

    th = threading.Thread(target=work, name="flowtape-export-read", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        th.join()


def _parallel_slices(tape: Tape, todo: list[int], produce: Callable, workers: int = 2, depth: int = 4) -> Iterator:
    """(slice, record batch) for the slices in `todo`, in order, then (slice, None) after each:
    `workers` threads, each with its own cursor, make every workers-th slice (`produce(cursor,
    slice)` yields its record batches) while this thread takes them in order."""
    queues = [queue.Queue(maxsize=depth) for _ in range(workers)]
    done = object()
    stop = threading.Event()

    def put(q: queue.Queue, item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work(k: int) -> None:
        con = tape.con.cursor()
        try:
            for i in todo[k::workers]:
                gen = produce(con, i)
                try:
                    for rb in gen:
                        if not put(queues[k], (i, rb)):
                            return
                finally:
                    gen.close()
                if not put(queues[k], (i, None)):
                    return
            put(queues[k], done)
        except BaseException as e:  # handed to the consumer, raised there
            put(queues[k], e)
        finally:
            con.close()

    threads = [threading.Thread(target=work, args=(k,), name=f"flowtape-export-{k}", daemon=True) for k in range(workers)]
    for th in threads:
        th.start()
    try:
        for n, i in enumerate(todo):
            q = queues[n % workers]
            while True:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                if item is done:
                    raise RuntimeError("a slice worker stopped early")
                yield item
                if item[1] is None:
                    break
    finally:
        stop.set()
        for th in threads:
            th.join()


def _utf8_slices(col) -> list:
    """The values of an Arrow string column as memoryviews into its buffer: span JSON goes to the
    file (or to json.loads) as bytes, never made into Python strings and encoded back (on 3.7M
    spans of 1.3 KB, those two copies were a third of the Python thread's time)."""
    import numpy as np
    import pyarrow as pa

    if col.type in (pa.string(), pa.large_string()) and col.null_count == 0:
        offsets = np.frombuffer(col.buffers()[1], dtype=np.int32 if col.type == pa.string() else np.int64)
        o = offsets[col.offset:col.offset + len(col) + 1].tolist()
        data = col.buffers()[2]
        view = memoryview(data) if data is not None else memoryview(b"")
        return [view[o[i]:o[i + 1]] for i in range(len(col))]
    return [v.encode() for v in col.to_pylist()]


class _Batcher:
    """Cuts record batches (columns: rid, the resource's columns, span_json) into runs of `size`
    spans, each grouped by resource in first-seen order. `key(rid, record batch, row)` makes a
    resource's JSON the first time its rid is seen (rid: a hash of the resource's columns, so
    only one integer per span crosses into Python)."""

    def __init__(self, size: int, key: Callable[[int, object, int], str]):
        self.size, self.key = size, key
        self.rids: list[int] = []
        self.spans: list = []
        self.memo: dict[int, str] = {}

    def _group(self, r: list[int], s: list) -> list[Group]:
        out: dict[str, list] = {}
        memo = self.memo
        for rid, js in zip(r, s):
            res = memo[rid]
            g = out.get(res)
            if g is None:
                out[res] = [js]
            else:
                g.append(js)
        return list(out.items())

    def add(self, rb) -> Iterator[list[Group]]:
        col = rb.column(0).to_pylist()
        for i, rid in enumerate(col):
            if rid not in self.memo:
                self.memo[rid] = self.key(rid, rb, i)
        self.rids.extend(col)
        self.spans.extend(_utf8_slices(rb.column(rb.num_columns - 1)))
        size = self.size
        while len(self.spans) >= size:
            yield self._group(self.rids[:size], self.spans[:size])
            del self.rids[:size], self.spans[:size]

    def flush(self) -> Iterator[list[Group]]:
        if self.spans:
            yield self._group(self.rids, self.spans)
        self.rids, self.spans = [], []


class _WireResources:
    """Resources of the columnar path: rid -> index of its resource (one per distinct resource
    JSON, as the reference groups), with each resource's JSON and, when sending, protobuf."""

    def __init__(self, resources: Resources, names: dict[int, tuple]):
        self.resources, self.names = resources, names
        self.json: list[bytes] = []
        self._pb: list[bytes] = []
        self._by_json: dict[str, int] = {}
        self._rids = np.zeros(0, np.uint64)
        self._idx = np.zeros(0, np.int64)

    def indices(self, rid: np.ndarray, res_rows) -> np.ndarray:
        """The resource index of each rid; res_rows (rid and columnar.RESOURCE_COLUMNS) holds the
        first row of every distinct rid of the batch."""
        pos = np.searchsorted(self._rids, rid)
        known = (pos < len(self._rids)) & (self._rids[np.minimum(pos, len(self._rids) - 1)] == rid) if len(self._rids) else np.zeros(len(rid), bool)
        if not known.all():
            new_r, new_i = [], []
            for row in res_rows.to_pylist():
                r = row["rid"]
                k = int(np.searchsorted(self._rids, np.uint64(r)))
                if k < len(self._rids) and int(self._rids[k]) == r:
                    continue
                js = self.resources.json((self.names.get(row["nid"]), row["pid"], row["comm"], row["node"], row["local_ip"]))
                i = self._by_json.get(js)
                if i is None:
                    i = self._by_json[js] = len(self.json)
                    self.json.append(js.encode())
                new_r.append(r)
                new_i.append(i)
            rids = np.concatenate([self._rids, np.array(new_r, np.uint64)])
            idx = np.concatenate([self._idx, np.array(new_i, np.int64)])
            order = np.argsort(rids, kind="stable")
            self._rids, self._idx = rids[order], idx[order]
            pos = np.searchsorted(self._rids, rid)
        return self._idx[pos]

    def pb(self, cache: ResourceCache) -> list[bytes]:
        while len(self._pb) < len(self.json):
            self._pb.append(cache.get(self.json[len(self._pb)].decode()).SerializeToString())
        return self._pb


class _WireBatcher:
    """_Batcher for the columnar path: items are (rid, resource rows, span bytes) per record
    batch; batches (wire.Batch) of `size` consecutive spans, grouped by resource in first-seen
    order when they are written."""

    def __init__(self, size: int, res: _WireResources):
        self.size, self.res = size, res
        self.idx: list[np.ndarray] = []
        self.spans: list = []
        self.n = 0

    def _take(self, k: int) -> wire.Batch:
        idx = np.concatenate(self.idx)
        spans = pa.concat_arrays(self.spans) if len(self.spans) > 1 else self.spans[0]
        batch = wire.Batch(idx[:k], spans.slice(0, k))
        self.idx, self.spans, self.n = ([idx[k:]], [spans.slice(k)], self.n - k) if k < len(idx) else ([], [], 0)
        return batch

    def add(self, item) -> Iterator[wire.Batch]:
        rid, res_rows, spans = item
        self.idx.append(self.res.indices(rid, res_rows))
        self.spans.append(spans)
        self.n += len(spans)
        while self.n >= self.size:
            yield self._take(self.size)

    def flush(self) -> Iterator[wire.Batch]:
        if self.n:
            yield self._take(self.n)
        self.idx, self.spans, self.n = [], [], 0


def _stream(target: "_Target", stream: str, items: Iterator, batcher, start: Position, send: Callable | None = None) -> None:
    """Send the batches of items ((slice, record batch), and (slice, None) at a slice's end),
    skipping those before `start`."""
    send = send or target.traces
    j, current = 0, None
    try:
        for i, rb in items:
            if i != current:
                j, current = 0, i
            groups_list = batcher.add(rb) if rb is not None else batcher.flush()
            for groups in groups_list:
                if (i, j) >= start[:2]:
                    send(stream, (i, j), groups, start[2] if (i, j) == start[:2] else 0)
                j += 1
            if rb is None:
                target.slice_done(stream, i + 1)
    finally:
        # stop the reading thread now, not when the exception's traceback is freed: DuckDB's
        # open result would refuse the next statement on the connection
        close = getattr(items, "close", None)
        if close is not None:
            close()


def export(tape: Tape, options: ExportOptions, sink: OtlpHttp | JsonLines, checkpoint: Checkpoint | None = None) -> Summary:
    """Export the tape's spans and/or metrics (options.signals) to `sink`. With a checkpoint
    (OTLP/HTTP only), what it records as acknowledged is skipped and each acknowledgement is
    recorded as it comes. Raises ExportError when the receiver refuses a request."""
    t0 = time.perf_counter()
    o, f = options, options.filters
    summary = Summary()
    if o.memory_limit:
        tape.sql(f"SET memory_limit = '{o.memory_limit}'")
    if o.temp_directory:
        tape.sql(f"SET temp_directory = '{o.temp_directory}'")
    target = _Target(sink, o, checkpoint, summary)
    resources = Resources()
    # the reference encoder keeps the reference naming too (every row named by enriched_http):
    # tests/test_export_wire.py holds the fast path to it whole
    sides = sp.HttpSides(tape, f, o.slice_rows, naming="keyed" if o.encoder == "columnar" else "enriched")
    want_traces, want_metrics = "traces" in o.signals, "metrics" in o.signals
    need_http = (want_traces and not target.done("http")) or (want_metrics and not target.done("metrics"))
    names: dict[int, tuple] = {}
    if need_http:
        sides.build()
        names = sides.names()
    if want_traces or want_metrics:
        sp.prepare_dns(tape)
    try:
        if want_traces:
            _http_spans(tape, sides, names, resources, target, o)
            _dns_spans(tape, f, resources, target, o)
        if want_metrics and not target.done("metrics"):
            _metrics(tape, sides, names, target, o)
    finally:
        if need_http:
            sides.close()
    if checkpoint is not None and not isinstance(sink, JsonLines):
        summary.skipped = {s: checkpoint.items(s) - summary.sent.get(s, 0) for s in ("http", "dns", "metrics")}
        summary.skipped = {k: v for k, v in summary.skipped.items() if v > 0}
        checkpoint.complete()
    if isinstance(sink, OtlpHttp):
        summary.retries, summary.bytes = sink.retries, sink.bytes_sent
    summary.seconds = time.perf_counter() - t0
    return summary


def _http_spans(tape: Tape, sides: sp.HttpSides, names: dict[int, tuple], resources: Resources, target: _Target, o: ExportOptions) -> None:
    if target.done("http"):
        return
    if o.encoder == "columnar":
        return _http_spans_columnar(tape, sides, names, resources, target, o)
    start = target.position("http")
    q = sp.http_spans_sql()

    def key(rid: int, rb, i: int) -> str:
        nid, pid, comm, node, ip = (rb.column(c)[i].as_py() for c in range(1, 6))
        return resources.json((names.get(nid), pid, comm, node, ip))

    todo = [i for i in range(len(sides.slices)) if i >= start[0]]  # before: acknowledged, not even computed

    def produce(con, i: int) -> Iterator:
        sides.materialize(sides.slices[i], table=False, con=con)
        yield from con.sql(q).to_arrow_reader(o.batch_spans)

    _stream(target, "http", _parallel_slices(tape, todo, produce), _Batcher(o.batch_spans, key), start)
    target.finish("http")


READ_ROWS = 8192
"""Rows per Arrow record batch read from DuckDB by the columnar path (encoded at once)."""


def _http_spans_columnar(tape: Tape, sides: sp.HttpSides, names: dict[int, tuple], resources: Resources, target: _Target, o: ExportOptions) -> None:
    start = target.position("http")
    mode = "json" if isinstance(target.sink, JsonLines) else "pb"
    todo = [i for i in range(len(sides.slices)) if i >= start[0]]
    res = _WireResources(resources, names)

    def produce(con, i: int) -> Iterator:
        # the slice is a view, read once: slice_items fetches its rows as Arrow for both of its
        # queries (its classes, then its spans). The worker thread also encodes (Arrow's kernels
        # and _wire.c release the GIL).
        sides.materialize(sides.slices[i], table=False, con=con)
        try:
            yield from columnar.slice_items(con, mode, READ_ROWS)
        finally:
            con.execute("DROP VIEW IF EXISTS ftx_slice")

    def send(stream, pos, batch, first):
        target.traces_wire(stream, pos, batch, res, first)

    _stream(target, "http", _parallel_slices(tape, todo, produce), _WireBatcher(o.batch_spans, res), start, send)
    target.finish("http")


def _dns_spans(tape: Tape, f: Filters, resources: Resources, target: _Target, o: ExportOptions) -> None:
    if target.done("dns"):
        return
    start = target.position("dns")
    n = len(sp.DNS_RESOURCE_COLUMNS)

    def key(rid: int, rb, i: int) -> str:
        k = [rb.column(c)[i].as_py() for c in range(1, n + 1)]
        return resources.json((tuple(k[:-4]), *k[-4:]))

    def produce() -> Iterator:
        for rb in tape.sql(sp.dns_spans_sql(f)).to_arrow_reader(o.batch_spans):
            yield 0, rb
        yield 0, None

    _stream(target, "dns", _prefetched(produce), _Batcher(o.batch_spans, key), start)
    target.finish("dns")


def window_of(tape: Tape, f: Filters, interval_s: float) -> m.Window | None:
    start, end = tape.window
    if f.since:
        start = _ns(f.since) if start is None else max(start, _ns(f.since))
    if f.until:
        end = _ns(f.until) if end is None else min(end, _ns(f.until))
    if start is None or end is None:
        return None
    return m.Window(start, end, int(interval_s * 1e9))


def _ns(t: dt.datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def _metrics(tape: Tape, sides: sp.HttpSides, names: dict[int, tuple], target: _Target, o: ExportOptions) -> None:
    w = window_of(tape, o.filters, o.interval_s)
    if w is None:
        target.finish("metrics")
        return
    acc = m.Accumulator(w)
    q = m.http_slice_sql(w)
    for sl in sides.slices:
        sides.materialize(sl, table=False, wide=True)
        m.add_rows(acc, iter(tape.sql(q).fetchall()), names)
    m.add_rows(acc, m.dns_rows(tape, o.filters, w), names)
    tape.enriched("flows").create_view("ftx_flows", replace=True)
    m.add_flow_rows(acc, tape, o.filters)
    start = target.position("metrics")
    for j, (req, n) in enumerate(m.metric_requests(acc, o.metric_points)):
        if j < start[1]:
            continue
        target.metrics(j, req, n)
    target.finish("metrics")


__all__ = ["ExportError", "ExportOptions", "Summary", "export", "SIGNALS"]
