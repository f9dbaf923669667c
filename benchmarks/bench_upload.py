"""Upload and pull timings against moto's S3 server on loopback (through tests/s3_lab.py's proxy).

    .venv/bin/python benchmarks/bench_upload.py

Prints, for the tiny fixture, the synthetic incident fixture and a tape of 8 incompressible
parts (~1.9 MiB each, a busy node's rotations): parts and MiB pushed, push seconds and MiB/s,
an idle sync (nothing new: no request), and the pull of the whole tape. moto is a Python server,
so these are an upper bound on flowtape's own cost per part, not a store's throughput.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from s3_lab import S3Lab  # noqa: E402

T0 = 1_767_225_600_000_000_000


def main() -> None:
    lab = S3Lab()
    os.environ.update(lab.env())
    os.environ["FLOWTAPE_CACHE_DIR"] = tempfile.mkdtemp()
    from flowtape import storage
    from flowtape.writer import TapeWriter

    work = Path(tempfile.mkdtemp())
    lab.client().create_bucket(Bucket="bench")
    with TapeWriter(work / "big.tape", node="n", rotate_seconds=3600) as w:
        for m in range(8):
            w.append("tls", [{"ts": T0 + m * 60_000_000_000 + i, "client_ip": "198.18.0.1", "client_port": 1, "server_ip": "198.18.0.2",
                              "server_port": 443, "version": "TLS 1.3", "sni": secrets.token_hex(32)} for i in range(50_000)])
            w.rotate()
    for name, tape in (("tiny", ROOT / "fixtures/tiny.tape"), ("synth-incident", ROOT / "fixtures/synth-incident.tape"), ("big", work / "big.tape")):
        local = work / f"{name}-copy.tape"
        shutil.copytree(tape, local)
        t0 = time.monotonic()
        up, r = storage.push(local, "s3://bench/x/")
        t1 = time.monotonic()
        up.sync()
        t2 = time.monotonic()
        storage.pull(f"s3://bench/x/{local.name}/", work / f"{name}-pulled.tape")
        t3 = time.monotonic()
        mib = r.bytes / 2**20
        print(f"{name:15} {len(r.uploaded):3} parts {mib:6.2f} MiB  push {t1 - t0:5.2f} s ({mib / (t1 - t0):5.1f} MiB/s)  "
              f"idle sync {1000 * (t2 - t1):5.2f} ms  pull {t3 - t2:5.2f} s")
    lab.stop()


if __name__ == "__main__":
    main()
