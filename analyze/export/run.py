"""`export(tape, options, target)`: a tape's spans and metrics to an OTLP/HTTP receiver or a file.

Streams, in order: "http" (HTTP spans, time slice by time slice), "dns" (DNS spans), "metrics".
Each batch is encoded and sent (or written) before the next is made: memory holds one time slice
in DuckDB (which spills beyond its memory limit) and one batch in Python, whatever the tape's size.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from ...reader import Tape
from ..reports.filters import Filters
from . import metrics as m
from . import spans as sp
from .checkpoint import Checkpoint, Position
from .encode import Group, ResourceCache, split_groups, traces_json_line, traces_request, metrics_json_line
from .resources import Resources
from .sinks import ExportError, JsonLines, OtlpHttp

SIGNALS = ("traces", "metrics")


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


def _stream(target: "_Target", stream: str, items: Iterator, batcher: _Batcher, start: Position) -> None:
    """Send the batches of items ((slice, record batch), and (slice, None) at a slice's end),
    skipping those before `start`."""
    j, current = 0, None
    try:
        for i, rb in items:
            if i != current:
                j, current = 0, i
            groups_list = batcher.add(rb) if rb is not None else batcher.flush()
            for groups in groups_list:
                if (i, j) >= start[:2]:
                    target.traces(stream, (i, j), groups, start[2] if (i, j) == start[:2] else 0)
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
    sides = sp.HttpSides(tape, f, o.slice_rows)
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
        sides.materialize(sl, table=False)
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
