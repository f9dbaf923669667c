"""`flowtape synth` as a user meets it: determinism, parameters, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import flowtape
from flowtape.capture.synth import Params, synthesize
from flowtape.capture.synth.incidents import parse_incidents
from flowtape.capture.synth.params import parse_duration
from flowtape.cli import main
from flowtape.errors import UsageError

S = 1_000_000_000


def _shas(tape: Path) -> dict[str, str]:
    return {k: v["sha256"] for k, v in json.loads((tape / "manifest.json").read_text())["files"].items()}


def test_same_seed_same_parts_other_seed_other_parts(tmp_path):
    p = Params(seed=9, duration_ns=30 * S, rps=5, incidents=("errors",))
    a, b = synthesize(tmp_path / "a.tape", p), synthesize(tmp_path / "b.tape", p)
    assert _shas(a.path) == _shas(b.path) and a.rows == b.rows
    c = synthesize(tmp_path / "c.tape", Params(seed=10, duration_ns=30 * S, rps=5, incidents=("errors",)))
    assert set(_shas(c.path).values()).isdisjoint(_shas(a.path).values())


def test_cli_writes_tape_truth_and_params_in_the_manifest(tmp_path, capsys):
    out = tmp_path / "x.tape"
    assert main(["synth", "-o", str(out), "--seed", "3", "--services", "5", "--nodes", "3", "--zones", "3", "--duration", "20s", "--rps", "4", "--incident", "latency:target=api->catalog,at=5s,for=10s,factor=8"]) == 0
    said = capsys.readouterr().out
    assert "wrote" in said and "incident latency" in said
    truth = json.loads((out / "truth.json").read_text())
    (inc,) = truth["incidents"]
    assert inc["end_ns"] - inc["start_ns"] == 10 * S and inc["effect"]["factor"] == 8.0
    assert inc["start_ns"] - truth["window"]["start_ns"] == 5 * S
    with flowtape.open(out) as t:
        extra = t.manifest["extra"]["synth"]
        assert extra["params"]["services"] == 5 and extra["truth"] == "truth.json"
        assert t.nodes == ["node-01", "node-02", "node-03"]
        assert t.rows("http") == truth["rows"]["http"] > 0
        # 5 services: frontend, api, one backend, postgres, redis (+ kubernetes, kube-dns, prometheus)
        assert {r[0] for r in t.sql("select name from k8s_services where namespace in ('shop', 'data')").fetchall()} == {"frontend", "api", "catalog", "postgres", "redis"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--services", "0"], "--services must be at least 4"),
        (["--nodes", "2"], "--nodes must be between --zones"),
        (["--duration", "soon"], "--duration 'soon': not a duration"),
        (["--incident", "meteor"], "unknown incident 'meteor'"),
        (["--incident", "latency:target=api->nowhere"], "no edge 'api->nowhere'"),
        (["--incident", "errors:rate=2"], "rate must be in (0, 1]"),
        (["--incident", "dns:at=1h"], "starts outside the tape"),
        (["--rps", "0"], "--rps must be > 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    rc = main(["synth", "-o", str(tmp_path / "bad.tape"), "--duration", "30s", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and message in err, err


def test_existing_output_is_refused(tmp_path, capsys):
    out = tmp_path / "x.tape"
    out.mkdir()
    (out / "keep").write_text("x")
    assert main(["synth", "-o", str(out), "--duration", "10s", "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_durations_and_default_incident_windows_do_not_overlap():
    assert parse_duration("1.5m") == 90 * S and parse_duration("250ms") == 250_000_000 and parse_duration("7") == 7 * S
    p = Params(duration_ns=600 * S, incidents=("latency", "errors", "dns", "egress", "cross-zone"))
    got = sorted((i.start, i.end) for i in parse_incidents(p.incidents, p))
    assert all(a[1] <= b[0] for a, b in zip(got, got[1:]))
    assert all((s - p.start_ns) % (5 * S) == 0 for s, _ in got)
    with pytest.raises(UsageError):
        parse_incidents(("latency", "latency"), p)
