"""`flowtape diff` and `flowtape check`: CI gates over recorded tapes (exit 5 on a regression).

Computing lives in analyze.ci.diff and analyze.ci.check; this module parses options and renders.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional, TextIO

import polars as pl
import typer

from ...errors import Exit
from ...reader import Tape
from ..render.formats import Format, records, render_frame
from ..report_cli import By, TapeArg


def _open(path: Path) -> Tape:
    t = Tape(path)
    for p in t.problems:
        print(f"flowtape: {p.severity}: {p.where(t.path)}", file=sys.stderr)
    return t


# --- rendering -----------------------------------------------------------------------------------

def _rounded(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.col(c).round(4) for c, t in df.schema.items() if t == pl.Float64)


def render_diff(r, fmt: Format, out: TextIO, show_all: bool = False) -> None:  # r: analyze.ci.diff.DiffResult
    """The findings of a diff (and with `show_all` every compared row) as table, CSV, JSON or Markdown."""
    if fmt is Format.json:
        doc = {
            "base": r.base, "new": r.new, "by": r.by, "base_window_s": r.base_window_s, "new_window_s": r.new_window_s,
            "summary": r.summary(), "regressions": len(r.regressions), "inconclusive": len(r.inconclusive),
            "thresholds": asdict(r.thresholds), "findings": records(r.findings),
            "edges": records(r.edges), "zone_pairs": records(r.zone_pairs), "egress": records(r.egress), "dns_failures": records(r.dns),
        }
        json.dump(doc, out, indent=1)
        out.write("\n")
        return
    if fmt is Format.csv:
        render_frame(r.findings, fmt, out)
        return
    regs, inc = _rounded(r.regressions.drop("status")), _rounded(r.inconclusive.drop("status"))
    head = f"{r.base} ({r.base_window_s:g} s) -> {r.new} ({r.new_window_s:g} s), edges by {r.by}"
    if fmt is Format.markdown:
        mark = "no regression" if regs.is_empty() else f"{len(regs)} regression{'s' if len(regs) != 1 else ''}"
        out.write(f"### flowtape diff: {mark}\n\n`{r.base}` ({r.base_window_s:g} s) → `{r.new}` ({r.new_window_s:g} s), edges by {r.by}\n\n")
        out.write(f"**{r.summary()}**\n\n")
        if not regs.is_empty():
            render_frame(regs, fmt, out)
        if not inc.is_empty():
            out.write(f"<details><summary>{len(inc)} change{'s' if len(inc) != 1 else ''} beyond threshold, not conclusive (not flagged)</summary>\n\n")
            render_frame(inc, fmt, out)
            out.write("</details>\n\n")
        if show_all:
            for title, df in _all_sections(r):
                out.write(f"<details><summary>{title}</summary>\n\n")
                render_frame(_rounded(df), fmt, out)
                out.write("</details>\n\n")
        return
    out.write(f"flowtape diff: {head}\n{r.summary()}\n")
    if not regs.is_empty():
        render_frame(regs, fmt, out, title="Regressions")
    if not inc.is_empty():
        render_frame(inc, fmt, out, title="Beyond threshold but not conclusive (not flagged)")
    if show_all:
        for title, df in _all_sections(r):
            render_frame(_rounded(df), fmt, out, title=title)


def _all_sections(r) -> list[tuple[str, pl.DataFrame]]:
    return [("Every edge", r.edges), ("Cross-zone flow bytes per minute by zone pair", r.zone_pairs),
            ("External destinations (flow bytes per minute)", r.egress), ("Real DNS failures in NEW", r.dns)]


# --- commands ------------------------------------------------------------------------------------

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML file with [thresholds] (and [diff] by = ...); see docs/ci.md.", show_default=False)]
ThresholdOpt = Annotated[Optional[list[str]], typer.Option(
    "--threshold", "-t", metavar="KEY=VALUE",
    help="Override one threshold (repeatable): z, min_requests, min_requests_p99, latency_rel, latency_abs_ms, error_rate_abs, "
         "rate_rel, bytes_rel, bytes_abs_per_min, cross_zone_rel, cross_zone_abs_per_min, edges_added, edges_removed.",
    show_default=False)]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format (markdown suits a pull-request comment).")]


def diff_cmd(
    base: Annotated[Path, typer.Argument(help="The baseline tape.", show_default=False)],
    new: Annotated[Path, typer.Argument(help="The tape to judge.", show_default=False)],
    by: Annotated[Optional[By], typer.Option("--by", help="Name endpoints by pod, workload, service, namespace, node or zone; without Kubernetes by process or host [default: workload].", show_default=False)] = None,  # type: ignore[valid-type]
    config: ConfigOpt = None,
    threshold: ThresholdOpt = None,
    show_all: Annotated[bool, typer.Option("--all", help="Also show every compared edge, zone pair, destination and DNS failure.")] = False,
    format: FormatOpt = Format.table,
) -> None:
    """Compare two tapes: edges added/removed, request rate, error rate, p50/p99, bytes, cross-zone bytes, new external destinations, new DNS failures.

    Rates are per second or minute of each tape's window. A change beyond threshold that is
    significant is a regression (exit 5); one with too few samples is listed as inconclusive.

    Example: flowtape diff fixtures/synth-baseline.tape fixtures/synth-incident.tape -f markdown
    """
    from .diff import compare, load_config

    th, cfg_by = load_config(config, threshold or [])
    result = compare(_open(base), _open(new), by=by.value if by else (cfg_by or "workload"), thresholds=th)
    render_diff(result, format, sys.stdout, show_all)
    if not result.regressions.is_empty():
        raise typer.Exit(int(Exit.REGRESSION))


def check_cmd(
    tape: TapeArg,
    rules: Annotated[Path, typer.Option("--rules", "-r", help="TOML file of [[rule]] tables; see docs/ci.md.", show_default=False)],
    format: FormatOpt = Format.table,
) -> None:
    """Check a tape against written rules: latency, error rate, forbidden calls, egress allow-list, cross-zone bytes.

    Exit 5 when a rule is violated (or finds no data to judge), 3 when the rules file is wrong.

    Example: flowtape check fixtures/synth-baseline.tape --rules fixtures/rules.toml -f markdown
    """
    from .check import FAILING, check
    from .rules import load_rules

    rs = load_rules(rules)
    result = check(_open(tape), rs)
    render_check(result, str(tape), str(rules), format, sys.stdout)
    if result.filter(pl.col("status").is_in(FAILING)).height:
        raise typer.Exit(int(Exit.REGRESSION))


def _failing(result: pl.DataFrame) -> pl.DataFrame:
    from .check import FAILING

    return result.filter(pl.col("status").is_in(FAILING))


def check_summary(result: pl.DataFrame) -> str:
    bad = _failing(result)
    rules = result["rule"].n_unique()
    if bad.is_empty():
        return f"all {rules} rule{'s' if rules != 1 else ''} hold"
    names = bad["rule"].unique(maintain_order=True).to_list()
    return f"{len(names)} of {rules} rules violated: {', '.join(names)}"


def render_check(result: pl.DataFrame, tape: str, rules: str, fmt: Format, out: TextIO) -> None:
    if fmt is Format.json:
        json.dump({"tape": tape, "rules": rules, "summary": check_summary(result), "violations": _failing(result).height,
                   "results": records(result)}, out, indent=1)
        out.write("\n")
        return
    if fmt is Format.csv:
        render_frame(result, fmt, out)
        return
    df = _rounded(result)
    if fmt is Format.markdown:
        bad = _failing(result)
        mark = "all rules hold" if bad.is_empty() else f"{bad['rule'].n_unique()} rule{'s' if bad['rule'].n_unique() != 1 else ''} violated"
        out.write(f"### flowtape check: {mark}\n\n`{tape}` against `{rules}`\n\n**{check_summary(result)}**\n\n")
        render_frame(df, fmt, out)
        return
    out.write(f"flowtape check: {tape} against {rules}\n{check_summary(result)}\n")
    render_frame(df, fmt, out, title="Rules")


def register(app: typer.Typer) -> None:
    app.command("diff")(diff_cmd)
    app.command("check")(check_cmd)
