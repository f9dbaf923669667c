"""`flowtape export otlp`: a tape's spans and metrics to an OTLP/HTTP receiver or a JSON Lines file."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from ...errors import Exit, UsageError
from ...reader import Tape
from ..reports.filters import Filters, parse_time
from .checkpoint import Checkpoint, default_dir, export_key
from .run import SIGNALS, ExportOptions, encoder_from_env, export
from .sinks import ExportError, JsonLines, OtlpHttp, parse_headers, redact_url

export_app = typer.Typer(help="Send a tape to other tools: OpenTelemetry (OTLP/HTTP or JSON Lines).", no_args_is_help=True)


def _signals(text: str) -> tuple[str, ...]:
    got = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    bad = [s for s in got if s not in SIGNALS]
    if bad or not got:
        raise UsageError(f"--signals {text!r}: choose from {', '.join(SIGNALS)} (comma-separated)")
    return got


@export_app.command("otlp")
def otlp_cmd(
    tape: Annotated[Path, typer.Argument(help="Path of a tape.", show_default=False)],
    endpoint: Annotated[Optional[str], typer.Option("--endpoint", "-e", help="OTLP/HTTP base URL (/v1/traces and /v1/metrics are appended); default $OTEL_EXPORTER_OTLP_ENDPOINT.", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write OTLP JSON Lines to this file instead (one TracesData or MetricsData per line).", show_default=False)] = None,
    signals: Annotated[str, typer.Option("--signals", help="What to export: traces, metrics or both.")] = "traces,metrics",
    since: Annotated[Optional[str], typer.Option("--since", help="Only what started at or after this time (ISO 8601, UTC).")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="Only what started before this time (ISO 8601, UTC).")] = None,
    namespace: Annotated[Optional[str], typer.Option("--namespace", "-n", help="Only exchanges with an endpoint in this namespace.")] = None,
    headers: Annotated[Optional[str], typer.Option("--headers", help="Request headers 'k=v,k2=v2' (values URL-encoded; never printed); default $OTEL_EXPORTER_OTLP_HEADERS.", show_default=False)] = None,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between two cumulative metric points.", min=0.001)] = 10.0,
    batch_spans: Annotated[int, typer.Option("--batch-spans", help="Spans per request (a request over 1 MB is halved).", min=1)] = 512,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the receiver's answer to one request.", min=0.1)] = 10.0,
    retries: Annotated[int, typer.Option("--retries", help="Retries of a request the receiver may take later (429, 502, 503, 504, no connection).", min=0)] = 6,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Where acknowledged requests are recorded [default: ~/.local/state/flowtape/export/KEY.json].", show_default=False)] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Ignore the checkpoint: send everything again.")] = False,
    memory_limit: Annotated[str, typer.Option("--memory-limit", help="DuckDB's memory limit (it spills to a temporary folder beyond it).")] = "1GB",
) -> None:
    """Export a tape as OpenTelemetry: a span per HTTP exchange side and DNS lookup, with the
    tape's names (service, pod, namespace, node, zone) as resources and the original timestamps;
    HTTP and DNS duration histograms, flow bytes per edge, inter-zone bytes and the service graph
    as cumulative metrics. OTLP/HTTP protobuf with gzip, retried as the spec says; an interrupted
    export run again with the same arguments sends only what was not acknowledged.

    Example: flowtape export otlp fixtures/tiny.tape --output /tmp/tiny-otlp.jsonl
    """
    endpoint = endpoint or (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") if output is None else None)
    if (endpoint is None) == (output is None):
        raise UsageError("give --endpoint URL (an OTLP/HTTP receiver) or --output FILE.jsonl, not both" if endpoint and output
                         else "give --endpoint URL (an OTLP/HTTP receiver, e.g. http://localhost:4318) or --output FILE.jsonl")
    header_text = headers if headers is not None else os.environ.get("OTEL_EXPORTER_OTLP_HEADERS")
    hdrs = parse_headers(header_text)
    f = Filters(parse_time(since, "--since") if since else None, parse_time(until, "--until") if until else None, namespace)
    f.namespace_sql("x")  # checks the namespace's form now: one line, before any work
    t = Tape(tape)
    for p in t.problems:
        print(f"flowtape: {p.severity}: {p.where(t.path)}", file=sys.stderr)
    tmp = tempfile.mkdtemp(prefix="flowtape-export-")
    opts = ExportOptions(signals=_signals(signals), filters=f, batch_spans=batch_spans, interval_s=interval, memory_limit=memory_limit, temp_directory=tmp,
                         encoder=encoder_from_env())
    try:
        if output is not None:
            _to_file(t, opts, output)
        else:
            _to_receiver(t, opts, endpoint, hdrs, timeout, retries, checkpoint, fresh)
    finally:
        t.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _to_file(t: Tape, opts: ExportOptions, output: Path) -> None:
    sink = JsonLines(output)
    try:
        summary = export(t, opts, sink)
    except BaseException:
        sink.abort()
        raise
    sink.commit()
    print(f"flowtape: {summary.line(str(output))}", file=sys.stderr)


def _to_receiver(t: Tape, opts: ExportOptions, endpoint: str, hdrs: dict, timeout: float, retries: int, checkpoint: Optional[Path], fresh: bool) -> None:
    from .sinks import Backoff

    sink = OtlpHttp(endpoint, hdrs, timeout=timeout, backoff=Backoff(retries=retries))
    key = export_key(t.path / "manifest.json", {**opts.key_args(), "endpoint": endpoint})
    path = checkpoint or default_dir() / f"{key[:20]}.json"
    ck = Checkpoint.open(path, key, {"tape": str(t.path.resolve()), "endpoint": redact_url(endpoint)}, fresh=fresh)
    if ck.completed and not fresh:
        print(f"flowtape: nothing to send: this export was completed at {ck.completed} (checkpoint {path}); --fresh sends it again", file=sys.stderr)
        return
    if ck.resumed:
        print(f"flowtape: resuming from checkpoint {path}", file=sys.stderr)
    try:
        summary = export(t, opts, sink, ck)
    except ExportError as e:
        raise ExportError(f"{e.message} (what was acknowledged before is recorded in {path})") from None
    except KeyboardInterrupt:
        print(f"flowtape: interrupted; every acknowledged request is recorded in {path}: run the same command to send the rest", file=sys.stderr)
        raise typer.Exit(int(Exit.INTERRUPTED))
    finally:
        sink.close()
    print(f"flowtape: {summary.line(sink.shown)}", file=sys.stderr)
    if summary.rejected:
        said = "; ".join(summary.messages) or "no reason given"
        raise ExportError(f"the receiver rejected {summary.rejected:,} of the items it answered for (partial success): {said}")


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
