"""Tapes in object storage, against moto's S3 server on loopback (tests/s3_lab.py): upload as
parts finish, pull (whole or a time range), open in place, merge from the bucket, and every
fault of the issue (bucket missing, credentials wrong or expired, the network gone before and
mid-upload, a part uploaded twice, a manifest newer than its parts) as one line and an exit code,
with nothing lost locally and nothing half-written remotely."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import time
import uuid
from pathlib import Path

import pytest

import flowtape
from flowtape import storage
from flowtape.errors import Exit, TapeError
from flowtape.writer import TapeWriter
from s3_lab import S3Lab

T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
MIN = 60_000_000_000


@pytest.fixture(scope="module")
def lab():
    lab = S3Lab()
    yield lab
    lab.stop()


@pytest.fixture
def s3env(lab, monkeypatch, tmp_path):
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in lab.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookups from a test
    monkeypatch.setenv("FLOWTAPE_CACHE_DIR", str(tmp_path / "cache"))
    lab.proxy.up()
    yield lab
    lab.proxy.up()


@pytest.fixture
def bucket(s3env) -> str:
    name = f"tapes-{uuid.uuid4().hex[:10]}"
    s3env.client().create_bucket(Bucket=name)
    return name


def tls_rows(n: int, minute: int, sni_bytes: int = 6) -> list[dict]:
    return [{"ts": T0 + minute * MIN + i * 1000, "client_ip": "198.18.0.1", "client_port": 40000 + i % 20000,
             "server_ip": "198.18.0.2", "server_port": 443, "version": "TLS 1.3", "sni": secrets.token_hex(sni_bytes)}
            for i in range(n)]


def minutes_tape(path: Path, minutes: int = 4, rows: int = 50, node: str = "node-a", clock: dict | None = None) -> Path:
    """One tls part per minute (rotated by hand) and one k8s_nodes part."""
    with TapeWriter(path, node=node, rotate_seconds=3600, clock=clock) as w:
        w.append("k8s_nodes", [{"valid_from": T0, "observed_at_start": True, "deleted": False, "uid": f"uid-{node}", "name": node,
                                   "internal_ips": [], "external_ips": [], "pod_cidrs": [], "labels": {}, "zone": "z1"}])
        for m in range(minutes):
            w.append("tls", tls_rows(rows, m))
            w.rotate()
    return path


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def local_files(tape: Path) -> dict[str, str]:
    return {str(p.relative_to(tape)): sha(p.read_bytes()) for p in tape.rglob("part-*.parquet")}


def remote_parts(lab: S3Lab, bucket: str, prefix: str) -> dict[str, str]:
    return {k[len(prefix):]: sha(v) for k, v in lab.objects(bucket, prefix).items() if k.endswith(".parquet")}


def one_line(err: str) -> str:
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


# --- round trip ----------------------------------------------------------------------------


def test_push_ls_open_pull_round_trip(bucket, s3env, tiny_tape, cli, tmp_path):
    r = cli("push", tiny_tape, f"s3://{bucket}/incident-42/")
    assert r.code == 0, r.err
    assert "12 part(s) uploaded" in r.out and "0 already there" in r.out
    prefix = f"incident-42/{tiny_tape.name}/"
    objects = s3env.objects(bucket, prefix)
    assert remote_parts(s3env, bucket, prefix) == local_files(tiny_tape)  # byte for byte
    remote_m = json.loads(objects[prefix + "manifest.json"])
    assert remote_m["files"] == json.loads((tiny_tape / "manifest.json").read_text())["files"]

    r = cli("ls", f"s3://{bucket}/incident-42/", "-f", "json")
    assert r.code == 0, r.err
    listed = json.loads(r.out)
    assert [(x["tape"], x["nodes"], x["parts"], x["complete"]) for x in listed] == [(f"s3://{bucket}/{prefix}", "node-a,node-b", 12, True)]

    url = f"s3://{bucket}/{prefix}"
    t = flowtape.open(url)
    assert t.problems == [] and t.remote == url
    assert t.sql("select count(*) from flows").fetchall() == [(7,)]
    r = cli("sql", url, "select count(*) n from http", "-f", "json")
    assert r.code == 0 and json.loads(r.out) == [{"n": flowtape.open(tiny_tape).rows("http")}] == [{"n": 8}]
    r = cli("info", url, "-f", "json")
    assert r.code == 0 and json.loads(r.out)["nodes"] == ["node-a", "node-b"] and json.loads(r.out)["tape"] == url

    r = cli("pull", url, "-o", tmp_path / "back.tape")
    assert r.code == 0, r.err
    assert "12 part(s) fetched" in r.out
    assert local_files(tmp_path / "back.tape") == local_files(tiny_tape)
    assert cli("verify", tmp_path / "back.tape").code == 0

    # again: nothing to do either way
    assert "0 part(s) uploaded" in cli("push", tiny_tape, f"s3://{bucket}/incident-42/").out
    assert "0 part(s) fetched" in cli("pull", url, "-o", tmp_path / "back.tape").out


def test_the_bucket_is_a_readable_tape_after_every_rotation(bucket, s3env, tmp_path):
    tape = tmp_path / "live.tape"
    url = f"s3://{bucket}/run/"
    with TapeWriter(tape, node="node-a", rotate_seconds=3600) as w:
        up = storage.Uploader(tape, url)
        for m in range(4):
            w.append("tls", tls_rows(30, m))
            w.rotate()
            r = up.sync()
            assert (len(r.uploaded), r.pending, r.manifest) == (1, 0, True)
            pulled = storage.pull(f"{url}live.tape/", tmp_path / f"reader-{m}.tape")
            with flowtape.open(pulled.tape) as t:
                assert t.rows("tls") == 30 * (m + 1)
                assert [p.message for p in t.problems if p.severity == "error"] == []
                assert not t.manifest["complete"]
    r = up.sync(final=True)
    assert r.manifest and r.uploaded == []
    m = json.loads(s3env.objects(bucket, "run/live.tape/manifest.json")["run/live.tape/manifest.json"])
    assert m["complete"] is True and m["tables"]["tls"] == {"rows": 120, "parts": 4}


def test_pull_a_time_range(bucket, s3env, tmp_path, cli):
    tape = minutes_tape(tmp_path / "n.tape", minutes=4, rows=40)
    assert cli("push", tape, f"s3://{bucket}/x/").code == 0
    r = cli("pull", f"s3://{bucket}/x/n.tape/", "-o", tmp_path / "range.tape",
            "--since", "2026-01-01T00:01:00Z", "--until", "2026-01-01T00:03:00Z")
    assert r.code == 0, r.err
    assert "3 part(s) fetched" in r.out and "2 outside the time range" in r.out  # minutes 1, 2 and the k8s part
    with flowtape.open(tmp_path / "range.tape") as t:
        assert t.rows("tls") == 80 and t.rows("k8s_nodes") == 1
        lo, hi = t.sql("select min(ts), max(ts) from tls").fetchall()[0]
        assert (lo.minute, hi.minute) == (1, 2)
        assert t.problems == []


def test_merge_node_tapes_straight_from_the_bucket(bucket, s3env, tmp_path, cli):
    clocks = {"node-a": {"realtime_ns": T0, "monotonic_ns": 5_000, "offset_ns": T0 - 5_000, "uncertainty_ns": 40},
              "node-b": {"realtime_ns": T0 + 7, "monotonic_ns": 9_000_000, "offset_ns": T0 + 7 - 9_000_000, "uncertainty_ns": 60}}
    for node, clock in clocks.items():
        minutes_tape(tmp_path / f"{node}.tape", minutes=2, rows=25, node=node, clock=clock)
        assert cli("push", tmp_path / f"{node}.tape", f"s3://{bucket}/incident-7/").code == 0
    r = cli("merge", f"s3://{bucket}/incident-7/", "-o", tmp_path / "cluster.tape")
    assert r.code == 0, r.err
    assert "merged 2 tape(s)" in r.out and "nodes node-a, node-b" in r.out
    with flowtape.open(tmp_path / "cluster.tape") as t:
        assert t.sql("select node, count(*) from tls group by node order by node").fetchall() == [("node-a", 50), ("node-b", 50)]
        m = t.manifest
        assert {n: m["nodes"][n]["clock"] for n in clocks} == clocks
        assert m["extra"]["clock_offsets_ns"] == {n: c["offset_ns"] for n, c in clocks.items()}
        assert [x["path"] for x in m["extra"]["merged_from"]] == [f"s3://{bucket}/incident-7/{n}.tape/" for n in clocks]
    assert cli("verify", tmp_path / "cluster.tape").code == 0
    r = cli("merge", f"s3://{bucket}/nothing-here/", "-o", tmp_path / "none.tape")
    assert r.code == Exit.BAD_INPUT and "no tapes there" in one_line(r.err)


# --- faults --------------------------------------------------------------------------------


def test_network_cut_mid_part_leaves_nothing_half_written(bucket, s3env, tmp_path):
    tape = tmp_path / "big.tape"
    with TapeWriter(tape, node="node-a") as w:
        w.append("tls", tls_rows(4000, 0, sni_bytes=16))  # random SNIs: ~150 KB that do not compress
    part = next(tape.rglob("part-*.parquet"))
    assert part.stat().st_size > 100_000
    before = local_files(tape)
    up = storage.Uploader(tape, f"s3://{bucket}/cut/")
    s3env.proxy.cut_after(40_000)  # the connection dies inside the part's PUT body
    with pytest.raises(flowtape.FlowtapeError) as e:
        up.sync()
    assert e.value.exit_code == Exit.UNREACHABLE and "unreachable" in e.value.message
    assert s3env.proxy.cuts == 1
    assert s3env.objects(bucket, "cut/") == {}  # no part, no manifest: nothing half-written
    assert local_files(tape) == before  # nothing lost locally
    s3env.proxy.up()
    r = up.sync(final=True)
    assert len(r.uploaded) == 1 and r.manifest
    assert remote_parts(s3env, bucket, "cut/big.tape/") == before


def test_upload_loop_rides_out_an_outage(bucket, s3env, tmp_path):
    tape = tmp_path / "rec.tape"
    said: list[str] = []
    with TapeWriter(tape, node="node-a", rotate_seconds=3600) as w:
        loop = storage.UploadLoop(storage.Uploader(tape, f"s3://{bucket}/o/"), said.append, poll_s=0.05, max_backoff_s=0.3)
        loop.start()

        def wait_for(cond, what: str) -> None:
            deadline = time.monotonic() + 20
            while not cond():
                assert time.monotonic() < deadline, what
                time.sleep(0.05)

        for m in range(2):
            w.append("tls", tls_rows(20, m))
            w.rotate()
        wait_for(lambda: len(remote_parts(s3env, bucket, "o/rec.tape/")) == 2, "first two parts uploaded")
        s3env.proxy.down()
        for m in range(2, 5):
            w.append("tls", tls_rows(20, m))
            w.rotate()
        wait_for(lambda: loop.failing is not None, "the outage noticed")
        # meanwhile the bucket still holds a readable tape: the manifest lists what is there
        pulled = storage.pull("s3://" + bucket + "/o/rec.tape/", tmp_path / "during.tape", s3=s3env.client())
        assert pulled.missing == [] and len(pulled.fetched) == 2
        s3env.proxy.up()
        wait_for(lambda: loop.failing is None and len(remote_parts(s3env, bucket, "o/rec.tape/")) == 5, "caught up")
    final = loop.finish(10)
    assert final is not None and final.pending == 0
    assert remote_parts(s3env, bucket, "o/rec.tape/") == local_files(tape)
    assert [s.split(":")[0] for s in said] == ["upload paused", "upload resumed"]
    assert "unreachable" in said[0] and "kept locally" in said[0]


def test_part_uploaded_twice(bucket, s3env, tmp_path, cli):
    tape = minutes_tape(tmp_path / "twice.tape", minutes=2)
    assert cli("push", tape, f"s3://{bucket}/t/").code == 0
    state = storage.state_path(tape, storage.parse_url(f"s3://{bucket}/t/").tape_for(tape))
    assert json.loads(state.read_text())["parts"] and not any(p.name.startswith(".") for p in tape.rglob("*") if p.is_file())
    state.unlink()  # as if the uploader died before noting what it had put (or the cache was wiped)
    r = cli("push", tape, f"s3://{bucket}/t/")
    assert r.code == 0 and "0 part(s) uploaded" in r.out and "3 already there" in r.out

    # a part key already holding other bytes: nothing is overwritten, no manifest goes up
    other = minutes_tape(tmp_path / "clash" / "twice.tape", minutes=2)
    s3 = s3env.client()
    rel = sorted(local_files(other))[0]
    s3.put_object(Bucket=bucket, Key=f"clash/twice.tape/{rel}", Body=b"not this part")
    r = cli("push", other, f"s3://{bucket}/clash/")
    assert r.code == Exit.BAD_INPUT and "already in the bucket with other content" in one_line(r.err)
    assert s3env.objects(bucket, "clash/") == {f"clash/twice.tape/{rel}": b"not this part"}

    # another tape of the same name at a destination: refused before any part
    r = cli("push", other, f"s3://{bucket}/t/")
    assert r.code == Exit.BAD_INPUT and "holds another tape" in one_line(r.err)
    assert remote_parts(s3env, bucket, "t/twice.tape/") == local_files(tape)


def test_manifest_newer_than_its_parts(bucket, s3env, tmp_path, cli):
    tape = minutes_tape(tmp_path / "m.tape", minutes=3)
    assert cli("push", tape, f"s3://{bucket}/m/").code == 0
    gone = "tls/node=node-a/part-000002.parquet"
    s3env.client().delete_object(Bucket=bucket, Key=f"m/m.tape/{gone}")
    r = cli("pull", f"s3://{bucket}/m/m.tape/", "-o", tmp_path / "pulled.tape")
    assert r.code == Exit.VERIFY_FAILED
    assert gone in r.err and "not in the bucket" in r.err and r.err.count("\n") == 1
    with flowtape.open(tmp_path / "pulled.tape") as t:
        assert t.rows("tls") == 100  # the two parts that are there
        assert [p.path for p in t.problems if p.severity == "error"] == [gone]
    t = flowtape.open(f"s3://{bucket}/m/m.tape/")
    assert [p.path for p in t.problems] == [gone]


def test_bucket_missing(s3env, tiny_tape, cli, tmp_path):
    before = local_files(tiny_tape)
    for args in (("push", tiny_tape, "s3://no-such-bucket-here/x/"), ("pull", "s3://no-such-bucket-here/x.tape/", "-o", tmp_path / "o"),
                 ("ls", "s3://no-such-bucket-here/"), ("info", "s3://no-such-bucket-here/x.tape/")):
        r = cli(*args)
        assert r.code == Exit.BAD_INPUT, (args, r.err)
        assert "s3://no-such-bucket-here: no such bucket" in one_line(r.err)
    assert local_files(tiny_tape) == before
    with pytest.raises(TapeError, match="no such bucket"):
        flowtape.open("s3://no-such-bucket-here/x.tape/")


def test_no_tape_at_the_url(bucket, s3env, cli, tmp_path):
    r = cli("pull", f"s3://{bucket}/nothing.tape/", "-o", tmp_path / "o")
    assert r.code == Exit.BAD_INPUT and "no tape there" in one_line(r.err)
    assert not (tmp_path / "o").exists()


def test_wrong_credentials(bucket, s3env, tiny_tape, cli):
    with s3env.auth_enforced():
        r = cli("push", tiny_tape, f"s3://{bucket}/x/")
    assert r.code == Exit.NO_PERMISSION
    assert "credentials rejected (InvalidAccessKeyId)" in one_line(r.err)
    assert s3env.objects(bucket) == {}


def test_no_credentials(bucket, s3env, tiny_tape, cli, monkeypatch, tmp_path):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    r = cli("push", tiny_tape, f"s3://{bucket}/x/")
    assert r.code == Exit.NO_PERMISSION and "no AWS credentials found" in one_line(r.err)


def test_expired_credentials(bucket, s3env, tiny_tape, cli, monkeypatch, tmp_path):
    """A credential source that hands out expired credentials (an SSO cache, a process) as the
    standard chain reads it: an AWS config profile with credential_process."""
    proc = tmp_path / "creds.py"
    proc.write_text('import json; print(json.dumps({"Version": 1, "AccessKeyId": "testing", "SecretAccessKey": "testing", '
                    '"SessionToken": "t", "Expiration": "2020-01-01T00:00:00Z"}))\n')
    cfg = tmp_path / "config"
    cfg.write_text(f"[profile expired]\ncredential_process = {sys.executable} {proc}\n")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_PROFILE", "expired")
    r = cli("push", tiny_tape, f"s3://{bucket}/x/")
    assert r.code == Exit.NO_PERMISSION and "credentials expired" in one_line(r.err)
    monkeypatch.delenv("AWS_PROFILE")
    assert s3env.objects(bucket) == {}


def test_network_gone_before_the_start(bucket, s3env, tiny_tape, cli, tmp_path):
    s3env.proxy.down()
    t0 = time.monotonic()
    r = cli("push", tiny_tape, f"s3://{bucket}/x/")
    assert r.code == Exit.UNREACHABLE and "object storage unreachable" in one_line(r.err)
    assert time.monotonic() - t0 < 20  # a few quick retries, not minutes
    r = cli("pull", f"s3://{bucket}/x/tiny.tape/", "-o", tmp_path / "o")
    assert r.code == Exit.UNREACHABLE and "unreachable" in one_line(r.err)


@pytest.mark.parametrize("url, why", [("s3://", "no bucket name"), ("tapes/x/", "not an s3:// URL"), ("s3://b/../x/", "not allowed")])
def test_bad_urls(url, why, tiny_tape, cli, tmp_path):
    r = cli("push", tiny_tape, url)
    assert r.code == Exit.USAGE and why in one_line(r.err)


def test_url_forms():
    loc = storage.parse_url("s3://tapes/inc")
    assert (loc.bucket, loc.prefix, loc.url) == ("tapes", "inc/", "s3://tapes/inc/")
    assert loc.tape_for(Path("/var/lib/flowtape/node-a.tape")).url == "s3://tapes/inc/node-a.tape/"
    assert storage.parse_url("s3://tapes/inc/x.tape").tape_for(Path("y.tape")).url == "s3://tapes/inc/x.tape/"
    assert storage.remote_url(Path("s3://tapes/a.tape")) == "s3://tapes/a.tape"  # pathlib ate a slash
    assert storage.remote_url("s3.tape") is None
    assert storage.parse_url("s3://tapes").url == "s3://tapes/"


def test_endpoint_from_aws_endpoint_url_s3(bucket, s3env, tiny_tape, cli, monkeypatch):
    """The service-specific variable works alone, as the AWS SDKs read it."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3env.proxy.url)
    assert cli("push", tiny_tape, f"s3://{bucket}/e/").code == 0
    assert len(remote_parts(s3env, bucket, "e/tiny.tape/")) == 12


def test_readme_object_storage_commands_run(s3env, tmp_path):
    """The README's object-storage block works as printed, against a bucket `tapes` (the
    `export` line names a store of the reader's own: here it is moto's, through the proxy)."""
    import re
    import subprocess

    from conftest import ROOT

    try:
        s3env.client().create_bucket(Bucket="tapes")
    except Exception as e:  # a second run in the same process: it is there already
        assert "BucketAlready" in str(e)
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## In a cluster: the image.*?```sh\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "fixtures").symlink_to(ROOT / "fixtures")
    before = [str(p.relative_to(ROOT / "fixtures" / "tiny.tape")) for p in (ROOT / "fixtures" / "tiny.tape").rglob("*") if p.is_file()]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    ran = 0
    for line in block.splitlines():
        cmd = re.sub(r"\s+#\s.*$", "", line).strip()
        if not cmd or cmd.startswith("export "):
            continue
        cmd = cmd.replace("/tmp/", f"{tmp_path}/out-")
        p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"README command failed: {cmd}\n{p.stderr[-2000:]}"
        ran += 1
    assert ran == 5
    assert sorted(str(p.relative_to(ROOT / "fixtures" / "tiny.tape")) for p in (ROOT / "fixtures" / "tiny.tape").rglob("*") if p.is_file()) == \
        sorted(before)  # pushing a tape leaves it as it was
    with flowtape.open(tmp_path / "out-incident.tape") as t:
        assert t.rows("flows") == 7 and t.nodes == ["node-a", "node-b"]
