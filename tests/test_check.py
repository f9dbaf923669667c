"""`flowtape check`: rules on the fixture tapes, exact verdicts, and one clear line per bad rules file."""

from __future__ import annotations

import json

import pytest

import flowtape
from conftest import FIXTURES, run_cli
from flowtape.analyze.ci.check import check
from flowtape.analyze.ci.rules import RulesError, parse_rules

BASE = FIXTURES / "synth-baseline.tape"
INC = FIXTURES / "synth-incident.tape"
RULES = FIXTURES / "rules.toml"


def statuses(tape, text: str) -> dict[str, str]:
    df = check(flowtape.open(tape), parse_rules(text, "t.toml"))
    return dict(zip(df["rule"], df["status"]))


def test_committed_rules_hold_on_the_baseline():
    res = run_cli("check", BASE, "--rules", RULES, "-f", "json")
    assert res.code == 0 and res.err == ""
    doc = json.loads(res.out)
    assert doc["violations"] == 0 and doc["summary"] == "all 9 rules hold"
    assert {r["status"] for r in doc["results"]} == {"ok"}


def test_committed_rules_catch_the_incidents():
    res = run_cli("check", INC, "--rules", RULES, "-f", "json")
    assert res.code == 5
    doc = json.loads(res.out)
    bad = {r["rule"]: r for r in doc["results"] if r["status"] != "ok"}
    assert set(bad) == {"p99-catalog", "errors-catalog", "egress-allow-list"}
    assert bad["errors-catalog"]["value"] == pytest.approx(58 / 2144)
    assert bad["egress-allow-list"]["detail"] == "not allowed: telemetry.collect-metrics.io from shop/search"
    assert doc["summary"] == "3 of 9 rules violated: p99-catalog, errors-catalog, egress-allow-list"


def test_markdown_for_a_pull_request():
    res = run_cli("check", INC, "--rules", RULES, "-f", "markdown")
    assert res.code == 5
    lines = res.out.splitlines()
    assert lines[0] == "### flowtape check: 3 rules violated"
    assert "**3 of 9 rules violated: p99-catalog, errors-catalog, egress-allow-list**" in lines
    assert "| errors-catalog | error_rate | server=shop/catalog | 0.0271 | 0.01 | violated | 2144 requests on 1 edge, 58 server errors (responses >= 500, failed gRPC calls) |" in lines


def test_rule_kinds_and_statuses():
    text = """
[[rule]]
name = "shop-to-data"
no_calls = true
client_namespace = "shop"
server_namespace = "data"

[[rule]]
name = "typo"
metric = "p99_ms"
server = "shop/chekout"
below = 100

[[rule]]
name = "typo-allowed"
metric = "p99_ms"
server = "shop/chekout"
below = 100
missing = "pass"

[[rule]]
name = "few"
metric = "p50_ms"
client = "monitoring/*"
below = 1
min_requests = 1000

[[rule]]
name = "xz-tight"
metric = "cross_zone_bytes_per_min"
dst_zone = "eu-west-1a"
below = 1000

[[rule]]
name = "glob"
metric = "requests_per_s"
client = "shop/*"
server = "shop/c*"
below = 100
"""
    df = check(flowtape.open(BASE), parse_rules(text, "t.toml"))
    got = {r["rule"]: r for r in df.iter_rows(named=True)}
    assert {k: v["status"] for k, v in got.items()} == {
        "shop-to-data": "violated", "typo": "no_data", "typo-allowed": "ok", "few": "skipped", "xz-tight": "violated", "glob": "ok",
    }
    assert got["shop-to-data"]["value"] == 5 + 4 + 6 + 4 + 8 + 4 + 8  # every connection from shop to data
    assert got["shop-to-data"]["detail"].startswith("shop/cart -> data/postgres: 0 requests, 8 connections; ")
    assert got["shop-to-data"]["detail"].endswith("; and 4 more edges")
    # api -> catalog, cart, checkout over the 300 s window
    assert got["glob"]["value"] == pytest.approx((2122 + 628 + 1452) / 300)
    res = run_cli("check", BASE, "--rules", FIXTURES / "rules.toml")
    assert res.code == 0


@pytest.mark.parametrize("text, message", [
    ('[[rule]]\nname = "p99-checkout"\nmetric = "p98"\nbelow = 1\n',
     "rules.toml: rule 'p99-checkout': unknown metric 'p98' (one of p50_ms, p95_ms, p99_ms, error_rate, requests_per_s, bytes_per_min, cross_zone_bytes_per_min)"),
    ('[[rule]]\nname = "p99"\nmetric = "p99_ms"\n', "rules.toml: rule 'p99': missing 'below' (the limit the p99_ms must stay under)"),
    ('[[rule]]\nname = "e"\nmetric = "error_rate"\nbelow = "1 percent"\n',
     "rules.toml: rule 'e': below '1 percent': not a limit (a number, or a percentage such as \"1 %\")"),
    ('[[rule]]\nname = "x"\nmetric = "p99_ms"\nbelow = 1\nsrc_zone = "a"\n',
     "rules.toml: rule 'x': unknown key 'src_zone' for metric 'p99_ms' (allowed: by, description, metric, below, min_requests, missing, client, server, client_namespace, server_namespace)"),
    ('[[rule]]\nname = "n"\nno_calls = true\n', "rules.toml: rule 'n': no_calls needs at least one of client, server, client_namespace, server_namespace"),
    ('[[rule]]\nname = "both"\nno_calls = true\nmetric = "p50_ms"\n',
     "rules.toml: rule 'both': needs exactly one of 'metric', 'no_calls' or 'egress_only', not metric and no_calls"),
    ('[[rule]]\nname = "eg"\negress_only = "api.github.com"\n',
     "rules.toml: rule 'eg': egress_only must be a list of DNS names or globs, such as [\"api.github.com\", \"*.googleapis.com\"]"),
    ('[[rule]]\nname = "a"\nno_calls = true\nclient = "x"\n[[rule]]\nname = "a"\nno_calls = true\nclient = "y"\n',
     "rules.toml: rule 'a': the name is used by an earlier rule"),
    ('[[rule]]\nmetric = "p50_ms"\nbelow = 1\n', "rules.toml: rule #1: missing 'name' (a text naming the rule)"),
    ('[[rule]]\nname = "b"\nby = "team"\nno_calls = true\nclient = "x"\n', "rules.toml: rule 'b': by 'team': not one of pod, workload, service, namespace, node, zone"),
    ('[rules]\nname = "x"\n', "rules.toml: unknown top-level key 'rules'; write each rule as a [[rule]] table"),
    ('', "rules.toml: no rules; write each rule as a [[rule]] table"),
    ('[[rule]]\nname = "p99\n', "rules.toml: not valid TOML: "),
])
def test_rules_file_errors_are_one_line_naming_the_rule(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rules.toml").write_text(text)
    res = run_cli("check", BASE, "--rules", "rules.toml")
    assert res.code == 3 and res.out == ""
    assert res.err.count("\n") == 1 and res.err.startswith("flowtape: error: " + message), res.err
    with pytest.raises(RulesError):
        parse_rules(text, "rules.toml")


def test_missing_files_and_usage():
    res = run_cli("check", BASE, "--rules", FIXTURES / "nope.toml")
    assert res.code == 3 and res.err == f"flowtape: error: {FIXTURES / 'nope.toml'}: no such rules file\n"
    res = run_cli("check", BASE)
    assert res.code == 2
    res = run_cli("check", FIXTURES / "nope.tape", "--rules", RULES)
    assert res.code == 3 and res.err.count("\n") == 1
