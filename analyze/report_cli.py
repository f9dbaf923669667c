"""`flowtape report ...`: compute a report (analyze.reports) and render it (analyze.render)."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..reader import Tape
from .enrich import GRANULARITIES
from .render.formats import Format, render_frame
from .reports.filters import Filters, parse_time
from .reports.limits import HTTP, REGIONS, ZONES

report_app = typer.Typer(help="Reports computed from a tape: topology, latency, traffic, dns, traces.", no_args_is_help=True)


class GraphFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    markdown = "markdown"
    mermaid = "mermaid"
    dot = "dot"
    svg = "svg"
    png = "png"


class GroupBy(str, Enum):
    none = "none"
    namespace = "namespace"
    zone = "zone"


By = Enum("By", {g: g for g in GRANULARITIES}, type=str)  # type: ignore[misc]

TapeArg = Annotated[Path, typer.Argument(help="Path of a tape.", show_default=False)]
ByOpt = Annotated[By, typer.Option("--by", help="Name endpoints by pod, workload, service, namespace, node or zone; without Kubernetes by process or host.")]
SinceOpt = Annotated[Optional[str], typer.Option("--since", help="Only what started at or after this time (ISO 8601, UTC).")]
UntilOpt = Annotated[Optional[str], typer.Option("--until", help="Only what started before this time (ISO 8601, UTC).")]
NamespaceOpt = Annotated[Optional[str], typer.Option("--namespace", "-n", help="Only edges with an endpoint in this namespace.")]


class EngineName(str, Enum):
    duckdb = "duckdb"
    spark = "spark"


EngineOpt = Annotated[EngineName, typer.Option("--engine", help="Where the heavy per-row stage runs: duckdb (in process) or spark (docs/spark.md).")]
SparkMasterOpt = Annotated[Optional[str], typer.Option("--spark-master", help="Spark master URL for --engine spark (default local[2]), e.g. spark://HOST:7077.")]


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
    format: Annotated[GraphFormat, typer.Option("--format", "-f", help="Output format; svg and png are laid out by Graphviz's dot.")] = GraphFormat.table,
    group_by: Annotated[Optional[GroupBy], typer.Option("--group-by", help="Draw nodes in clusters by namespace or zone (dot, svg, png; svg and png default to namespace).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to this file instead of standard output (png needs it when stdout is a terminal).")] = None,
    engine: EngineOpt = EngineName.duckdb,
    spark_master: SparkMasterOpt = None,
) -> None:
    """Who talked to whom: connections, bytes each way, requests, 5xx rate, p50/p95/p99 latency.

    The graph formats draw edge width by bytes and edge colour by error rate.

    Example: flowtape report topology fixtures/tiny.tape --by workload -f svg --group-by zone -o topology.svg
    """
    from .render.graph import dot, mermaid, render
    from .reports.placement import endpoint_groups
    from .reports.topology import topology

    a = _open(tape, engine, spark_master).analysis
    f = filters(since, until, namespace)
    df = topology(a, by=by.value, filters=f, top=top)
    if format in (GraphFormat.dot, GraphFormat.svg, GraphFormat.png):
        grouping = group_by or (GroupBy.namespace if format is not GraphFormat.dot else GroupBy.none)
        groups = dict(endpoint_groups(a, by.value, grouping.value, f).iter_rows()) if grouping is not GroupBy.none else None
        text = dot(df, groups, grouping.value if groups else "")
        if format is GraphFormat.dot:
            _emit(text.encode(), output, binary=False)
        else:
            _emit(render(text, format.value), output, binary=format is GraphFormat.png)
    elif format is GraphFormat.mermaid:
        _emit(mermaid(df).encode(), output, binary=False)
    else:
        import io

        buf = io.StringIO()
        fmt = Format(format.value)
        _frame(df, fmt, buf, f"topology by {by.value}", _by_notes(a, by.value) if fmt is Format.table else [])
        _emit(buf.getvalue().encode(), output, binary=False)


@report_app.command("latency")
def latency_cmd(
    tape: TapeArg,
    by: ByOpt = By.workload,  # type: ignore[attr-defined]
    routes: Annotated[bool, typer.Option("--routes", help="HTTP latency per route (ID-like segments templated) as well as per edge.")] = False,
    since: SinceOpt = None,
    until: UntilOpt = None,
    namespace: NamespaceOpt = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    engine: EngineOpt = EngineName.duckdb,
    spark_master: SparkMasterOpt = None,
) -> None:
    """Latency: HTTP per edge (and per route), DNS per name and server, TCP connect time and srtt.

    Example: flowtape report latency fixtures/tiny.tape --routes
    """
    from .reports.latency import dns_latency, http_latency, tcp_latency

    a = _open(tape, engine, spark_master).analysis
    f = filters(since, until, namespace)
    sections = {"http": http_latency(a, by=by.value, per_route=routes, filters=f), "dns": dns_latency(a, filters=f), "tcp": tcp_latency(a, by=by.value, filters=f)}
    titles = {"http": "HTTP latency (time to first response byte)", "dns": "DNS lookup latency", "tcp": "TCP connect time and srtt"}
    _sections(sections, titles, format, {"http": _limit(a, HTTP)}, _by_notes(a, by.value))


def _limit(a, key: str) -> str | None:
    from .reports.limits import limits

    return limits(a).get(key)


def _by_notes(a, by: str) -> list[str]:
    """What naming endpoints `by` cannot tell in this tape (a line each, under the table)."""
    from .reports.limits import KUBERNETES, ZONES, limits

    lim = limits(a)
    notes = []
    if by in ("pod", "workload", "service", "namespace") and KUBERNETES in lim:
        notes.append(lim[KUBERNETES])
    if by == "zone" and ZONES in lim:
        notes.append(lim[ZONES])
    return notes


def _frame(df, format: Format, out, title: str, notes: list[str], unknown: str | None = None) -> None:
    """One section: a table, or for people one line when it is empty or the tape cannot tell
    (`unknown`), then its notes."""
    if format is Format.table and (unknown or df.is_empty()):
        out.write(f"{title}: {'not known, ' + unknown if unknown else 'none'}\n")
    else:
        render_frame(df, format, out, title=title)
    for n in notes:
        out.write(f"note: {n}\n")


def _sections(sections: dict, titles: dict, format: Format, unknown: dict | None = None, notes: list[str] | None = None) -> None:
    import json

    from .render.formats import records

    if format is Format.json:
        json.dump({k: records(v) for k, v in sections.items()}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    for k, df in sections.items():
        if format is Format.csv:
            sys.stdout.write(f"# {k}\n")
        _frame(df, format, sys.stdout, titles[k], [], (unknown or {}).get(k))
    for n in notes or [] if format is Format.table else []:
        sys.stdout.write(f"note: {n}\n")


def _emit(data: bytes, output: Path | None, binary: bool) -> None:
    """Write `data` to `output`, or to standard output (binary only when it is not a terminal)."""
    from ..errors import PermissionDenied, UsageError

    if output is not None:
        try:
            output.write_bytes(data)
        except OSError as e:
            raise PermissionDenied(f"cannot write {output}: {e.strerror or e}") from None
        return
    if not binary:
        sys.stdout.write(data.decode())
        return
    buf = getattr(sys.stdout, "buffer", None)
    if buf is None or sys.stdout.isatty():
        raise UsageError("png is binary: write it to a file with -o FILE.png (or redirect standard output)")
    sys.stdout.flush()
    buf.write(data)
    buf.flush()


def _open(tape: Path, engine: EngineName = EngineName.duckdb, spark_master: str | None = None) -> Tape:
    t = Tape(tape, engine=engine.value, spark_master=spark_master)
    for p in t.problems:
        print(f"flowtape: {p.severity}: {p.where(t.path)}", file=sys.stderr)
    if t.origin != "recorded":  # rows of an import: no process, and the vantage point of a capture
        print(f"flowtape: note: {t.path}: {t.origin}", file=sys.stderr)
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
    engine: EngineOpt = EngineName.duckdb,
    spark_master: SparkMasterOpt = None,
) -> None:
    """Traffic: top talkers, bytes per zone pair and region pair with cost, internet egress by DNS name.

    Example: flowtape report traffic fixtures/tiny.tape --by zone
    """
    from .reports.prices import load_prices
    from .reports.traffic import egress, talkers, zone_pairs

    p = load_prices(prices)
    a = _open(tape, engine, spark_master).analysis
    f = filters(since, until, namespace)
    sections = {
        "talkers": talkers(a, by=by.value, top=top, filters=f),
        "zone_pairs": zone_pairs(a, "zone", p, f),
        "region_pairs": zone_pairs(a, "region", p, f),
        "egress": egress(a, by=by.value, prices=p, filters=f),
    }
    titles = {"talkers": f"Top talkers by {by.value} (flow bytes)", "zone_pairs": "Bytes per zone pair (cost in USD)", "region_pairs": "Bytes per region pair (cost in USD)", "egress": "Internet egress by destination"}
    _sections(sections, titles, format, {"zone_pairs": _limit(a, ZONES), "region_pairs": _limit(a, REGIONS)}, _by_notes(a, by.value))


@report_app.command("dns")
def dns_cmd(
    tape: TapeArg,
    by: ByOpt = By.workload,  # type: ignore[attr-defined]
    slow_ms: Annotated[float, typer.Option("--slow-ms", help="A lookup slower than this is slow.")] = 100.0,
    search_path: Annotated[bool, typer.Option("--search-path/--no-search-path", help="Also list the expected NXDOMAINs of search-path expansion.")] = False,
    since: SinceOpt = None,
    until: UntilOpt = None,
    namespace: NamespaceOpt = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    engine: EngineOpt = EngineName.duckdb,
    spark_master: SparkMasterOpt = None,
) -> None:
    """DNS: failures by name and rcode (search-path noise marked apart) and slow lookups.

    Example: flowtape report dns fixtures/tiny.tape --slow-ms 10
    """
    from .reports.dns import dns_failures, slow_lookups

    a = _open(tape, engine, spark_master).analysis
    f = filters(since, until, namespace)
    failures = dns_failures(a, by=by.value, filters=f)
    shown = failures if search_path else failures.filter(~failures["search_path"])
    noise = len(failures) - len(shown)
    title = "DNS failures" + ("" if search_path else f" ({noise} names of search-path noise hidden; --search-path shows them)")
    sections = {"failures": shown, "slow": slow_lookups(a, slow_ms, f)}
    _sections(sections, {"failures": title, "slow": f"DNS lookups slower than {slow_ms:g} ms"}, format, notes=_by_notes(a, by.value))


TRACE_SHOWN = 10
"""Traces drawn as trees in the terminal when neither --trace-id nor --slowest picks them."""


@report_app.command("traces")
def traces_cmd(
    tape: TapeArg,
    by: ByOpt = By.workload,  # type: ignore[attr-defined]
    trace_id: Annotated[Optional[str], typer.Option("--trace-id", help="Only this trace (32 hex digits).")] = None,
    slowest: Annotated[Optional[int], typer.Option("--slowest", help="Only the N traces whose root took longest.", min=1)] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    namespace: NamespaceOpt = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format: table draws each trace as a tree with its critical path; the others give one row per span.")] = Format.table,
) -> None:
    """Request journeys: each HTTP exchange side as a span, linked into the tree of calls it
    belongs to (by traceparent, wire trace ids, TCP sequence numbers, the socket, the thread or
    the goroutine); the critical path says which call explains a slow request.

    Example: flowtape report traces fixtures/tiny.tape --slowest 3
    """
    import re

    from ..errors import UsageError
    from .render.traces import tree_text
    from .reports.traces import critical_path, slowest_step, traces

    if trace_id is not None and not re.fullmatch(r"[0-9a-fA-F]{32}", trace_id):
        raise UsageError(f"--trace-id {trace_id!r}: a trace id is 32 hex digits")
    a = _open(tape).analysis
    f = filters(since, until, namespace)
    shown = slowest
    if format is Format.table and trace_id is None and slowest is None:
        shown = TRACE_SHOWN
    df = traces(a, by=by.value, filters=f, trace_id=trace_id, slowest=shown)
    if format is Format.table:
        note = None
        if shown != slowest:
            note = f"the {shown} slowest traces; --slowest N shows more, -f json every span"
        tree_text(df, critical_path, slowest_step, sys.stdout, note)
        for n in _by_notes(a, by.value):
            sys.stdout.write(f"note: {n}\n")
    else:
        render_frame(df, format, sys.stdout, title="traces")


@report_app.command("html")
def html_cmd(
    tape: TapeArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write (one self-contained page).")] = Path("report.html"),
    by: ByOpt = By.workload,  # type: ignore[attr-defined]
    group_by: Annotated[GroupBy, typer.Option("--group-by", help="Cluster the service map's nodes by namespace or zone.")] = GroupBy.namespace,
    top_edges: Annotated[int, typer.Option("--top-edges", help="Latency over time is drawn for this many busiest edges.", min=1, max=24)] = 6,
    prices: Annotated[Optional[Path], typer.Option("--prices", help="TOML file with a [prices] table (USD per GB): cross_zone, cross_region, internet_egress.")] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """One self-contained HTML page to attach to an incident ticket: service map (Graphviz),
    latency over time of the busiest edges, zone pairs with cost, DNS failures, external
    destinations and the tape's metadata. Needs no network to view (styles and images inline).

    Example: flowtape report html fixtures/synth-incident.tape -o report.html
    """
    from .render.html import build_html
    from .reports.prices import load_prices

    p = load_prices(prices)
    t = _open(tape)
    page = build_html(t, by=by.value, group_by=group_by.value, top_edges=top_edges, prices=p,
                      filters=filters(since, until, namespace))
    _emit(page.encode(), output, binary=False)
    print(f"flowtape: wrote {output} ({len(page.encode()) // 1024} KiB)", file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.add_typer(report_app, name="report")
