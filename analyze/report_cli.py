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

report_app = typer.Typer(help="Reports computed from a tape: topology, latency, traffic, dns.", no_args_is_help=True)


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
    top: Annotated[Optional[int], typer.Option("--top", help="Keep the N busiest endpoints' names; merge the rest into 'other'.")] = None,
    format: Annotated[GraphFormat, typer.Option("--format", "-f", help="Output format.")] = GraphFormat.table,
) -> None:
    """Who talked to whom: connections, bytes each way, requests, 5xx rate, p50/p95/p99 latency.

    Example: flowtape report topology fixtures/tiny.tape --by workload -f mermaid
    """
    from .graph import dot, mermaid
    from .reports.topology import topology

    t = _open(tape)
    df = topology(t, by=by.value, filters=filters(since, until, namespace), top=top)
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
    from .reports.latency import dns_latency, http_latency, tcp_latency

    t = _open(tape)
    f = filters(since, until, namespace)
    sections = {"http": http_latency(t, by=by.value, per_route=routes, filters=f), "dns": dns_latency(t, filters=f), "tcp": tcp_latency(t, by=by.value, filters=f)}
    titles = {"http": "HTTP latency (time to first response byte)", "dns": "DNS lookup latency", "tcp": "TCP connect time and srtt"}
    _sections(sections, titles, format)


def _sections(sections: dict, titles: dict, format: Format) -> None:
    import json

    from .render import records

    if format is Format.json:
        json.dump({k: records(v) for k, v in sections.items()}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    for k, df in sections.items():
        if format is Format.csv:
            sys.stdout.write(f"# {k}\n")
        render_frame(df, format, sys.stdout, title=titles[k])


def _open(tape: Path) -> Tape:
    t = Tape(tape)
    for p in t.problems:
        print(f"flowtape: {p.severity}: {p.where(t.path)}", file=sys.stderr)
    return t


@report_app.command("traffic")
def traffic_cmd(
    tape: TapeArg,
    by: ByOpt = By.workload,  # type: ignore[attr-defined]
    top: Annotated[int, typer.Option("--top", help="Top talkers shown.")] = 20,
    prices: Annotated[Optional[Path], typer.Option("--prices", help="TOML file with a [prices] table (USD per GB): cross_zone, cross_region, internet_egress.")] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    namespace: NamespaceOpt = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
) -> None:
    """Traffic: top talkers, bytes per zone pair and region pair with cost, internet egress by DNS name.

    Example: flowtape report traffic fixtures/tiny.tape --by zone
    """
    from .prices import load_prices
    from .reports.traffic import egress, talkers, zone_pairs

    p = load_prices(prices)
    t = _open(tape)
    f = filters(since, until, namespace)
    sections = {
        "talkers": talkers(t, by=by.value, top=top, filters=f),
        "zone_pairs": zone_pairs(t, "zone", p, f),
        "region_pairs": zone_pairs(t, "region", p, f),
        "egress": egress(t, by=by.value, prices=p, filters=f),
    }
    titles = {"talkers": f"Top talkers by {by.value} (flow bytes)", "zone_pairs": "Bytes per zone pair (cost in USD)", "region_pairs": "Bytes per region pair (cost in USD)", "egress": "Internet egress by destination"}
    _sections(sections, titles, format)


@report_app.command("dns")
def dns_cmd(
    tape: TapeArg,
    by: ByOpt = By.workload,  # type: ignore[attr-defined]
    slow_ms: Annotated[float, typer.Option("--slow-ms", help="A lookup slower than this is slow.")] = 100.0,
    since: SinceOpt = None,
    until: UntilOpt = None,
    namespace: NamespaceOpt = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
) -> None:
    """DNS: failures by name and rcode (search-path noise marked apart) and slow lookups.

    Example: flowtape report dns fixtures/tiny.tape --slow-ms 10
    """
    from .reports.dns import dns_failures, slow_lookups

    t = _open(tape)
    f = filters(since, until, namespace)
    sections = {"failures": dns_failures(t, by=by.value, filters=f), "slow": slow_lookups(t, slow_ms, f)}
    _sections(sections, {"failures": "DNS failures (search_path = expected ndots noise)", "slow": f"DNS lookups slower than {slow_ms:g} ms"}, format)


def register(app: typer.Typer) -> None:
    app.add_typer(report_app, name="report")
