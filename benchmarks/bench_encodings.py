"""The tape's Parquet encodings, measured together: bytes per row and scan time of the same rows
written with the TapeWriter's settings of today and with the variants issue 24 names.

    .venv/bin/python benchmarks/bench_encodings.py [TAPE ...] [--synth-rps 400 --synth-duration 5m]

Every part of every table of each tape (default: the committed fixture tapes, plus a synthetic
tape made in the run with `flowtape synth` at --synth-rps) is read and written again, one part to
one file as the TapeWriter writes it (zstd level 3, one row group per flush), once per variant:
  - today:      dictionary encoding for every column (use_dictionary=True);
  - delta-time: as today, but the timestamp and *_ns columns DELTA_BINARY_PACKED (no dictionary), and
                nested columns' leaves (named by their top-level column) without dictionary;
  - dict-text:  delta-time, and dictionary encoding only for text columns (numbers plain);
  - selective:  dict-text, without dictionary for the text columns that are nearly unique per row
                (conn_id, traceparent, resource_version, uid);
  - delta-unique: delta-time, without dictionary for those nearly unique text columns (numbers keep theirs);
  - writer:     what flowtape.writer.parquet_encodings chooses (the TapeWriter's settings): delta-time,
                with nested columns' leaves dictionary-encoded as before.
"today" is the TapeWriter's setting before issue 24.
Prints bytes per row per table and in total, each variant's ratio to today's, and the time of a
full scan (pyarrow.parquet.read_table of every part, best of 5 rounds, variants interleaved) as a
ratio to today's.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flowtape.writer import parquet_encodings

ROOT = Path(__file__).resolve().parent.parent
NEARLY_UNIQUE = {"conn_id", "traceparent", "resource_version", "uid"}


def is_time(field: pa.Field) -> bool:
    return pa.types.is_timestamp(field.type) or (pa.types.is_integer(field.type) and field.name.endswith("_ns"))


def options(schema: pa.Schema, variant: str) -> dict:
    """pq.ParquetWriter keyword arguments of one variant for one part's schema."""
    if variant == "today":
        return {"use_dictionary": True}
    if variant == "writer":  # what flowtape.writer.TapeWriter writes now
        return parquet_encodings(schema)
    time_cols = [f.name for f in schema if is_time(f)]
    if variant in ("delta-time", "delta-unique"):
        skip = set(time_cols) | (NEARLY_UNIQUE if variant == "delta-unique" else set())
        dictionary = [f.name for f in schema if f.name not in skip]
    else:
        text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        dictionary = text if variant == "dict-text" else [n for n in text if n not in NEARLY_UNIQUE]
    return {"use_dictionary": dictionary, "column_encoding": {n: "DELTA_BINARY_PACKED" for n in time_cols}}


VARIANTS = ("today", "delta-time", "dict-text", "selective", "delta-unique", "writer")


def rewrite(parts: list[Path], out: Path, variant: str) -> dict[str, tuple[int, int]]:
    """Write each part again under out/ with variant's options; bytes and rows per table."""
    sizes: dict[str, tuple[int, int]] = {}
    for i, p in enumerate(parts):
        table = p.parent.parent.name
        data = pq.read_table(p, partitioning=None)
        dest = out / f"{table}-{i}.parquet"
        with pq.ParquetWriter(str(dest), data.schema, compression="zstd", compression_level=3, write_statistics=True,
                              **options(data.schema, variant)) as w:
            w.write_table(data, row_group_size=max(len(data), 1))
        b, r = sizes.get(table, (0, 0))
        sizes[table] = (b + dest.stat().st_size, r + len(data))
    return sizes


def scan_seconds(folders: dict[str, Path], rounds: int = 5) -> dict[str, float]:
    """Best time of a full read of each folder's files, the variants interleaved round by round (the
    machine's load moves between rounds, not between variants)."""
    best = {v: float("inf") for v in folders}
    for _ in range(rounds):
        for v, folder in folders.items():
            t0 = time.perf_counter()
            for f in sorted(folder.glob("*.parquet")):
                pq.read_table(f)
            best[v] = min(best[v], time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tapes", nargs="*", type=Path)
    ap.add_argument("--synth-rps", type=float, default=400.0, help="requests/s of the synthetic tape made in the run (0: none)")
    ap.add_argument("--synth-duration", default="5m")
    args = ap.parse_args()
    tapes = args.tapes or sorted((ROOT / "fixtures").glob("*.tape"))
    with tempfile.TemporaryDirectory(prefix="flowtape-bench-enc-") as tmp:
        work = Path(tmp)
        if args.synth_rps:
            synth = work / "synth.tape"
            subprocess.run([str(Path(sys.executable).with_name("flowtape")), "synth", "-o", str(synth), "--seed", "3",
                            "--rps", str(args.synth_rps), "--duration", args.synth_duration], check=True, capture_output=True)
            tapes = [*tapes, synth]
        grand: dict[str, list[int]] = {v: [0, 0] for v in VARIANTS}
        for tape in tapes:
            parts = sorted(tape.glob("*/node=*/part-*.parquet"))
            name = tape.name if tape.parent != work else f"flowtape synth --rps {args.synth_rps:g} --duration {args.synth_duration}"
            print(f"== {name}: {len(parts)} parts")
            results, folders = {}, {}
            for v in VARIANTS:
                folders[v] = out = work / f"{tape.name}-{v}"
                out.mkdir()
                results[v] = rewrite(parts, out, v)
            scans = scan_seconds(folders)
            for out in folders.values():
                shutil.rmtree(out)
            print(f"   {'table':<16} {'rows':>9} " + " ".join(f"{v + ' B/row':>18}" for v in VARIANTS))
            for table in sorted(results["today"]):
                rows = results["today"][table][1]
                base = results["today"][table][0]
                cells = []
                for v in VARIANTS:
                    b = results[v][table][0]
                    cells.append(f"{b / rows:8.1f} ({b / base:.3f})")
                print(f"   {table:<16} {rows:>9} " + " ".join(f"{c:>18}" for c in cells))
            total = {v: sum(b for b, _ in results[v].values()) for v in VARIANTS}
            rows = sum(r for _, r in results["today"].values())
            cells = [f"{total[v] / rows:8.1f} ({total[v] / total['today']:.3f})" for v in VARIANTS]
            print(f"   {'all':<16} {rows:>9} " + " ".join(f"{c:>18}" for c in cells))
            print(f"   full scan (read_table of every part, best of 5 interleaved rounds): " +
                  ", ".join(f"{v} {1e3 * scans[v]:.1f} ms ({scans[v] / scans['today']:.2f})" for v in VARIANTS))
            for v in VARIANTS:
                grand[v][0] += total[v]
                grand[v][1] += rows
        print("== every tape: bytes per row (ratio to today's): " +
              ", ".join(f"{v} {b / max(r, 1):.1f} ({b / grand['today'][0]:.3f})" for v, (b, r) in grand.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
