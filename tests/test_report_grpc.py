"""gRPC and HTTP/2 rows in the reports, diff and check: a gRPC failure inside an HTTP 200 is a
server error (docs/ci.md). Rows come from the real gRPC capture (tests/data/h2c.pcap) decoded by
capture/decode/http2.py, written to a tape as the recorder writes them."""

from __future__ import annotations

import flowtape
from flowtape.analyze.ci.check import check
from flowtape.analyze.ci.rules import parse_rules
from flowtape.analyze.ci.diff import compare
from flowtape.analyze.reports.latency import http_latency
from flowtape.analyze.reports.topology import topology
from flowtape.writer import TapeWriter

from test_decode_http2 import connections, decode

S = 1_000_000_000
T0 = 1_767_225_600_000_000_000
CLIENT, SERVER = "198.18.0.2", "198.18.0.1"


def grpc_rows() -> list[dict]:
    (segs,) = [s for (c, p), s in connections().items() if p == 50071]
    return decode(segs)


def write(path, rows_per_call: dict[str, int]) -> None:
    """A tape with `n` copies of each gRPC call of the capture, server side, spread over 60 s."""
    calls = {r["grpc_method"]: r for r in grpc_rows()}
    rows, i = [], 0
    for method, n in rows_per_call.items():
        for _ in range(n):
            r = dict(calls[method])
            r.update(ts_request=T0 + i * S // 10, ts_response=T0 + i * S // 10 + (r["latency_ns"] or 0),
                     client_ip=CLIENT, client_port=40000 + i, server_ip=SERVER, server_port=50051, side="server", tls=False,
                     conn_id=f"c{i}", pid=1, comm="python3")
            rows.append(r)
            i += 1
    with TapeWriter(path, node="n1") as w:
        w.append("http", rows)


def test_grpc_failures_inside_http_200_are_errors_in_topology_and_latency(tmp_path):
    write(tmp_path / "t.tape", {"Unary": 10, "Missing": 3, "Down": 4, "Slow": 2, "Stream": 5})
    tape = flowtape.open(tmp_path / "t.tape")
    assert tape.sql("select count(*) from http where status >= 500").fetchall() == [(0,)]  # every answer was an HTTP 200
    (edge,) = topology(tape.analysis, by="pod").to_dicts()
    # UNAVAILABLE (4) and the deadline-cancelled calls (2) are server errors; NOT_FOUND (3) is not
    assert (edge["requests"], edge["errors_5xx"]) == (24, 6)
    routes = http_latency(tape.analysis, by="pod", per_route=True)
    # (Slow has no latency: the client reset it before any response)
    assert set(routes["route"]) == {f"/flowtape.test.Echo/{m}" for m in ("Unary", "Missing", "Down", "Stream")}
    by_route = dict(zip(routes["route"], routes["errors_5xx"]))
    assert by_route["/flowtape.test.Echo/Down"] == 4 and by_route["/flowtape.test.Echo/Missing"] == 0


def test_diff_flags_a_rise_of_grpc_unavailable_and_check_counts_it(tmp_path):
    write(tmp_path / "base.tape", {"Unary": 200, "Missing": 20})
    write(tmp_path / "new.tape", {"Unary": 180, "Missing": 20, "Down": 20})
    r = compare(flowtape.open(tmp_path / "base.tape"), flowtape.open(tmp_path / "new.tape"), by="pod")
    err = r.regressions.filter(r.regressions["check"] == "error_rate").to_dicts()
    assert len(err) == 1 and err[0]["base"] == 0 and err[0]["new"] == 20 / 220
    rules = parse_rules('[[rule]]\nname = "grpc-errors"\nmetric = "error_rate"\nbelow = "5 %"\n', "rules.toml")
    (row,) = check(flowtape.open(tmp_path / "new.tape"), rules).to_dicts()
    assert row["status"] == "violated" and row["value"] == 20 / 220 and "20 server errors" in row["detail"]
