"""The CLI as a user sees it: info, sql, merge, schema, help."""

from __future__ import annotations

import csv
import io
import json
import re

import flowtape
from flowtape.capture.synth.tiny import T0
from flowtape.cli import COMMAND_MODULES, app
from flowtape.writer import TapeWriter

from conftest import ROOT


def test_version(cli):
    r = cli("--version")
    assert r.code == 0 and r.out == f"flowtape {flowtape.__version__}\n"


def test_info(tiny_tape, cli):
    r = cli("info", tiny_tape)
    assert r.code == 0, r.err
    assert "window     2026-01-01T00:00:00.000Z .. 2026-01-01T00:01:00.000Z  (60.0 s)" in r.out
    assert "nodes      node-a, node-b" in r.out
    assert re.search(r"http\s+8 rows\s+2 parts", r.out)
    assert re.search(r"node-b\s+flow_insert_failures\s+2", r.out)
    j = json.loads(cli("info", tiny_tape, "-f", "json").out)
    assert j["tables"]["flows"]["rows"] == 7 and j["tables"]["k8s_pods"]["rows"] == 3
    assert j["nodes"] == ["node-a", "node-b"] and j["complete"] is True
    assert j["lost"] == {"node-a": {"kernel_ringbuf_drops": 0}, "node-b": {"flow_insert_failures": 2}}
    assert j["size_bytes"] == sum(p.stat().st_size for p in tiny_tape.rglob("*") if p.is_file())


def test_sql_formats(tiny_tape, cli):
    q = "select node, method, path, status, latency_ns, ts_request from http where side = 'server' order by ts_request"
    r = cli("sql", tiny_tape, q, "-f", "csv")
    assert r.code == 0, r.err
    rows = list(csv.DictReader(io.StringIO(r.out)))
    assert [(x["method"], x["path"], x["status"]) for x in rows] == [("GET", "/orders/1001", "200"), ("GET", "/orders/1002", "200"), ("POST", "/orders?coupon=", "201"), ("GET", "/health", "500")]
    assert rows[0]["ts_request"] == "2026-01-01T00:00:01.100000000Z"  # full ns precision, UTC
    j = json.loads(cli("sql", tiny_tape, q, "-f", "json").out)
    assert [x["latency_ns"] for x in j] == [12_000_000, 15_000_000, 40_000_000, 3_000_000]
    assert {x["node"] for x in j} == {"node-b"}
    md = cli("sql", tiny_tape, "select qname, rcode_name from dns order by ts_query limit 2", "-f", "markdown").out
    assert md.splitlines()[:3] == ["| qname | rcode_name |", "|---|---|", "| api.shop.svc.cluster.local | NOERROR |"]
    table = cli("sql", tiny_tape, "select sum(bytes) as total from flows").out
    assert "total" in table and str(1500 + 12 * 52 + 24000 + 20 * 52 + 56 + 84 + 1500 + 12 * 52 + 900 + 10 * 52 + 5200 + 9 * 52) in table


def test_sql_json_nested_values(tiny_tape, cli):
    j = json.loads(cli("sql", tiny_tape, "select answers from dns where qname = 'golang.org'", "-f", "json").out)
    assert j == [{"answers": [{"name": "golang.org", "type": "CNAME", "ttl": 300, "data": "golang-org.l.google.com"}, {"name": "golang-org.l.google.com", "type": "A", "ttl": 60, "data": "142.250.74.110"}]}]


def test_merge_node_tapes(tmp_path, cli):
    row = {"ts": T0, "client_ip": "198.18.0.1", "client_port": 1, "server_ip": "198.18.0.2", "server_port": 443, "version": "TLS 1.2"}
    for node, n in (("a", 3), ("b", 5)):
        with TapeWriter(tmp_path / f"{node}.tape", node=node) as w:
            w.append("tls", [{**row, "client_port": i} for i in range(n)])
            w.set_lost("drops", n)
    # the same node recorded twice merges too (parts are renumbered)
    with TapeWriter(tmp_path / "a2.tape", node="a") as w:
        w.append("tls", [row])
    r = cli("merge", tmp_path / "a.tape", tmp_path / "b.tape", tmp_path / "a2.tape", "-o", tmp_path / "all.tape")
    assert r.code == 0, r.err
    assert "merged 3 tape(s)" in r.out
    tape = flowtape.open(tmp_path / "all.tape")
    assert tape.problems == []
    assert tape.sql("select node, count(*) from tls group by node order by node").fetchall() == [("a", 4), ("b", 5)]
    assert tape.manifest["lost"] == {"a": {"drops": 3}, "b": {"drops": 5}}
    assert cli("verify", tmp_path / "all.tape").code == 0
    r = cli("merge", tmp_path / "a.tape", "-o", tmp_path / "all.tape")
    assert r.code == 2 and "already exists" in r.err


def test_schema_command(cli):
    r = cli("schema", "dns")
    assert r.code == 0 and "rcode_name" in r.out and "flows" not in r.out
    r = cli("schema", "nope")
    assert r.code == 2 and "unknown table 'nope'" in r.err


def test_every_command_has_help_with_an_example_and_is_in_the_readme():
    import typer.main

    group = typer.main.get_command(app)
    readme = (ROOT / "README.md").read_text()
    assert COMMAND_MODULES, "command modules are registered"
    for name, cmd in group.commands.items():
        sub = getattr(cmd, "commands", None)
        for sname, scmd in (sub or {name: cmd}).items():
            full = f"{name} {sname}" if sub else name
            assert scmd.help and "Example:" in scmd.help, f"`flowtape {full}` lacks help with an example"
            assert f"flowtape {full}" in readme, f"README does not document `flowtape {full}`"


def test_table_cells_are_not_rich_markup(tiny_tape, cli):
    r = cli("sql", tiny_tape, "select '[bold]x[/bold] [a, b]' as t")
    assert "[bold]x[/bold] [a, b]" in r.out
