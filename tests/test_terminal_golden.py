"""Golden terminal output: what a person sees from `flowtape info` and `flowtape report ...` in
table format, on the committed fixture tapes and on the laptop tape (no Kubernetes), at a wide
and a narrow terminal (columns left out by the stated priority, never cut).

Regenerate after an intended change with
`UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_terminal_golden.py` and review the diff.
The repository's path is masked (`<root>`), so the files are the same on any machine.
"""

from __future__ import annotations

import os
import re

import pytest

from conftest import FIXTURES, ROOT, run_cli
from laptop_tape import write_laptop_tape

GOLDEN = FIXTURES / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

COMMANDS = {
    "tiny": [["info"], ["report", "topology"], ["report", "topology", "--by", "zone"], ["report", "latency", "--routes"],
             ["report", "traffic"], ["report", "dns", "--slow-ms", "10"]],
    "synth-incident": [["info"], ["report", "topology", "--top", "8"], ["report", "latency", "--since", "2024-03-03T02:00:30Z", "--until", "2024-03-03T02:01:00Z"],
                       ["report", "traffic", "--by", "zone"], ["report", "dns"]],
    "synth-baseline": [["report", "topology", "--by", "service", "--top", "6"], ["report", "traffic", "--top", "5"]],
    "laptop": [["info"], ["report", "topology", "--by", "process"], ["report", "topology", "--by", "host"], ["report", "topology", "--by", "namespace"],
               ["report", "latency", "--by", "process"], ["report", "traffic", "--by", "process"], ["report", "dns", "--by", "process"]],
}
WIDTHS = (160, 80)


def transcript(tape, name: str, monkeypatch) -> str:
    out = []
    for width in WIDTHS:
        monkeypatch.setenv("COLUMNS", str(width))
        for args in COMMANDS[name]:
            head = 2 if args[0] == "report" else 1  # the tape comes after the command's name
            r = run_cli(*args[:head], tape, *args[head:])
            assert r.code == 0, (args, r.err)
            shown = " ".join(["flowtape", *args[:head], f"{name}.tape", *args[head:]])
            out.append(f"$ COLUMNS={width} {shown}\n{r.out}")
    return re.sub(re.escape(str(tape.parent)), "<root>", "\n".join(out))


@pytest.mark.parametrize("name", list(COMMANDS))
def test_terminal_output_matches_golden(name, tmp_path, monkeypatch):
    tape = write_laptop_tape(tmp_path / "laptop.tape") if name == "laptop" else FIXTURES / f"{name}.tape"
    got = transcript(tape, name, monkeypatch)
    path = GOLDEN / f"{name}.terminal.txt"
    if UPDATE:
        path.write_text(got)
    assert path.exists(), f"{path} is missing: run with UPDATE_GOLDEN=1 to create it"
    assert got == path.read_text(), f"{name}: terminal output differs from {path.relative_to(ROOT)}"


def test_no_line_is_wider_than_the_terminal(tmp_path, monkeypatch):
    """At 80 columns every table fits (its names do): nothing is cut, columns are left out."""
    tape = FIXTURES / "synth-incident.tape"
    monkeypatch.setenv("COLUMNS", "80")
    r = run_cli("report", "topology", tape, "--top", "8")
    lines = r.out.splitlines()
    note = [line for line in lines if line.startswith("(not shown in 80 columns:")]
    assert len(note) == 1 and lines[-1] == note[0]
    assert max(len(line) for line in lines[:-1]) <= 80
    assert note[0] == "(not shown in 80 columns: connections, failed_connections, bytes_c2s, bytes_s2c, errors_5xx, p95; -f csv has them)"
    head = [c.strip() for c in lines[2].strip("┃").split("┃")]
    assert head == ["client", "server", "requests", "error_rate", "p50", "p99"]  # names, rate, errors, duration
    assert lines[4].split("│")[1:-1] == [" shop/frontend ", " shop/api      ", "     3658 ", "    0.191 % ", " 17.4 ms ", " 49.2 ms "]
