"""Golden snapshots of every report on the fixture tapes.

Reports on a committed tape are deterministic; floats are rounded to 6 significant digits so
that a change in the last bit of a quantile does not break the snapshot. Regenerate after an
intended change with `UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_report_golden.py`
and review the diff.
"""

from __future__ import annotations

import json
import math
import os

import pytest

import flowtape
from flowtape.analyze.render.formats import records
from conftest import FIXTURES

GOLDEN = FIXTURES / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def _round(v):
    if isinstance(v, float):
        return v if v == 0 or math.isnan(v) else float(f"{v:.6g}")
    if isinstance(v, list):
        return [_round(x) for x in v]
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    return v


def all_reports(tape) -> dict:
    r = tape.report
    frames = {
        "topology_workload": r.topology(by="workload"),
        "topology_zone": r.topology(by="zone"),
        "topology_service_top5": r.topology(by="service", top=5),
        "http_latency_routes": r.http_latency(routes=True),
        "dns_latency": r.dns_latency(),
        "tcp_latency": r.tcp_latency(),
        "talkers": r.talkers(),
        "zone_pairs": r.zone_pairs(),
        "region_pairs": r.zone_pairs(level="region"),
        "egress": r.egress(),
        "dns_failures": r.dns_failures(),
        "slow_lookups": r.slow_lookups(threshold_ms=50),
    }
    return {k: _round(records(v)) for k, v in frames.items()}


@pytest.mark.parametrize("name", ["tiny", "synth-baseline", "synth-incident"])
def test_reports_match_golden(name):
    got = all_reports(flowtape.open(FIXTURES / f"{name}.tape"))
    path = GOLDEN / f"{name}.reports.json"
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"{path} is missing: run with UPDATE_GOLDEN=1 to create it")
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(path.read_text())
    for report in want:
        assert got[report] == want[report], f"{name}: report {report} differs from {path}"
    assert set(got) == set(want)
