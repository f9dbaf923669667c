"""Bad input gets one clear line on stderr naming the file and what to do, and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowtape.errors import Exit
from flowtape.writer import sha256_file


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_not_a_tape(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    r = cli("info", tmp_path / "empty")
    assert r.code == Exit.BAD_INPUT
    assert one_line(r.err) == f"flowtape: error: {tmp_path / 'empty'}: not a flowtape tape (no manifest.json)"
    (tmp_path / "file.parquet").write_bytes(b"PAR1")
    r = cli("sql", tmp_path / "file.parquet", "select 1")
    assert r.code == Exit.BAD_INPUT and "not a tape (a tape is a folder" in one_line(r.err)
    r = cli("verify", tmp_path / "missing.tape")
    assert r.code == Exit.BAD_INPUT and "no such tape" in one_line(r.err)


def test_unknown_format_version(tiny_tape, cli):
    m = json.loads((tiny_tape / "manifest.json").read_text())
    m["format"] = "flowtape/2"
    (tiny_tape / "manifest.json").write_text(json.dumps(m))
    r = cli("info", tiny_tape)
    assert r.code == Exit.BAD_INPUT
    assert "tape format 'flowtape/2' is not supported" in one_line(r.err) and "reads 'flowtape/1'" in r.err


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"format": "flowtape/1", "files": ', "corrupt manifest (invalid JSON at line 1"),
        ("[1, 2]", "corrupt manifest (top level is not an object)"),
        ('{"format": "flowtape/1"}', "corrupt manifest (missing key 'tool')"),
    ],
)
def test_corrupt_manifest(tiny_tape, cli, text, message):
    (tiny_tape / "manifest.json").write_text(text)
    r = cli("verify", tiny_tape)
    assert r.code == Exit.BAD_INPUT
    assert one_line(r.err).startswith(f"flowtape: error: {tiny_tape / 'manifest.json'}: {message}")


def test_truncated_part(tiny_tape, cli):
    part = tiny_tape / "http/node=node-b/part-000001.parquet"
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    r = cli("verify", tiny_tape)
    assert r.code == Exit.VERIFY_FAILED
    assert one_line(r.err) == f"error: {part}: truncated or modified part ({len(data) // 2} bytes, manifest says {len(data)}); not read"
    # the rest of the tape is still usable, with the damage named
    r = cli("sql", tiny_tape, "select count(*) as n from http", "-f", "csv")
    assert r.code == 0 and r.out == "n\n4\n"
    assert "truncated or modified part" in one_line(r.err)


def test_truncated_part_not_in_manifest(tiny_tape, cli):
    part = tiny_tape / "http/node=node-b/part-000002.parquet"
    part.write_bytes(b"PAR1" + b"\0" * 100)
    r = cli("verify", tiny_tape)
    assert r.code == Exit.VERIFY_FAILED and "part-000002.parquet: truncated part" in one_line(r.err)


def test_schema_mismatch_in_a_part(tiny_tape, cli):
    rel = "tls/node=node-a/part-000001.parquet"
    part = tiny_tape / rel
    t = pq.read_table(part)
    t = t.set_column(t.schema.get_field_index("client_port"), "client_port", pa.array(["x"] * len(t)))
    pq.write_table(t, part)
    m = json.loads((tiny_tape / "manifest.json").read_text())  # a consistent manifest: only the schema is wrong
    m["files"][rel].update(bytes=part.stat().st_size, sha256=sha256_file(part))
    (tiny_tape / "manifest.json").write_text(json.dumps(m))
    r = cli("verify", tiny_tape)
    assert r.code == Exit.VERIFY_FAILED
    assert one_line(r.err) == f"error: {part}: schema mismatch: column 'client_port' is string, expected uint16; not read"


def test_sha256_and_row_count_mismatch(tiny_tape, cli):
    rel = "dns/node=node-a/part-000001.parquet"
    m = json.loads((tiny_tape / "manifest.json").read_text())
    m["files"][rel]["sha256"] = "0" * 64
    m["files"][rel]["rows"] = 5
    m["tables"]["dns"]["rows"] = 5
    (tiny_tape / "manifest.json").write_text(json.dumps(m))
    r = cli("verify", tiny_tape)
    assert r.code == Exit.VERIFY_FAILED
    lines = r.err.strip().splitlines()
    assert lines == [f"error: {tiny_tape}/{rel}: has 4 rows, manifest says 5", f"error: {tiny_tape}/{rel}: sha256 {sha256_file(tiny_tape / rel)[:12]}… does not match the manifest's 000000000000…"]


def test_query_error(tiny_tape, cli):
    r = cli("sql", tiny_tape, "select nope from flows")
    assert r.code == Exit.BAD_INPUT
    assert one_line(r.err).startswith('flowtape: error: query failed: Binder Error: Referenced column "nope" not found')
    r = cli("sql", tiny_tape, "selec 1")
    assert r.code == Exit.BAD_INPUT and "query failed: Parser Error" in one_line(r.err)


def test_console_script_exit_codes_without_traceback(tmp_path):
    exe = [sys.executable, "-m", "flowtape.cli"]
    p = subprocess.run([*exe, "info", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == Exit.BAD_INPUT and one_line(p.stderr).startswith("flowtape: error:")
    p = subprocess.run([*exe, "info"], capture_output=True, text=True)
    assert p.returncode == Exit.USAGE and "Missing argument" in p.stderr
    p = subprocess.run([*exe, "--traceback", "info", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode != 0 and "Traceback" in p.stderr and "TapeError" in p.stderr
