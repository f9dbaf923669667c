"""The `flowtape` command: a thin layer over the Python API.

Every failure a user can cause ends as one line on stderr and an exit code from
`flowtape.errors.Exit`; tracebacks only with --traceback.
"""

from __future__ import annotations

import datetime as dt
import importlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .errors import Exit, FlowtapeError, UsageError, is_out_of_memory, out_of_memory

app = typer.Typer(
    name="flowtape",
    help="A flight recorder for cluster networks: record once, answer any question later, offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Commands that live beside the code they drive register themselves here (module.register(app)).
COMMAND_MODULES: list[str] = [
    "flowtape.capture.live.cli",
    "flowtape.capture.synth.tiny",
    "flowtape.analyze.report_cli",
    "flowtape.capture.synth.cli",
    "flowtape.capture.k8s.cli",
    "flowtape.capture.importers.cli",
    "flowtape.analyze.ci.cli",
    "flowtape.analyze.export.cli",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"flowtape {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    traceback: Annotated[bool, typer.Option("--traceback", help="Show a Python traceback on errors (for bug reports).")] = False,
) -> None:
    """flowtape: record what a cluster's network did into a tape; analyse it later, offline."""


# --- shared option sets (defined once, reused by every command) ---------------------------

from .analyze.render.formats import Format, human_bytes  # noqa: E402

TapeArg = Annotated[Path, typer.Argument(help="Path of a tape (a NAME.tape folder).", show_default=False)]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.", case_sensitive=False)]


def out() -> "typing.TextIO":  # noqa: F821
    return sys.stdout


def warn_problems(tape) -> None:
    for p in tape.problems:
        print(f"flowtape: {p.severity}: {p.where(tape.remote or tape.path)}", file=sys.stderr)


def fmt_ns(ns: int | None) -> str | None:
    if ns is None:
        return None
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")




# --- tape commands ------------------------------------------------------------------------


@app.command()
def info(
    tape: TapeArg,
    format: FormatOpt = Format.table,
    all_counters: Annotated[bool, typer.Option("--all", help="List every lost-event counter, zeros too (JSON always has them all).")] = False,
) -> None:
    """Show a tape's window, nodes, tables with row counts, lost events and size on disk.

    Lost events: `none` when every counter is zero, else the counters above zero.

    Example: flowtape info fixtures/tiny.tape
    """
    from .tape import Tape

    t = Tape(tape)
    warn_problems(t)
    m = t.manifest
    size = sum(p.stat().st_size for p in t.path.rglob("*") if p.is_file())
    start, end = t.window
    tables = {}
    for name in t.tables:
        parts = [p for p in t.parts if p.table == name]
        if parts:
            tables[name] = {"rows": sum(p.rows for p in parts), "parts": len(parts), "bytes": sum(p.bytes for p in parts)}
    data = {
        "tape": t.remote or str(t.path),
        "format": m["format"],
        "written_by": f"{m['tool'].get('name')} {m['tool'].get('version')}",
        "origin": t.origin,
        "complete": m["complete"],
        "window": {"start": fmt_ns(start), "end": fmt_ns(end), "seconds": None if start is None or end is None else round((end - start) / 1e9, 3)},
        "nodes": t.nodes,
        "tables": tables,
        "lost": {n: c for n, c in m["lost"].items() if c},
        "gaps": len(m["gaps"]),
        "problems": [str(p) for p in t.problems],
        "size_bytes": size,
    }
    if format is Format.json:
        from .analyze.render.formats import render_kv

        render_kv(data, format, out())
        return
    w = out().write
    w(f"tape       {data['tape']}  ({data['format']}, written by {data['written_by']}{'' if m['complete'] else ', INCOMPLETE'})\n")
    w(f"origin     {t.origin}\n")
    w(f"window     {data['window']['start']} .. {data['window']['end']}  ({data['window']['seconds']} s)\n")
    w(f"nodes      {', '.join(t.nodes) or '-'}\n")

    w(f"size       {human_bytes(size)} on disk\n")
    w("tables\n")
    for name, v in tables.items():
        w(f"  {name:<15} {v['rows']:>12,} rows  {v['parts']:>4} parts  {human_bytes(v['bytes']):>10}\n")
    if not tables:
        w("  (no rows)\n")
    # a recorder keeps a dozen counters at zero on a quiet host: only what was lost is news
    lost = {node: {k: v for k, v in sorted(counters.items()) if v or all_counters} for node, counters in data["lost"].items()}
    lost = {node: counters for node, counters in lost.items() if counters}
    w("lost       none\n" if not lost else "lost\n")
    for node, counters in lost.items():
        for k, v in counters.items():
            w(f"  {node:<15} {k:<30} {v:>10,}\n")
    if m["gaps"]:
        w(f"gaps       {len(m['gaps'])} interval(s) where a source was blind (see --format json)\n")
    t.close()


@app.command()
def verify(tape: TapeArg, format: FormatOpt = Format.table) -> None:
    """Read every part of a tape and check schema, sha256 and row counts against the manifest.

    Exits 0 when sound; otherwise prints one line per problem and exits 4.

    Example: flowtape verify incident.tape
    """
    from .verify import verify as run

    t, problems = run(tape)
    errors = [p for p in problems if p.severity == "error"]
    if format is Format.json:
        from .analyze.render.formats import render_kv

        render_kv({"tape": str(t.path), "ok": not errors, "parts": len(t.parts), "problems": [{"path": p.path, "severity": p.severity, "message": p.message} for p in problems]}, format, out())
    else:
        for p in problems:
            print(f"{p.severity}: {p.where(t.path)}", file=sys.stderr)
        rows = sum(p.rows for p in t.parts)
        if not errors:
            print(f"ok: {len(t.parts)} parts, {rows:,} rows verified" + (f" ({len(problems)} warning(s))" if problems else ""))
    t.close()
    if errors:
        raise typer.Exit(Exit.VERIFY_FAILED)


@app.command()
def sql(
    tape: TapeArg,
    query: Annotated[str, typer.Argument(help="SQL over the tape's tables (flows, connections, dns, http, tls, k8s_*).")],
    format: FormatOpt = Format.table,
    max_rows: Annotated[int, typer.Option(help="Rows shown in a terminal table (all rows for csv/json).")] = 100,
) -> None:
    """Run a SQL query (DuckDB dialect) over a tape and print the result.

    Example: flowtape sql fixtures/tiny.tape "select l4, sum(bytes) from flows group by l4"
    """
    from .analyze.render.formats import render_frame

    from .tape import Tape

    t = Tape(tape)
    warn_problems(t)
    rel = t.sql(query)
    if rel is None:
        return  # a statement without a result (e.g. SET)
    try:
        df = rel.pl()
    except Exception as e:  # duckdb raises at execution time for some errors
        from .errors import QueryError

        raise QueryError.failed(e) from None
    # a query's columns are the user's own: shown as they are, not read as units
    render_frame(df, format, out(), max_rows=max_rows if format is Format.table else None, human=False)
    t.close()


@app.command()
def merge(
    tapes: Annotated[list[str], typer.Argument(help="Node tapes to merge: folders, s3:// tapes, or an s3:// prefix holding the node tapes.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="New tape to write.")],
) -> None:
    """Merge node tapes into one tape (parts are copied, one manifest is written; each node's
    clock offset is kept in the merged manifest). Tapes in a bucket are fetched first.

    Example: flowtape merge node-a.tape node-b.tape -o cluster.tape
    """
    from .merge import merge as run

    def report(src: str, p) -> None:
        print(f"flowtape: {p.severity}: {p.where(src)}", file=sys.stderr)

    m = run(list(tapes), output, on_problem=report)
    n = len(m["extra"]["merged_from"])
    print(f"merged {n} tape(s) into {output}: {len(m['files'])} parts, nodes {', '.join(sorted(m['nodes']))}")


# --- object storage -----------------------------------------------------------------------

UrlArg = Annotated[str, typer.Argument(help="s3://BUCKET/PREFIX/ (credentials: the AWS chain; AWS_ENDPOINT_URL for S3-compatible stores).", show_default=False)]


@app.command()
def push(
    tape: TapeArg,
    url: UrlArg,
) -> None:
    """Upload a tape to object storage: the parts not yet there, then the manifest. Run it again
    after a failure (or a recorder stopped before its upload finished): it goes on where it stopped.
    A URL ending in NAME.tape/ is the tape itself; otherwise the tape goes under it by its folder name.

    Example: flowtape push incident.tape s3://tapes/incident-42/
    """
    from .storage import push as run

    up, r = run(tape, url)
    print(f"pushed {tape} to {up.dest.url}: {len(r.uploaded)} part(s) uploaded ({human_bytes(r.bytes)} in {r.seconds:.2f} s), "
          f"{len(r.already)} already there")


@app.command()
def pull(
    url: UrlArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Local tape to write (resumed if a pull of the same URL was cut off).")],
    since: Annotated[Optional[str], typer.Option(help="Only parts with rows at or after this time (ISO 8601, UTC); Kubernetes tables always whole.")] = None,
    until: Annotated[Optional[str], typer.Option(help="Only parts with rows before this time (ISO 8601, UTC).")] = None,
) -> None:
    """Fetch a tape from object storage (or the parts of one time range); every part is checked
    against the manifest's sha256. Exits 4 when the bucket lacks parts its manifest lists.

    Example: flowtape pull s3://tapes/incident-42/node-a.tape/ -o node-a.tape --since 2026-01-01T10:00:00Z
    """
    from .analyze.reports.filters import parse_time
    from .storage import pull as run

    def ns(text: Optional[str], flag: str) -> Optional[int]:
        if text is None:
            return None
        t = parse_time(text, flag)
        return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000

    r = run(url, output, ns(since, "--since"), ns(until, "--until"))
    for rel in r.missing:
        print(f"flowtape: error: {url.rstrip('/')}/{rel}: listed in the manifest but not in the bucket; not fetched", file=sys.stderr)
    print(f"pulled {url} into {output}: {len(r.fetched)} part(s) fetched ({human_bytes(r.bytes)} in {r.seconds:.2f} s), "
          f"{len(r.cached)} already here, {r.skipped} outside the time range")
    if r.missing:
        raise typer.Exit(Exit.VERIFY_FAILED)


@app.command(name="ls")
def ls_(url: UrlArg, format: FormatOpt = Format.table) -> None:
    """List the tapes at an s3:// prefix: nodes, window, parts, whether complete.

    Example: flowtape ls s3://tapes/incident-42/
    """
    from .storage import client, list_tapes, manifest_at

    s3 = client()
    rows = []
    for loc in list_tapes(url, s3):
        m = manifest_at(s3, loc)
        w = m.get("window") or {}
        rows.append({"tape": loc.url, "nodes": ",".join(sorted(m.get("nodes", {}))), "start": fmt_ns(w.get("start_ns")),
                     "end": fmt_ns(w.get("end_ns")), "parts": len(m["files"]), "complete": bool(m.get("complete"))})
    import polars as pl

    from .analyze.render.formats import render_frame

    schema = {"tape": pl.String, "nodes": pl.String, "start": pl.String, "end": pl.String, "parts": pl.Int64, "complete": pl.Boolean}
    render_frame(pl.DataFrame(rows, schema=schema), format, out())


@app.command()
def schema(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the schema reference as Markdown (docs/schema.md).")] = False,
    table: Annotated[Optional[str], typer.Argument(help="Only this table.")] = None,
) -> None:
    """Print the tape schema: every table's columns, types and meaning.

    Example: flowtape schema dns
    """
    from . import schema as s

    if table and table not in s.TABLES:
        raise UsageError(f"unknown table {table!r} (tables: {', '.join(s.TABLES)})")
    tables = [s.table(table)] if table else None
    if markdown:
        out().write(s.markdown(tables))
        return
    for t in tables or s.TABLES.values():
        out().write(f"{t.name}: {t.doc}\n")
        for c in t.columns:
            out().write(f"  {c.name:<20} {str(c.type):<28} {'' if c.nullable else 'required  '}{c.doc}\n")
        out().write("\n")


# `flowtape record` runs for days on a node: it registers its own command only, so the analysis
# commands' imports (DuckDB, Polars, the exporters: ~27 MiB of its memory, docs/recorder.md) stay out.
for _name in (["flowtape.capture.live.cli"] if sys.argv[1:2] == ["record"] else COMMAND_MODULES):
    importlib.import_module(_name).register(app)


# --- entry point --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (console entry point wraps it in sys.exit)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    show_tb = "--traceback" in argv
    try:
        command = typer.main.get_command(app)
        rv = command.main(args=argv, prog_name="flowtape", standalone_mode=False)
        return int(rv) if isinstance(rv, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("flowtape: interrupted", file=sys.stderr)
        return Exit.INTERRUPTED
    except FlowtapeError as e:
        if show_tb:
            raise
        print(f"flowtape: error: {e.message}", file=sys.stderr)
        return int(e.exit_code)
    except typer.TyperException as e:  # the parser's usage errors
        show = getattr(e, "show", None)
        if callable(show):
            show(file=sys.stderr)
        else:
            print(f"flowtape: error: {e.format_message()}", file=sys.stderr)
        return int(getattr(e, "exit_code", Exit.USAGE))
    except BrokenPipeError:
        return Exit.OK  # `flowtape sql ... | head`
    except Exception as e:  # a bug: say so in one line, details behind --traceback
        if show_tb:
            raise
        if is_out_of_memory(e):  # raised where no reader wrapped it (the export's slice threads)
            err = out_of_memory(e)
            print(f"flowtape: error: {err.message}", file=sys.stderr)
            return int(err.exit_code)
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        print(f"flowtape: internal error: {type(e).__name__}: {msg} (rerun with --traceback and report it)", file=sys.stderr)
        return Exit.INTERNAL


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
