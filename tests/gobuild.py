"""Go test programs (tests/go/*.go) built with Debian's golang-go, standard library only."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ebpf_support import skip_or_fail

GO_DIR = Path(__file__).resolve().parent / "go"


def go_build(src: str, out: Path, stripped: bool = False) -> Path:
    """Build tests/go/SRC into OUT (`-ldflags='-s -w'` when stripped); skip (fail under CI) without go."""
    go = shutil.which("go")
    if go is None:
        skip_or_fail("go is not installed (scripts/setup-host.sh installs golang-go)")
    env = dict(os.environ, GO111MODULE="off", GOCACHE=str(out.parent / ".gocache"), GOFLAGS="", CGO_ENABLED="0")
    argv = [go, "build", "-o", str(out)] + (["-ldflags=-s -w"] if stripped else []) + [str(GO_DIR / src)]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise AssertionError(f"go build {src} failed: {r.stderr}")
    return out


def go_version() -> str:
    return subprocess.run(["go", "version"], capture_output=True, text=True, check=True).stdout.split()[2]
