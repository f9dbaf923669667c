"""`flowtape report ...`: compute a report (analyze.reports) and render it (analyze.render)."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..reader import Tape
from .enrich import GRANULARITIES
from .render import Format, render_frame
from .reports.filters import Filters, parse_time

report_app = typer.Typer(help="Reports computed from a tape: topology and latency (traffic and dns next).", no_args_is_help=True)


class GraphFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    markdown = "markdown"
    mermaid = "mermaid"
    dot = "dot"


By = Enum("By", {g: g for g in GRANULARITIES}, type=str)  # type: ignore[misc]

TapeArg = Annotated[Path, typer.Argument(help="Path of a tape.", show_default=False)]
ByOpt = Annotated[By, typer.Option("--by", help="Name endpoints by pod, workload, service, namespace, node or zone.")]
SinceOpt = Annotated[Optional[str], typer.Option("--since", help="Only what started at or after this time (ISO 8601, UTC).")]
UntilOpt = Annotated[Optional[str], typer.Option("--until", help="Only what started before this time (ISO 8601, UTC).")]
NamespaceOpt = Annotated[Optional[str], typer.Option("--namespace", "-n", help="Only edges with an endpoint in this namespace.")]


def filters(since: str | None, until: str | None, namespace: str | None) -> Filters:
    return Filters(parse_time(since, "--since") if since else None, parse_time(until, "--until") if until else None, namespace)


@report_app.command("topology")
def topology_cmd(
    tape: TapeArg,
    by: ByOpt = By.workload,  # type: ignore[attr-defined]
    since: SinceOpt = None,
    until: UntilOpt = None,
    namespace: NamespaceOpt = None,
    format: Annotated[GraphFormat, typer.Option("--format", "-f", help="Output format.")] = GraphFormat.table,
) -> None:
    """Who talked to whom: connections, bytes each way, requests, 5xx rate, p50/p95/p99 latency.

    Example: flowtape report topology fixtures/tiny.tape --by workload -f mermaid
    """
    from .graph import dot, mermaid
    from .reports.topology import topology

    t = Tape(tape)
    for p in t.problems:
        print(f"flowtape: {p.severity}: {p.where(t.path)}", file=sys.stderr)
    df = topology(t, by=by.value, filters=filters(since, until, namespace))
    if format is GraphFormat.mermaid:
        sys.stdout.write(mermaid(df))
    elif format is GraphFormat.dot:
        sys.stdout.write(dot(df))
    else:
        render_frame(df, Format(format.value), sys.stdout, title=f"topology by {by.value}")


@report_app.command("latency")
def latency_cmd(
    tape: TapeArg,
    by: ByOpt = By.workload,  # type: ignore[attr-defined]
    routes: Annotated[bool, typer.Option("--routes", help="HTTP latency per route (ID-like segments templated) as well as per edge.")] = False,
    since: SinceOpt = None,
    until: UntilOpt = None,
    namespace: NamespaceOpt = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
) -> None:
    """Latency: HTTP per edge (and per route), DNS per name and server, TCP connect time and srtt.

    Example: flowtape report latency fixtures/tiny.tape --routes
    """
    import json

    from .render import records
    from .reports.latency import dns_latency, http_latency, tcp_latency

    t = Tape(tape)
    for p in t.problems:
        print(f"flowtape: {p.severity}: {p.where(t.path)}", file=sys.stderr)
    f = filters(since, until, namespace)
    sections = {"http": http_latency(t, by=by.value, per_route=routes, filters=f), "dns": dns_latency(t, filters=f), "tcp": tcp_latency(t, by=by.value, filters=f)}
    if format is Format.json:
        json.dump({k: records(v) for k, v in sections.items()}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    titles = {"http": "HTTP latency (time to first response byte)", "dns": "DNS lookup latency", "tcp": "TCP connect time and srtt"}
    for k, df in sections.items():
        if format is Format.csv:
            sys.stdout.write(f"# {k}\n")
        render_frame(df, format, sys.stdout, title=titles[k])


def register(app: typer.Typer) -> None:
    app.add_typer(report_app, name="report")
