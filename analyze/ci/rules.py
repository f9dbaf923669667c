"""Rules files for `flowtape check`: TOML, one `[[rule]]` table per assertion.

```toml
[[rule]]
name = "p99-checkout"            # required, unique: errors and results name the rule
metric = "p99_ms"                # p50_ms p95_ms p99_ms error_rate requests_per_s   (HTTP, per exchange)
client = "shop/api"              #   selectors (globs over names at granularity `by`, default workload):
server = "shop/checkout"         #   client, server, client_namespace, server_namespace
below = 250                      # the value must be below this; error_rate also as "1 %"
min_requests = 20                # optional: fewer matching requests -> skipped, not judged
missing = "fail"                 # optional: no matching request at all -> "fail" (default) or "pass"

[[rule]]
name = "cross-zone-budget"
metric = "cross_zone_bytes_per_min"   # or bytes_per_min (flow bytes, per minute of the tape)
below = 4_000_000                     # selectors: src, dst (globs), src_zone, dst_zone

[[rule]]
name = "shop-never-calls-monitoring"
no_calls = true                  # no HTTP exchange and no connection matches the selectors
client_namespace = "shop"
server_namespace = "monitoring"

[[rule]]
name = "egress-allow-list"
egress_only = ["api.github.com", "*.googleapis.com"]   # every external destination (DNS name, else IP) matches one
client = "shop/*"                # optional: only traffic from these sources
```

Every mistake is one line naming the file and the rule: `rules.toml: rule 'p99-checkout': unknown metric 'p98'`.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import FlowtapeError
from ..enrich import GRANULARITIES

HTTP_METRICS = ("p50_ms", "p95_ms", "p99_ms", "error_rate", "requests_per_s")
FLOW_METRICS = ("bytes_per_min", "cross_zone_bytes_per_min")
METRICS = HTTP_METRICS + FLOW_METRICS

EDGE_SELECTORS = ("client", "server", "client_namespace", "server_namespace")
FLOW_SELECTORS = ("src", "dst", "src_zone", "dst_zone")
COMMON = ("name", "by", "description")

KEYS = {
    "http": COMMON + ("metric", "below", "min_requests", "missing") + EDGE_SELECTORS,
    "flows": COMMON + ("metric", "below") + FLOW_SELECTORS,
    "no_calls": COMMON + ("no_calls",) + EDGE_SELECTORS,
    "egress_only": COMMON + ("egress_only", "client", "client_namespace"),
}


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str  # "metric", "no_calls" or "egress_only"
    metric: str | None = None
    below: float | None = None
    by: str = "workload"
    selectors: dict[str, str] = field(default_factory=dict)
    allow: tuple[str, ...] = ()
    min_requests: int = 0
    missing: str = "fail"
    description: str | None = None

    def describe(self) -> str:
        """The selectors as `key=value` text ('all' when none)."""
        return ", ".join(f"{k}={v}" for k, v in self.selectors.items()) or "all"


class RulesError(FlowtapeError):
    """A rules file that cannot be used; the message names the file and the rule."""


def _number(v: Any, metric: str | None) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and metric == "error_rate":
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*%\s*", v)
        if m:
            return float(m.group(1)) / 100
    return None


def parse_rules(text: str, where: str) -> list[Rule]:
    """Rules from TOML text; `where` (the file name) starts every error message."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RulesError(f"{where}: not valid TOML: {e}") from None
    extra = set(data) - {"rule"}
    if extra:
        raise RulesError(f"{where}: unknown top-level key {sorted(extra)[0]!r}; write each rule as a [[rule]] table")
    raw = data.get("rule")
    if not isinstance(raw, list) or not raw:
        raise RulesError(f"{where}: no rules; write each rule as a [[rule]] table")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, r in enumerate(raw, 1):
        if not isinstance(r, dict):
            raise RulesError(f"{where}: rule #{i}: not a table")
        name = r.get("name")
        if not isinstance(name, str) or not name.strip():
            raise RulesError(f"{where}: rule #{i}: missing 'name' (a text naming the rule)")
        if name in seen:
            raise RulesError(f"{where}: rule {name!r}: the name is used by an earlier rule")
        seen.add(name)
        rules.append(_rule(r, f"{where}: rule {name!r}"))
    return rules


def _rule(r: dict[str, Any], here: str) -> Rule:
    kinds = [k for k in ("metric", "no_calls", "egress_only") if k in r]
    if len(kinds) != 1:
        raise RulesError(f"{here}: needs exactly one of 'metric', 'no_calls' or 'egress_only'" + (f", not {' and '.join(kinds)}" if kinds else ""))
    kind = kinds[0]
    by = r.get("by", "workload")
    if by not in GRANULARITIES:
        raise RulesError(f"{here}: by {by!r}: not one of {', '.join(GRANULARITIES)}")
    desc = r.get("description")
    if kind == "metric":
        metric = r["metric"]
        if metric not in METRICS:
            raise RulesError(f"{here}: unknown metric {metric!r} (one of {', '.join(METRICS)})")
        group = "http" if metric in HTTP_METRICS else "flows"
    else:
        metric, group = None, kind
    for k in r:
        if k not in KEYS[group]:
            what = f"metric {metric!r}" if metric else repr(kind)
            raise RulesError(f"{here}: unknown key {k!r} for {what} (allowed: {', '.join(x for x in KEYS[group] if x != 'name')})")
    sel: dict[str, str] = {}
    for k in EDGE_SELECTORS + FLOW_SELECTORS:
        if k in r:
            if not isinstance(r[k], str) or not r[k]:
                raise RulesError(f"{here}: {k} must be a non-empty text (a name or a glob such as 'shop/*')")
            sel[k] = r[k]
    if kind == "metric":
        if "below" not in r:
            raise RulesError(f"{here}: missing 'below' (the limit the {metric} must stay under)")
        below = _number(r["below"], metric)
        if below is None:
            hint = ' (a number, or a percentage such as "1 %")' if metric == "error_rate" else " (a number)"
            raise RulesError(f"{here}: below {r['below']!r}: not a limit{hint}")
        mr = r.get("min_requests", 0)
        if isinstance(mr, bool) or not isinstance(mr, int) or mr < 0:
            raise RulesError(f"{here}: min_requests {mr!r}: not a whole number >= 0")
        missing = r.get("missing", "fail")
        if missing not in ("fail", "pass"):
            raise RulesError(f"{here}: missing {missing!r}: use \"fail\" or \"pass\"")
        return Rule(r["name"], "metric", metric, below, by, sel, min_requests=mr, missing=missing, description=desc)
    if kind == "no_calls":
        if r["no_calls"] is not True:
            raise RulesError(f"{here}: no_calls must be true")
        if not sel:
            raise RulesError(f"{here}: no_calls needs at least one of {', '.join(EDGE_SELECTORS)}")
        return Rule(r["name"], "no_calls", by=by, selectors=sel, description=desc)
    allow = r["egress_only"]
    if not isinstance(allow, list) or not all(isinstance(a, str) and a for a in allow):
        raise RulesError(f"{here}: egress_only must be a list of DNS names or globs, such as [\"api.github.com\", \"*.googleapis.com\"]")
    return Rule(r["name"], "egress_only", by=by, selectors=sel, allow=tuple(allow), description=desc)


def load_rules(path: Path | str) -> list[Rule]:
    """Rules from a file; every problem is one RulesError line (exit 3)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise RulesError(f"{path}: no such rules file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RulesError(f"{path}: cannot read: {e}") from None
    return parse_rules(text, str(path))
