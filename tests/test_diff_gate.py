"""The regression gate CI runs (scripts/regression-gate.sh) passes on the fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_regression_gate_script_passes():
    env = dict(os.environ, FLOWTAPE=str(Path(sys.executable).parent / "flowtape"))
    p = subprocess.run(["bash", str(ROOT / "scripts" / "regression-gate.sh")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.splitlines() == [
        "ok:   baseline vs itself is clean (exit 0)",
        "ok:   rules hold on the baseline (exit 0)",
        "ok:   rules catch the incidents (exit 5)",
        "ok:   baseline vs incident is a regression (exit 5)",
        "ok:   exactly the five injected incidents are flagged",
    ]


def test_regression_gate_fails_when_flowtape_misbehaves(tmp_path):
    fake = tmp_path / "flowtape"
    fake.write_text("#!/bin/sh\nexit 0\n")  # a flowtape that never finds anything
    fake.chmod(0o755)
    p = subprocess.run(["bash", str(ROOT / "scripts" / "regression-gate.sh")], capture_output=True, text=True, env=dict(os.environ, FLOWTAPE=str(fake)), cwd=ROOT)
    assert p.returncode == 1
    assert "FAIL: rules catch the incidents: flowtape check fixtures/synth-incident.tape --rules fixtures/rules.toml exited 0, expected 5" in p.stdout
