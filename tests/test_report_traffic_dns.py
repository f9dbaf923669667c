"""Traffic and DNS reports against sums computed from the raw rows."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

import flowtape
from flowtape.analyze.reports.prices import Prices
from flowtape.capture.synth.tiny import API_VIP, EXT_IP, FRONTEND_IP


def raw_flows(tape_path, node):
    return pq.read_table(tape_path / f"flows/node={node}").to_pylist()


def test_talkers_count_each_packet_once(tiny_tape):
    a, b = raw_flows(tiny_tape, "node-a"), raw_flows(tiny_tape, "node-b")
    # node-b also saw frontend -> api (it crossed into node-b): counted at the source's node only
    assert any(r["src_ip"] == FRONTEND_IP for r in b)
    df = flowtape.open(tiny_tape).report.talkers()
    fe = df.filter(df["endpoint"] == "shop/frontend").row(0, named=True)
    assert fe["bytes_out"] == sum(r["bytes"] for r in a if r["src_ip"] == FRONTEND_IP)
    assert fe["bytes_in"] == sum(r["bytes"] for r in a if r["dst_ip"] == FRONTEND_IP and r["src_ip"] != API_VIP)
    assert df["bytes_out"].sum() == df["bytes_in"].sum()  # every counted byte has both ends


def test_zone_pairs_and_cost(tiny_tape):
    a = raw_flows(tiny_tape, "node-a")
    tape = flowtape.open(tiny_tape)
    prices = Prices(cross_zone=0.5, internet_egress=2.0)
    z = {(r["src_zone"], r["dst_zone"]): r for r in tape.report.zone_pairs(prices=prices).iter_rows(named=True)}
    cross = sum(r["bytes"] for r in a if r["dst_ip"] == API_VIP)  # the ClusterIP's pod is in the other zone
    assert z[("eu-west-1a", "eu-west-1b")]["kind"] == "cross_zone"
    assert z[("eu-west-1a", "eu-west-1b")]["bytes"] == cross
    assert z[("eu-west-1a", "eu-west-1b")]["cost_usd"] == pytest.approx(cross / 1e9 * 0.5)
    egress = sum(r["bytes"] for r in a if r["dst_ip"] == EXT_IP)
    assert z[("eu-west-1a", "internet")]["cost_usd"] == pytest.approx(egress / 1e9 * 2.0)
    window_s = 60
    assert z[("eu-west-1a", "internet")]["cost_usd_month"] == pytest.approx(egress / 1e9 * 2.0 * 30 * 86400 / window_s)
    assert z[("internet", "eu-west-1a")]["kind"] == "internet_ingress" and z[("internet", "eu-west-1a")]["cost_usd"] == 0
    e = tape.report.egress().row(0, named=True)
    assert (e["destination"], e["named"], e["bytes_out"], e["top_sources"]) == ("golang.org", True, egress, ["shop/frontend"])


def test_dns_failures_separate_search_path_noise(tiny_tape):
    df = flowtape.open(tiny_tape).report.dns_failures()
    rows = {r["qname"]: r for r in df.iter_rows(named=True)}
    assert rows["golang.org.shop.svc.cluster.local"]["search_path"] is True
    assert rows["golang.org.shop.svc.cluster.local"]["rcode_name"] == "NXDOMAIN"
    assert rows["unanswered.example"]["rcode_name"] == "NO ANSWER" and rows["unanswered.example"]["search_path"] is False
    assert len(rows) == 2  # NOERROR lookups are not failures
    slow = flowtape.open(tiny_tape).report.slow_lookups(threshold_ms=10)
    assert slow["qname"].to_list() == ["golang.org"] and slow["max_ms"].to_list() == [21.0]


def test_cli_traffic_and_dns(tiny_tape, tmp_path, cli):
    r = cli("report", "traffic", tiny_tape, "-f", "json")
    assert r.code == 0, r.err
    j = json.loads(r.out)
    assert set(j) == {"talkers", "zone_pairs", "region_pairs", "egress"}
    assert j["egress"][0]["destination"] == "golang.org"
    prices = tmp_path / "p.toml"
    prices.write_text("[prices]\ninternet_egress = 1.5\n")
    j = json.loads(cli("report", "traffic", tiny_tape, "--prices", prices, "-f", "json").out)
    assert j["egress"][0]["cost_usd"] == pytest.approx(j["egress"][0]["bytes_out"] / 1e9 * 1.5)
    prices.write_text("[prices]\negress = 1\n")
    r = cli("report", "traffic", tiny_tape, "--prices", prices)
    assert r.code == 3 and "unknown price 'egress'" in r.err
    r = cli("report", "dns", tiny_tape, "--slow-ms", "10", "-f", "json")
    assert r.code == 0 and [x["qname"] for x in json.loads(r.out)["slow"]] == ["golang.org"]
