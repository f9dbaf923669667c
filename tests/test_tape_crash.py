"""A writer killed with SIGKILL mid-stream leaves a tape that opens and says what was cut."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import flowtape
from flowtape.verify import verify

WRITER = textwrap.dedent(
    """
    import sys, time
    from flowtape.writer import TapeWriter
    T0 = 1_767_225_600_000_000_000
    def rows(k, n):
        return [{"ts_start": T0 + k * n + i, "ts_end": T0 + k * n + i, "src_ip": "198.18.0.1", "dst_ip": "198.18.0.2",
                 "src_port": 1000 + i, "dst_port": 80, "l4": "tcp", "ip_proto": 6, "packets": 1, "bytes": 60}
                for i in range(n)]
    w = TapeWriter(sys.argv[1], node="n1", rotate_seconds=3600, row_group_rows=251)
    for k in range(13):                     # 13 batches of 251 rows: 3 rotations after every 4
        w.append("flows", rows(k, 251))    # each batch is flushed as a row group into the open part
        if k % 4 == 3:
            w.rotate()
            print("rotated", (k + 1) * 251, flush=True)
    print("ready", flush=True)             # the 13th batch sits in an unfinished part
    time.sleep(600)
    """
)


def test_sigkill_mid_stream(tmp_path, cli):
    path = tmp_path / "killed.tape"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if line.startswith("ready"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert lines[-2:] == ["rotated 3012", "ready"]

    tape = flowtape.open(path)
    assert tape.rows("flows") == 12 * 251  # every row of the completed parts, exactly
    assert tape.sql("select count(*), count(distinct ts_start) from flows").fetchall() == [(3012, 3012)]
    cut = [str(p) for p in tape.problems if p.severity == "error"]
    assert cut == ["flows/node=n1/.part-000004.parquet.tmp: incomplete part (the writer stopped before finishing it); not read"]
    assert json.loads((path / "manifest.json").read_text())["complete"] is False

    _, problems = verify(path)
    assert [p.path for p in problems if p.severity == "error"] == ["flows/node=n1/.part-000004.parquet.tmp"]
    r = cli("verify", path)
    assert r.code == 4
    assert f"{path}/flows/node=n1/.part-000004.parquet.tmp: incomplete part" in r.err
    assert "Traceback" not in r.err
    assert (path / "flows/node=n1/.part-000004.parquet.tmp").exists()  # nothing is deleted


def test_part_renamed_before_manifest_update_is_read(tiny_tape):
    m = json.loads((tiny_tape / "manifest.json").read_text())
    rel = "http/node=node-b/part-000001.parquet"
    del m["files"][rel]
    (tiny_tape / "manifest.json").write_text(json.dumps(m))
    tape = flowtape.open(tiny_tape)
    assert tape.rows("http") == 8
    assert [str(p) for p in tape.problems] == [f"{rel}: complete part not yet listed in the manifest (written after its last update); read"]
