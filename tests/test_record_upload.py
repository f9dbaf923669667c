"""`flowtape record --upload`: a real recorder uploading its parts to moto's S3 server while the
network goes away and comes back, and a recorder killed with SIGKILL and restarted with
--resume: the bucket ends up byte-for-byte equal to the local tape, at most one rotation lost."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import flowtape
from ebpf_support import ebpf_host, require_ebpf  # noqa: F401  (fixture)
from netlab import Lab
from s3_lab import S3Lab

pytestmark = [pytest.mark.ebpf, require_ebpf()]

FLOWTAPE = str(Path(sys.executable).with_name("flowtape"))

UDP_SENDER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while True:
    s.sendto(b"k" * 100, (sys.argv[1], 9))
    time.sleep(0.01)
"""


@pytest.fixture
def s3(tmp_path, monkeypatch):
    lab = S3Lab()
    bucket = f"rec-{uuid.uuid4().hex[:10]}"
    lab.client().create_bucket(Bucket=bucket)
    extra = {**lab.env(), "AWS_EC2_METADATA_DISABLED": "true", "FLOWTAPE_CACHE_DIR": str(tmp_path / "cache")}
    for k, v in extra.items():
        monkeypatch.setenv(k, v)  # for this process's reads of the bucket too
    env = {**os.environ, **extra}
    yield lab, bucket, env
    lab.stop()


def parts(tape: Path) -> dict[str, str]:
    return {str(p.relative_to(tape)): hashlib.sha256(p.read_bytes()).hexdigest() for p in tape.rglob("part-*.parquet")}


def remote(lab: S3Lab, bucket: str, prefix: str) -> tuple[dict[str, str], dict]:
    objs = lab.objects(bucket, prefix)
    got = {k[len(prefix):]: hashlib.sha256(v).hexdigest() for k, v in objs.items() if k.endswith(".parquet")}
    return got, json.loads(objs.get(prefix + "manifest.json", b"{}") or b"{}")


def wait_for(cond, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_record_uploads_through_an_outage_and_after_a_sigkill(tmp_path, s3):
    lab3, bucket, env = s3
    tape = tmp_path / "node-a.tape"
    prefix = "incident/node-a.tape/"
    argv = [FLOWTAPE, "record", "-o", str(tape), "--node", "node-a", "--probes", "flows", "--flow-interval", "0.2", "--rotate", "0.5",
            "--no-k8s", "--upload", f"s3://{bucket}/incident/", "--resume"]
    with Lab() as lab:
        a, b = lab.add_host("a"), lab.add_host("b")
        argv[argv.index("--probes"):argv.index("--probes")] = ["--interfaces", lab.bridge]
        sender = a.popen([sys.executable, "-c", UDP_SENDER, b.ip])
        try:
            rec = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
            assert "recording to" in rec.stderr.readline()
            said: list[str] = []  # its stderr, read as it comes (the last lines are needed before the kill)
            reader = threading.Thread(target=lambda: said.extend(iter(rec.stderr.readline, "")), daemon=True)
            reader.start()
            wait_for(lambda: len(remote(lab3, bucket, prefix)[0]) >= 2, "parts uploaded while recording")
            lab3.proxy.down()  # the network is gone: recording goes on, parts pile up locally
            n_before = len(parts(tape))
            wait_for(lambda: len(parts(tape)) >= n_before + 3, "rotations during the outage")
            got, m = remote(lab3, bucket, prefix)
            assert set(m["files"]) <= set(got)  # the bucket's tape stays readable meanwhile
            lab3.proxy.up()
            wait_for(lambda: set(parts(tape)) - set(remote(lab3, bucket, prefix)[0]) <= {max(parts(tape))}, "caught up after the outage")
            # the parts are in the bucket before the sync that put them there returns and says so
            wait_for(lambda: any("upload resumed" in line for line in said), "'upload resumed' said")
            rec.send_signal(signal.SIGKILL)  # a DaemonSet pod killed
            assert rec.wait(timeout=10) == -signal.SIGKILL
            killed_at = time.time_ns()
            reader.join(timeout=10)
            first_err = "".join(said)
            assert "upload paused" in first_err and "unreachable" in first_err and "upload resumed" in first_err
            local_after_kill = parts(tape)

            # the pod restarts: the same command continues the tape and its uploads
            rec = subprocess.Popen(argv + ["--duration", "2"], stderr=subprocess.PIPE, text=True, env=env)
            _, err = rec.communicate(timeout=120)
            assert rec.returncode == 0, err
            assert f"and the manifest to s3://{bucket}/incident/" in err
        finally:
            sender.kill()
            sender.wait()

    local = parts(tape)
    got, m = remote(lab3, bucket, prefix)
    assert got == local and set(m["files"]) == set(local)  # byte for byte, every part listed
    assert set(local_after_kill) <= set(local)  # nothing finished before the kill was lost
    assert m["complete"] is True
    gaps = [g for g in m["gaps"] if g["source"] == "recorder"]
    assert len(gaps) == 1 and gaps[0]["end_ns"] > gaps[0]["start_ns"]
    # at most one rotation (0.5 s) plus the restart is blind: the gap starts at the last manifest update
    assert killed_at - gaps[0]["start_ns"] < 1.5e9
    t = flowtape.open(f"s3://{bucket}/{prefix}")
    assert [p for p in t.problems if p.severity == "error"] == []
    n = t.sql(f"select sum(packets)::bigint from flows where src_ip = '{a.ip}' and dst_ip = '{b.ip}'").fetchall()[0][0]
    assert n and n > 100
