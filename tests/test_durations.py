"""One duration syntax for every command (record, k8s record, synth, incidents)."""

from __future__ import annotations

import pytest

from flowtape.durations import parse_duration, parse_seconds
from flowtape.errors import UsageError

S = 1_000_000_000


@pytest.mark.parametrize("text, ns", [("7", 7 * S), ("90s", 90 * S), ("250ms", 250_000_000), ("1.5m", 90 * S), ("1h", 3600 * S), (" 2 m ", 120 * S)])
def test_parse(text, ns):
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["soon", "-5s", "5d", "", "1e3"])
def test_reject_with_the_flag_named(text):
    with pytest.raises(UsageError, match=r"^--for '.*': not a duration"):
        parse_duration(text, "--for")


def test_seconds():
    assert parse_seconds(None) is None and parse_seconds("1.5m") == 90.0
