"""The filters every report takes: --since, --until, --namespace."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from ...errors import UsageError
from ..enrich import GRANULARITIES


def check_by(by: str) -> None:
    if by not in GRANULARITIES:
        raise UsageError(f"--by must be one of {', '.join(GRANULARITIES)}, not {by!r}")


def parse_time(text: str, flag: str) -> dt.datetime:
    """ISO 8601 (naive means UTC) -> aware UTC datetime; a one-line UsageError otherwise."""
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{flag} {text!r}: not a time; use ISO 8601 such as 2026-01-01T00:00:05Z") from None
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


@dataclass(frozen=True)
class Filters:
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    namespace: str | None = None

    def time_sql(self, col: str) -> str:
        parts = ["true"]
        if self.since:
            parts.append(f"{col} >= TIMESTAMPTZ '{self.since.isoformat()}'")
        if self.until:
            parts.append(f"{col} < TIMESTAMPTZ '{self.until.isoformat()}'")
        return " AND ".join(parts)

    def namespace_sql(self, *cols: str) -> str:
        if not self.namespace:
            return "true"
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", self.namespace):
            raise UsageError(f"--namespace {self.namespace!r}: not a Kubernetes namespace name")
        return "(" + " OR ".join(f"{c} = '{self.namespace}'" for c in cols) + ")"

    def where(self, ts: str, *namespace_cols: str) -> str:
        """Time and namespace filters as one SQL condition."""
        return f"({self.time_sql(ts)}) AND ({self.namespace_sql(*namespace_cols)})"
