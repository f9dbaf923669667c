"""Examples in docstrings and in the README run and give what they show."""

from __future__ import annotations

import doctest
import os
import re

import pytest

import flowtape
import flowtape.reader
from conftest import ROOT


@pytest.mark.parametrize("module", [flowtape, flowtape.reader])
def test_docstring_examples(module, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_readme_python_example_runs(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Python API\n\n```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(ROOT)
    code = code.replace('"x.tape"', repr(str(tmp_path / "x.tape")))
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert flowtape.open(tmp_path / "x.tape").rows("tls") == 1


def test_readme_command_line_examples_run(tmp_path):
    """Every command in the README's "The command line" block works as printed."""
    import subprocess
    import sys
    from pathlib import Path

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## The command line\n.*?```sh\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "fixtures").symlink_to(ROOT / "fixtures")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for line in block.splitlines():
        cmd = re.sub(r"\s+#\s.*$", "", line).strip()
        if not cmd:
            continue
        cmd = cmd.replace("/tmp/", f"{tmp_path}/out-")
        p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"README command failed: {cmd}\n{p.stderr[-2000:]}"
