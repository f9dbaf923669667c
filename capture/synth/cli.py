"""`flowtape synth`: write a synthetic cluster recording with injected incidents."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)


def synth(
    output: Annotated[Path, typer.Option("--output", "-o", help="New tape folder to write (NAME.tape).")],
    seed: Annotated[int, typer.Option(help="Random seed: same seed and options -> identical tape content.")] = 1,
    services: Annotated[int, typer.Option(help="Services in the call graph (frontend, api, backends, postgres, redis); >= 4.")] = 10,
    nodes: Annotated[int, typer.Option(help="Nodes, spread round-robin over the zones.")] = 6,
    zones: Annotated[int, typer.Option(help="Availability zones.")] = 3,
    regions: Annotated[int, typer.Option(help="Regions (1 or 2); zones alternate between them.")] = 1,
    duration: Annotated[str, typer.Option(help="Simulated time: 90s, 10m, 1h.")] = "10m",
    rps: Annotated[float, typer.Option(help="Requests per second entering at the frontend (other edges scale with it).")] = 50.0,
    rollouts: Annotated[Optional[int], typer.Option(help="Deployment rollouts during the tape (default: one per 2.5 minutes, at least two).")] = None,
    incident: Annotated[Optional[list[str]], typer.Option("--incident", help="Inject an incident: latency, errors, dns, cross-zone, egress; optionally NAME:target=...,at=2m,for=1m,<knob>=... Repeatable.")] = None,
    journeys: Annotated[float, typer.Option("--journeys", help="Request journeys per second: nested call trees down the HTTP call graph, with their truth in truth.json.")] = 0.0,
    traceparent: Annotated[bool, typer.Option("--traceparent/--no-traceparent", help="Whether the journeys' requests carry a W3C traceparent.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
) -> None:
    """Generate a synthetic tape of a realistic cluster, with ground truth in NAME.tape/truth.json.

    Deterministic for a seed; streams in 5 s slices, so memory stays flat at any size.

    Example: flowtape synth -o incident.tape --seed 7 --duration 5m --incident latency --incident dns
    """
    from . import Params, parse_duration, synthesize

    p = Params(seed=seed, services=services, nodes=nodes, zones=zones, regions=regions, duration_ns=parse_duration(duration),
               rps=rps, rollouts=rollouts, incidents=tuple(incident or ()), journeys=journeys, journeys_traceparent=traceparent)
    show = not quiet and sys.stderr.isatty()
    if show:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rows]:,} rows"), TimeRemainingColumn(),
                      transient=True, console=_stderr_console()) as bar:
            task = bar.add_task("synth", total=None, rows=0)
            result = synthesize(output, p, lambda k, n, rows: bar.update(task, completed=k, total=n, rows=rows))
    else:
        result = synthesize(output, p)
    if not quiet:
        tables = ", ".join(f"{k} {v:,}" for k, v in result.rows.items())
        print(f"wrote {result.path}: {result.total_rows:,} rows ({tables}); truth in {result.path / 'truth.json'}")
        for i in result.incidents:
            print(f"  incident {i.kind}: {i.truth()['start']} .. {i.truth()['end']}")


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)
