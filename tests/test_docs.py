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
