"""Durations on the command line: '90', '90s', '250ms', '1.5m', '1h' (a bare number is seconds)."""

from __future__ import annotations

import re

from .errors import UsageError

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_NS = {"ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000, None: 1_000_000_000}


def parse_duration(text: str, flag: str = "--duration") -> int:
    """Nanoseconds in `text`; a one-line UsageError naming `flag` when it is not a duration."""
    m = _DURATION_RE.match(str(text))
    if not m:
        raise UsageError(f"{flag} {text!r}: not a duration (examples: 30, 90s, 250ms, 10m, 1h)")
    return int(round(float(m.group(1)) * _NS[m.group(2)]))


def parse_seconds(text: str | None, flag: str = "--duration") -> float | None:
    """Seconds in `text`, or None when no duration was given (run until interrupted)."""
    return None if text is None else parse_duration(text, flag) / 1e9
