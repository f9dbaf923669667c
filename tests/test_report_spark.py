"""The report set on the Spark engine equals the DuckDB engine's (issue 23, docs/spark.md).

On every fixture tape and on a synthetic tape whose pod IPs are reused, each report of
`flowtape report topology|latency|traffic|dns` computed with engine="spark" (Spark local[2]
runs the per-row stage of analyze.sums) equals the one computed in DuckDB: counts, bytes,
names and times exactly, HTTP percentiles within the latency sketch's 1 %. The oracle is the
DuckDB engine, whose answers the other report tests check against tshark and the synth truth.

One SparkSession for the module (its start is most of the cost); under CI a missing Java or
pyspark fails instead of skipping.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import flowtape
from flowtape.analyze.sketch import ALPHA
from flowtape.errors import Exit, UsageError

from ebpf_support import skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ["tiny.tape", "synth-baseline.tape", "synth-incident.tape"]
PERCENTILES = {"p50_ms", "p95_ms", "p99_ms"}


@pytest.fixture(scope="module")
def spark():
    if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
        skip_or_fail("no Java on this host (scripts/setup-host.sh installs openjdk-17-jre-headless)")
    try:
        import pyspark  # noqa: F401
        import sqlglot  # noqa: F401
    except ImportError as e:
        skip_or_fail(f"{e.name} is not installed (pip install -e '.[spark]')")
    from flowtape.analyze.engines import spark as engine

    session = engine.session("local[2]")
    yield session
    engine.stop()


@pytest.fixture(scope="module")
def reused_tape(tmp_path_factory) -> Path:
    """A synthetic tape with rollouts: pod IPs handed to other pods within minutes."""
    path = tmp_path_factory.mktemp("spark") / "reuse.tape"
    subprocess.run([sys.executable, "-m", "flowtape.cli", "synth", "-o", str(path), "--seed", "23", "--services", "6", "--nodes", "4",
                    "--zones", "2", "--regions", "2", "--duration", "3m", "--rps", "20", "--rollouts", "3", "-q"], check=True, cwd=ROOT)
    return path


def report_set(tape) -> dict[str, pl.DataFrame]:
    """What the four report commands compute (topology, latency, traffic, dns), with and without filters."""
    r = tape.report
    start, _ = tape.window
    since = dt.datetime.fromtimestamp(start // 1_000_000_000 + 20, dt.timezone.utc)  # a literal timestamp in the heavy stage's SQL
    out = {
        "topology": r.topology(by="workload"),
        "topology_pod_top": r.topology(by="pod", top=5),
        "topology_since": r.topology(by="service", since=since),
        "http_latency": r.http_latency(routes=True),
        "http_latency_zone": r.http_latency(by="zone"),
        "dns_latency": r.dns_latency(),
        "tcp_latency": r.tcp_latency(),
        "talkers": r.talkers(by="pod"),
        "talkers_host": r.talkers(by="host"),
        "talkers_process": r.talkers(by="process"),
        "topology_process": r.topology(by="process"),
        "talkers_since": r.talkers(since=since),
        "zone_pairs": r.zone_pairs(),
        "region_pairs": r.zone_pairs(level="region"),
        "egress": r.egress(),
        "dns_failures": r.dns_failures(),
        "slow_lookups": r.slow_lookups(threshold_ms=1.0),
    }
    ns = tape.sql("SELECT min(namespace) FROM k8s_pods").fetchall()[0][0]
    if ns:
        out["topology_namespace"] = r.topology(namespace=ns)
        out["talkers_namespace"] = r.talkers(namespace=ns)
    return out


def assert_same(name: str, duck: pl.DataFrame, spark: pl.DataFrame) -> None:
    assert duck.schema == spark.schema, name
    assert duck.height == spark.height, name
    exact = [c for c in duck.columns if c not in PERCENTILES]
    assert duck.select(exact).equals(spark.select(exact)), f"{name}: {duck.select(exact)} != {spark.select(exact)}"
    for c in PERCENTILES & set(duck.columns):
        for d, s in zip(duck[c].to_list(), spark[c].to_list()):
            assert (d is None) == (s is None), (name, c)
            if d is not None:
                assert abs(s - d) <= ALPHA * abs(d) + 1e-9, (name, c, d, s)


def check_tape(path: Path | str) -> dict[str, pl.DataFrame]:
    duck = flowtape.open(str(path))
    on_spark = flowtape.open(str(path), engine="spark", spark_master="local[2]")
    expected, got = report_set(duck), report_set(on_spark)
    for name in expected:
        assert_same(f"{path} {name}", expected[name], got[name])
    # the heavy stage really ran on Spark: paths, HTTP sums, flow sums and flow first/last seen
    made = [t for t, _ in on_spark.analysis.engine.timings]
    assert "ft_paths" in made and any(t.endswith("_rows") for t in made) and sum(t.endswith("_g") for t in made) >= 2, made
    assert duck.analysis.engine.name == "duckdb" and on_spark.analysis.engine.name == "spark"
    return expected


@pytest.mark.parametrize("fixture", FIXTURES)
def test_fixture_reports_equal_on_spark(spark, fixture):
    expected = check_tape(ROOT / "fixtures" / fixture)
    assert expected["topology"]["requests"].sum() > 0 and expected["talkers"]["bytes_total"].sum() > 0


def test_reused_ips_reports_equal_on_spark(spark, reused_tape):
    tape = flowtape.open(str(reused_tape))
    # the tape really reuses IPs: one address held by two pods at different times
    reused = tape.sql("SELECT count(*) FROM (SELECT ip FROM (SELECT DISTINCT uid, unnest(ips) AS ip FROM k8s_pods WHERE NOT host_network) "
                      "GROUP BY ip HAVING count(*) > 1)").fetchall()[0][0]
    assert reused > 0
    tape.analysis  # the enrichment views, ft_cuts among them
    assert tape.sql("SELECT count(*) FROM ft_cuts").fetchall()[0][0] > 0
    expected = check_tape(reused_tape)
    assert expected["topology"]["requests"].sum() == tape.sql("SELECT count(*) FROM ft_http_x").fetchall()[0][0]


def test_processes_outside_kubernetes_equal_on_spark(spark, tmp_path):
    """A laptop's tape: flows find their connection's process with an ASOF join, which Spark runs
    as a join on each connection's [start, next start) (analyze.engines.spark._asof)."""
    from laptop_tape import write_laptop_tape
    from flowtape.analyze.enrich import has_processes

    path = write_laptop_tape(tmp_path / "laptop.tape")
    tape = flowtape.open(str(path))
    tape.analysis
    assert has_processes(tape.con)
    expected = check_tape(path)
    # flow bytes named by the process of their connection (the ASOF path), as tests/laptop_tape.py wrote them
    talkers = {r["endpoint"]: r["bytes_out"] for r in expected["talkers_process"].iter_rows(named=True)}
    assert talkers["curl"] == 500 and talkers["nginx"] == 1500 and talkers["docker:web-1/python3"] == 700


def test_tape_in_s3_through_the_local_cache(spark, tmp_path, monkeypatch):
    """A tape in S3-compatible storage (moto's server): fetched into the local cache as for DuckDB,
    and Spark reads the cached parts. Not s3a: hadoop-aws is not installable here (docs/spark.md)."""
    from s3_lab import S3Lab
    from flowtape import storage

    lab = S3Lab()
    try:
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            monkeypatch.delenv(k, raising=False)
        for k, v in lab.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setenv("FLOWTAPE_CACHE_DIR", str(tmp_path / "cache"))
        lab.client().create_bucket(Bucket="tapes-spark")
        storage.push(ROOT / "fixtures" / "synth-incident.tape", "s3://tapes-spark/incident/")
        url = "s3://tapes-spark/incident/synth-incident.tape/"
        expected = check_tape(url)
        local = report_set(flowtape.open(str(ROOT / "fixtures" / "synth-incident.tape")))
        assert all(expected[k].equals(local[k]) for k in expected)
    finally:
        lab.stop()


def test_cli_engine_spark_prints_what_duckdb_prints(spark):
    tape = str(ROOT / "fixtures" / "tiny.tape")
    out = {}
    for engine in ("duckdb", "spark"):
        r = subprocess.run([sys.executable, "-m", "flowtape.cli", "report", "traffic", tape, "--engine", engine, "-f", "json"],
                           capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        out[engine] = json.loads(r.stdout)
        assert "Traceback" not in r.stderr and "WARN" not in r.stderr, r.stderr
    assert out["spark"] == out["duckdb"] and out["duckdb"]


def test_no_java_is_one_line_and_exit_7(tmp_path):
    """A machine without Java: one line naming what to install, exit 7 (Exit.UNSUPPORTED)."""
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(Path(sys.executable).parent)  # the virtualenv's bin: no java there
    r = subprocess.run([sys.executable, "-m", "flowtape.cli", "report", "topology", str(ROOT / "fixtures" / "tiny.tape"), "--engine", "spark"],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == Exit.UNSUPPORTED == 7
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Java" in lines[0] and "openjdk-17-jre-headless" in lines[0], r.stderr
    assert r.stdout == ""


def test_bad_engine_and_master():
    with pytest.raises(UsageError, match="engine must be one of duckdb, spark"):
        flowtape.open(str(ROOT / "fixtures" / "tiny.tape"), engine="sprak")
    r = subprocess.run([sys.executable, "-m", "flowtape.cli", "report", "dns", str(ROOT / "fixtures" / "tiny.tape"), "--spark-master", "local[2]"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == Exit.USAGE and r.stderr.strip().splitlines() == ["flowtape: error: --spark-master needs --engine spark"], r.stderr


def test_spark_that_does_not_start_is_one_line(spark):
    """A master Spark cannot start with: one line naming it and the JVM's log, exit 7."""
    r = subprocess.run([sys.executable, "-m", "flowtape.cli", "report", "traffic", str(ROOT / "fixtures" / "tiny.tape"), "--engine", "spark",
                        "--spark-master", "bogus://nowhere"], capture_output=True, text=True, cwd=ROOT)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == Exit.UNSUPPORTED and len(lines) == 1 and "'bogus://nowhere'" in lines[0] and "jvm.log" in lines[0], r.stderr
    shutil.rmtree(Path(lines[0].rsplit("(log: ", 1)[1].rstrip(")")).parent, ignore_errors=True)
