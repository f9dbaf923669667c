"""Injected incidents: what goes wrong, where and when — and the ground truth that says so.

An incident is given as `NAME` or `NAME:key=value,...` (keys: `target`, `at`, `for`, plus the
kind's own knob). Windows are aligned to the 5 s slices so an effect is present in exactly
[start, end) and nowhere else. Defaults spread several incidents over the tape without overlap.

| name | effect inside the window | target (default) | knob |
|---|---|---|---|
| latency | server time on one edge x factor (p50 and p99) | `api->catalog` (api -> first backend) | factor=5 |
| errors | a share of one workload's responses are 5xx | first backend with >1 caller, else api | rate=0.3 |
| dns | kube-dns answers SERVFAIL to a share of all queries; clients retry | kube-dns | rate=0.7 |
| cross-zone | a rollout puts every new pod of a workload in one zone; other zones' clients go cross-zone | api, zone 0 | zone=0 |
| egress | a workload starts calling a new external host over TLS | a backend | rate=0.5 (req/s) |
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from ...errors import UsageError

from .params import SLICE_NS, Params, parse_duration

KINDS = ("latency", "errors", "dns", "cross-zone", "egress")
_KNOBS = {"latency": ("factor", 5.0), "errors": ("rate", 0.3), "dns": ("rate", 0.7), "cross-zone": ("zone", 0), "egress": ("rate", 0.5)}


@dataclass
class Incident:
    kind: str
    start: int
    end: int
    target: str
    knob: float
    spec: str
    # filled once the cluster exists (the cross-zone window starts when a zone loses its last
    # local endpoint, which depends on the rollout schedule)
    details: dict[str, Any] = field(default_factory=dict)

    def active(self, t: int) -> bool:
        return self.start <= t < self.end

    def truth(self) -> dict[str, Any]:
        iso = lambda ns: dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc).isoformat().replace("+00:00", "Z")  # noqa: E731
        out = {"name": self.kind, "kind": self.kind, "spec": self.spec, "start_ns": self.start, "end_ns": self.end, "start": iso(self.start), "end": iso(self.end)}
        out.update(self.details)
        return out


def _align(ns: int) -> int:
    return (ns // SLICE_NS) * SLICE_NS


def parse_incidents(specs: tuple[str, ...] | list[str], p: Params) -> list[Incident]:
    """Parse `--incident` values; UsageError with one line for anything unknown."""
    parsed: list[tuple[str, dict[str, str], str]] = []
    for spec in specs:
        name, _, rest = spec.partition(":")
        name = name.strip().lower()
        if name not in KINDS:
            raise UsageError(f"--incident: unknown incident {name!r} (known: {', '.join(KINDS)})")
        opts: dict[str, str] = {}
        for item in filter(None, (x.strip() for x in rest.split(","))):
            k, eq, v = item.partition("=")
            allowed = ("target", "at", "for", _KNOBS[name][0])
            if not eq or k not in allowed:
                raise UsageError(f"--incident {spec!r}: expected key=value with key one of {', '.join(allowed)}")
            opts[k] = v
        if name in [x[0] for x in parsed]:
            raise UsageError(f"--incident: {name!r} given twice (one incident of each kind per tape)")
        parsed.append((name, opts, spec))
    # cross-zone lasts until the tape ends: schedule it last when windows are defaulted
    order = sorted(range(len(parsed)), key=lambda i: parsed[i][0] == "cross-zone")
    span = p.end_ns - p.start_ns
    slot = span // (len(parsed) + 1) if parsed else span
    out: list[Incident] = []
    for rank, i in enumerate(order):
        name, opts, spec = parsed[i]
        at = parse_duration(opts["at"], f"--incident {name} at") if "at" in opts else slot * (rank + 1) - slot // 3
        length = parse_duration(opts["for"], f"--incident {name} for") if "for" in opts else (span - at if name == "cross-zone" else max(SLICE_NS, slot * 2 // 3))
        start = p.start_ns + _align(at)
        end = p.end_ns if name == "cross-zone" and "for" not in opts else min(p.end_ns, start + max(SLICE_NS, _align(length)))
        if start >= p.end_ns or start < p.start_ns:
            raise UsageError(f"--incident {spec!r}: starts outside the tape ({at / 1e9:g}s of {span / 1e9:g}s)")
        knob_name, knob_default = _KNOBS[name]
        try:
            knob = float(opts.get(knob_name, knob_default))
        except ValueError:
            raise UsageError(f"--incident {spec!r}: {knob_name} must be a number") from None
        if name == "latency" and knob <= 0:
            raise UsageError(f"--incident {spec!r}: factor must be > 0")
        if name in ("errors", "dns") and not 0 < knob <= 1:
            raise UsageError(f"--incident {spec!r}: rate must be in (0, 1]")
        if name == "egress" and knob <= 0:
            raise UsageError(f"--incident {spec!r}: rate must be > 0 requests per second")
        out.append(Incident(name, start, end, opts.get("target", ""), knob, spec))
    out.sort(key=lambda x: KINDS.index(x.kind))
    return out
