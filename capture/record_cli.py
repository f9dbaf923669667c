"""`flowtape record`: the live recorder's command (a thin layer over capture.recorder)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UsageError


def _duration(text: str | None) -> float | None:
    """'90', '90s', '5m', '1h' -> seconds."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    try:
        return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise UsageError(f"--duration: {text!r} is not a duration (e.g. 30, 90s, 5m, 1h)") from None


def register(app: typer.Typer) -> None:
    @app.command()
    def record(
        output: Annotated[Path, typer.Option("--output", "-o", help="Tape to write (a new NAME.tape folder).")],
        duration: Annotated[Optional[str], typer.Option(help="Stop after this long (30, 90s, 5m, 1h); default: until Ctrl-C/SIGTERM.")] = None,
        interfaces: Annotated[Optional[str], typer.Option(help="Comma-separated interfaces for flows (a bridge means its ports); default: all, and new ones as they appear.")] = None,
        probes: Annotated[str, typer.Option(help="Comma-separated probes: flows,connections.")] = "flows,connections",
        flow_interval: Annotated[float, typer.Option(help="Seconds between flow counter drains (one flow row per flow direction and interval).")] = 5.0,
        rotate: Annotated[float, typer.Option(help="Seconds between part rotations (a SIGKILL loses at most this much).")] = 60.0,
        node: Annotated[Optional[str], typer.Option(help="Node name written into the tape (default: the host name).")] = None,
        print_bpf: Annotated[bool, typer.Option("--print-bpf", help="Print the final C of the selected probes and exit.", hidden=True)] = False,
    ) -> None:
        """Record flows and TCP connections from eBPF into a tape (needs root).

        Example: sudo flowtape record -o incident.tape --duration 5m
        """
        from .recorder import RecordOptions, Recorder, render_sources

        opts = RecordOptions(
            out=output,
            node=node,
            probes=tuple(p.strip() for p in probes.split(",") if p.strip()),
            interfaces=[i.strip() for i in interfaces.split(",") if i.strip()] if interfaces else None,
            flow_interval=flow_interval,
            rotate=rotate,
            duration=_duration(duration),
        )
        if print_bpf:
            sys.stdout.write(render_sources(opts))
            return
        summary = Recorder(opts).run()
        rows = ", ".join(f"{k} {v:,}" for k, v in sorted(summary.rows.items())) or "no rows"
        lost = sum(summary.lost.values())
        print(f"recorded {summary.seconds:.1f} s into {summary.tape}: {rows}; lost {lost}", file=sys.stderr)
