"""A compiled twin built again with AddressSanitizer and UBSan, and a Python run that loads it:
the harness of the differential tests' sanitizer checks (_http1, _http2, _dns, _tls)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from ebpf_support import in_ci

ROOT = Path(__file__).resolve().parent.parent


def require_gcc(what: str) -> None:
    """Skip without gcc, or fail under CI=true (scripts/bootstrap.sh installs it)."""
    if shutil.which("gcc") is None:
        if in_ci():
            pytest.fail("gcc is missing on a CI host (scripts/bootstrap.sh installs it)", pytrace=False)
        pytest.skip(f"gcc is missing: cannot build the sanitizer copy of {what}")


def build(tmp_path: Path, source: str, name: str, plant: tuple[str, str] | None = None) -> Path:
    """`source` (a path from the repository root, e.g. capture/decode/_http1.c) built as module `name`
    in tmp_path. plant = (old, new): replace old once, to plant a bug the harness must catch (or it
    proves nothing)."""
    stem = Path(source).stem
    src = (ROOT / source).read_text().replace(f"PyInit_{stem}", f"PyInit_{name}").replace(f'"{stem}"', f'"{name}"')
    if plant:
        assert plant[0] in src
        src = src.replace(plant[0], plant[1], 1)
    (tmp_path / f"{name}.c").write_text(src)
    so = tmp_path / (name + sysconfig.get_config_var("EXT_SUFFIX"))
    r = subprocess.run(["gcc", "-shared", "-fPIC", "-g", "-O1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                        "-fno-sanitize-recover=undefined", f"-I{sysconfig.get_paths()['include']}",
                        str(tmp_path / f"{name}.c"), "-o", str(so)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return so


def run(tmp_path: Path, script: str, *path: Path) -> subprocess.CompletedProcess:
    """`script` in a Python with ASan preloaded, tmp_path (and `path`) importable. Exit 86: ASan, 87: UBSan."""
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    # PYTHONMALLOC=malloc: Python's own small-object allocator hides overreads from ASan
    env = {**os.environ, "LD_PRELOAD": libasan, "PYTHONMALLOC": "malloc", "ASAN_OPTIONS": "detect_leaks=0:exitcode=86",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:exitcode=87",
           "PYTHONPATH": os.pathsep.join(str(p) for p in (tmp_path, *path))}
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=1200)
