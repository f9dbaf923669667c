"""`flowtape diff` on the fixture tapes: exactly the injected incidents, nothing on a clean
comparison, rates normalised by window length, thresholds from options and config files."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

import flowtape
from conftest import FIXTURES, ROOT, run_cli
from flowtape.analyze.ci.diff import Thresholds, _z_rates, _z_two_prop, compare, load_config

BASE = FIXTURES / "synth-baseline.tape"
INC = FIXTURES / "synth-incident.tape"
TRUTH = {i["kind"]: i for i in json.loads((INC / "truth.json").read_text())["incidents"]}
SYNTH = ["--seed", "42", "--services", "10", "--nodes", "6", "--zones", "3", "--rps", "8"]

# Each injected incident, the finding(s) it must give; built from truth.json.
LAT, ERR, EGR, XZ = TRUTH["latency"]["target"], TRUTH["errors"]["target"], TRUTH["egress"]["target"], TRUTH["cross-zone"]["target"]
EXPECTED = {
    ("edge_added", f"{EGR['workload']} -> external:{EGR['host']}"),  # egress
    ("new_egress", EGR["host"]),  # egress
    ("error_rate", f"shop/api -> {ERR['workload']}"),  # errors: the only caller of catalog
    ("p99_ms", f"{LAT['client']} -> {LAT['server']}"),  # latency
    ("cross_zone_bytes_per_min", f"shop/frontend -> {XZ['workload']}"),  # cross-zone: the api's callers
    ("new_dns_failure", "SERVFAIL from kube-system/coredns"),  # dns: kube-dns's pods
}


@pytest.fixture(scope="module")
def incident():
    return compare(flowtape.open(BASE), flowtape.open(INC))


def pairs(df: pl.DataFrame) -> set[tuple[str, str]]:
    return set(zip(df["check"], df["subject"]))


def test_baseline_vs_incident_flags_exactly_the_injected_incidents(incident):
    assert pairs(incident.regressions) == EXPECTED
    assert len(incident.regressions) == len(EXPECTED)
    # the only comparison beyond threshold that is not flagged: a p99 over 20 scrapes
    assert incident.inconclusive.select("check", "subject", "detail").rows() == [
        ("p99_ms", "monitoring/prometheus -> node:node-04", "too few samples (20 vs 20; need 200)")
    ]


def test_incident_findings_name_the_right_zone_names_and_numbers(incident):
    r = {(c, s): row for c, s, row in zip(incident.findings["check"], incident.findings["subject"], incident.findings.iter_rows(named=True))}
    xz = r[("cross_zone_bytes_per_min", "shop/frontend -> shop/api")]
    assert xz["base"] == 0.0 and xz["new"] > 100_000
    # the busiest cross-zone pairs go into the zone the rollout put every api pod in
    assert xz["detail"].split("cross-zone in NEW: ")[1].split(", ")[:2] == [f"eu-west-1c->{XZ['zone']}", f"eu-west-1b->{XZ['zone']}"]
    err = r[("error_rate", "shop/api -> shop/catalog")]
    assert err["base"] == pytest.approx(2 / 2122) and err["new"] == pytest.approx(58 / 2144)
    p99 = r[("p99_ms", "shop/api -> shop/catalog")]
    assert p99["new"] / p99["base"] > 2.5
    # DNS: every new failure is a SERVFAIL inside the storm's window, never search-path noise
    new = incident.dns.filter(pl.col("new_failure"))
    assert set(new["rcode_name"]) == {"SERVFAIL"} and len(new) == 14
    assert "14 names never failing so in BASE" in r[("new_dns_failure", "SERVFAIL from kube-system/coredns")]["detail"]
    # egress: from the workload truth names; the IPs used while DNS failed keep their names
    egr = incident.egress
    assert egr.filter(pl.col("new_destination"))["destination"].to_list() == [EGR["host"]]
    assert egr.filter(pl.col("destination") == EGR["host"])["sources_new"].to_list() == [EGR["workload"]]
    assert not any(d[0].isdigit() for d in egr["destination"])


def test_baseline_vs_itself_is_clean():
    r = compare(flowtape.open(BASE), flowtape.open(BASE))
    assert r.findings.is_empty() and r.summary() == "no regression"
    res = run_cli("diff", BASE, BASE)
    assert res.code == 0 and "no regression" in res.out and res.err == ""


def test_regenerated_identical_tape_is_clean(tmp_path):
    again = tmp_path / "again.tape"
    assert run_cli("synth", "-o", again, *SYNTH, "--duration", "5m").code == 0
    res = run_cli("diff", BASE, again, "-f", "json")
    assert res.code == 0, res.out
    doc = json.loads(res.out)
    assert doc["regressions"] == 0 and doc["inconclusive"] == 0 and doc["findings"] == []


def test_longer_tape_of_the_same_cluster_is_clean(tmp_path):
    """Twice the window, twice the requests: rates per second/minute make them equal."""
    longer = tmp_path / "10m.tape"
    assert run_cli("synth", "-o", longer, *SYNTH, "--duration", "10m").code == 0
    r = compare(flowtape.open(BASE), flowtape.open(longer))
    assert r.regressions.is_empty(), r.regressions
    assert (r.base_window_s, r.new_window_s) == (300.0, 600.0)
    e = r.edges.filter((pl.col("client") == "shop/frontend") & (pl.col("server") == "shop/api")).row(0, named=True)
    assert e["rps_new"] == pytest.approx(e["rps_base"], rel=0.1)


def test_cli_exit_code_and_markdown_for_a_pull_request():
    res = run_cli("diff", BASE, INC, "-f", "markdown")
    assert res.code == 5 and res.err == ""
    lines = res.out.splitlines()
    assert lines[0] == "### flowtape diff: 6 regressions"
    assert lines[4] == ("**6 regressions (1 edge_added, 1 error_rate, 1 p99_ms, 1 cross_zone_bytes_per_min, 1 new_egress, "
                        "1 new_dns_failure); 1 change beyond threshold not conclusive**")
    assert "| check | subject | base | new | change | detail |" in lines
    assert "<details><summary>1 change beyond threshold, not conclusive (not flagged)</summary>" in lines


def test_thresholds_from_options_and_config(tmp_path):
    # errors rose by 2.6 percentage points: a 5-point threshold does not flag them
    res = run_cli("diff", BASE, INC, "-f", "json", "-t", "error_rate_abs=0.05")
    assert res.code == 5
    assert {(f["check"], f["subject"]) for f in json.loads(res.out)["findings"] if f["status"] == "regression"} == EXPECTED - {("error_rate", "shop/api -> shop/catalog")}
    cfg = tmp_path / "diff.toml"
    cfg.write_text("[thresholds]\nedges_added = false\nlatency_rel = 5.0\n")
    res = run_cli("diff", BASE, INC, "-f", "json", "--config", cfg)
    got = {(f["check"], f["subject"]) for f in json.loads(res.out)["findings"] if f["status"] == "regression"}
    assert got == EXPECTED - {("edge_added", "shop/search -> external:telemetry.collect-metrics.io"), ("p99_ms", "shop/api -> shop/catalog")}
    # the example config holds the defaults
    assert load_config(FIXTURES / "diff.toml") == (Thresholds(), "workload")


@pytest.mark.parametrize("text, code, message", [
    ("[thresholds]\nlatency_rell = 1\n", 3, "diff.toml: unknown threshold 'latency_rell' (known: z, min_requests,"),
    ("[thresholds]\nz = 'high'\n", 3, "diff.toml: threshold 'z': 'high' is not a float"),
    ("[thresholds]\nmin_requests = -1\n", 3, "diff.toml: threshold 'min_requests': must be >= 0, not -1"),
    ("[thresholds\n", 3, "diff.toml: not valid TOML: "),
    ("[limits]\n", 3, "diff.toml: unknown table [limits] (known: [diff], [thresholds])"),
    ("[diff]\nby = 'team'\n", 3, "diff.toml: [diff] by: 'team' is not one of pod, workload"),
])
def test_bad_config_is_one_line(tmp_path, text, code, message):
    cfg = tmp_path / "diff.toml"
    cfg.write_text(text)
    res = run_cli("diff", BASE, BASE, "--config", cfg)
    assert res.code == code
    assert res.err.count("\n") == 1 and res.err.startswith(f"flowtape: error: {cfg.parent}/{message}"), res.err


def test_usage_and_input_errors():
    res = run_cli("diff", BASE, BASE, "-t", "latency_rel")
    assert (res.code, res.err) == (2, "flowtape: error: --threshold 'latency_rel': use KEY=VALUE, such as latency_rel=0.5\n")
    res = run_cli("diff", BASE, BASE, "-t", "nope=1")
    assert res.code == 2 and res.err.startswith("flowtape: error: --threshold: unknown threshold 'nope'")
    res = run_cli("diff", BASE, ROOT / "no-such.tape")
    assert res.code == 3 and res.err.count("\n") == 1 and "no-such.tape" in res.err
    assert run_cli("diff", BASE).code == 2


def test_by_zone_shows_the_zone_level_incidents():
    """By zone, edges are zone pairs: the rollout that moved every api pod into one zone shows
    as new and busier pairs into it; catalog's errors and latency are diluted below threshold
    among the many workloads of a zone pair (by workload finds them)."""
    r = compare(flowtape.open(BASE), flowtape.open(INC), by="zone")
    z = XZ["zone"]
    assert pairs(r.regressions) == {
        ("edge_added", "eu-west-1a -> external:telemetry.collect-metrics.io"),  # egress, from search's pods in each zone
        ("edge_added", "eu-west-1b -> external:telemetry.collect-metrics.io"),
        ("edge_added", "eu-west-1c -> external:telemetry.collect-metrics.io"),
        ("new_egress", "telemetry.collect-metrics.io"),
        ("edge_added", "eu-west-1b -> eu-west-1c"),  # cross-zone: frontend -> api during the rollout
        ("request_rate", f"eu-west-1b -> {z}"),  # cross-zone: frontend -> api after it
        ("request_rate", f"eu-west-1c -> {z}"),
        ("p50_ms", f"eu-west-1c -> {z}"),  # cross-zone: api's slower answers now in this pair's mix
        ("new_dns_failure", "SERVFAIL from eu-west-1a, eu-west-1b"),  # dns: kube-dns's two pods' zones
        ("new_dns_failure", "SERVFAIL from eu-west-1b"),
    }


def test_statistics():
    # two-proportion z: 2/2122 vs 58/2144
    p = 60 / 4266
    assert _z_two_prop(2, 2122, 58, 2144) == pytest.approx((58 / 2144 - 2 / 2122) / math.sqrt(p * (1 - p) * (1 / 2122 + 1 / 2144)))
    assert _z_two_prop(0, 2377, 4, 2286) < 3  # the 4 stray errors on api -> users are noise
    # equal rates over windows of 300 s and 600 s: 100 vs 200 events is z = 0
    assert _z_rates(100, 300, 200, 600) == 0.0
    assert _z_rates(100, 300, 100, 600) == pytest.approx((100 - 200 * 2 / 3) / math.sqrt(200 * 2 / 3 * 1 / 3))
    assert Thresholds().p_value == pytest.approx(0.00135, rel=0.01)


@pytest.mark.parametrize("command", ["diff", "check"])
def test_help_ends_with_an_example(command):
    import typer

    from flowtape.cli import app

    res = run_cli(command, "--help")
    assert res.code == 0 and "Example: flowtape " + command in res.out
    help_text = typer.main.get_command(app).commands[command].help
    assert help_text.rstrip().splitlines()[-1].strip().startswith("Example: flowtape " + command)
