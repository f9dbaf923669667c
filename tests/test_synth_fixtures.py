"""The committed synthetic fixtures are reproducible from their recorded command lines."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from flowtape.capture.synth import read_truth
from flowtape.cli import main

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TAPES = ("synth-baseline.tape", "synth-incident.tape")


def _commands() -> dict[str, list[str]]:
    """The command lines exactly as fixtures/README.md documents them."""
    out = {}
    for line in (FIXTURES / "README.md").read_text().splitlines():
        if line.startswith("| `synth-") and "`flowtape synth" in line:
            name = line.split("`")[1]
            out[name] = shlex.split(line.split("`")[3])[2:]  # without "flowtape synth"
    return out


def _parts(tape: Path) -> dict[str, str]:
    m = json.loads((tape / "manifest.json").read_text())
    return {rel: f["sha256"] for rel, f in m["files"].items()}


@pytest.mark.parametrize("name", TAPES)
def test_fixture_is_small_and_documented(name):
    tape = FIXTURES / name
    size = sum(p.stat().st_size for p in tape.rglob("*") if p.is_file())
    assert size < 5 * 1024 * 1024
    assert name in _commands()


@pytest.mark.slow
@pytest.mark.parametrize("name", TAPES)
def test_regenerating_a_fixture_gives_identical_content(name, tmp_path):
    args = _commands()[name]
    out = tmp_path / name
    args[args.index("-o") + 1] = str(out)
    assert main(["synth", *args, "--quiet"]) == 0
    committed = FIXTURES / name
    assert _parts(out) == _parts(committed)
    for rel, sha in _parts(out).items():
        assert (out / rel).read_bytes() == (committed / rel).read_bytes(), rel
    assert read_truth(out) == read_truth(committed)
    a, b = (json.loads((p / "manifest.json").read_text()) for p in (out, committed))
    for m in (a, b):
        m.pop("created_ns"), m.pop("updated_ns")
    assert a == b
