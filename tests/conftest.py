"""Shared test fixtures: tiny tapes built in code, and the CLI run as a user would see it."""

from __future__ import annotations

import io
import shutil
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
from ebpf_support import in_ci

from flowtape.capture.synth.tiny import write_tiny_tape
from flowtape.cli import main

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(*args: str) -> Result:
    """Run `flowtape ARGS...` in-process; returns exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return Result(int(code), out.getvalue(), err.getvalue())


def require_tool(names: tuple[str, ...], hint: str, installed_by: str = "scripts/setup-host.sh installs it") -> str:
    """Path of the first of `names` on PATH. Missing: skip with the reason printed, or fail
    under CI=true, where scripts/setup-host.sh has installed it."""
    for name in names:
        exe = shutil.which(name)
        if exe:
            return exe
    why = f"{names[0]} is not installed ({hint}; {installed_by})"
    if in_ci():
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


@pytest.fixture
def need_dot() -> str:
    return require_tool(("dot",), "apt-get install graphviz")


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def tiny_tape(tmp_path: Path) -> Path:
    """A fresh copy of the tiny example tape (safe to damage)."""
    path = tmp_path / "tiny.tape"
    write_tiny_tape(path)
    return path


@pytest.fixture
def committed_tiny(tmp_path: Path) -> Path:
    """A copy of the committed fixtures/tiny.tape."""
    dst = tmp_path / "committed.tape"
    shutil.copytree(FIXTURES / "tiny.tape", dst)
    return dst
