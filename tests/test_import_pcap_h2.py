"""h2c in an imported capture: the importer hands flows that start with the HTTP/2 preface to the
same HTTP/2 decoder as the recorder (capture/decode/tcp_streams.TcpStreams(http2=...)). Oracle:
tshark's http2 dissector on the same seed capture (tests/data/h2c.pcap, made by make_h2_seeds.sh)."""

from __future__ import annotations

import subprocess
from collections import Counter

import flowtape
from conftest import ROOT, run_cli

CAPTURE = ROOT / "tests" / "data" / "h2c.pcap"


def _tshark_requests() -> Counter:
    """(method, path) of every request HEADERS frame tshark decodes (h2c on the capture's ports)."""
    ports = subprocess.run(["tshark", "-n", "-r", str(CAPTURE), "-T", "fields", "-e", "tcp.dstport", "-Y", "tcp.flags.syn == 1 && tcp.flags.ack == 0"],
                           capture_output=True, text=True, check=True).stdout.split()
    decode = [a for p in sorted(set(ports)) for a in ("-d", f"tcp.port=={p},http2")]
    out = subprocess.run(["tshark", "-n", "-r", str(CAPTURE), *decode, "-Y", "http2.headers.method", "-T", "fields",
                          "-e", "http2.headers.method", "-e", "http2.headers.path", "-E", "occurrence=a", "-E", "aggregator=|"],
                         capture_output=True, text=True, check=True).stdout
    got: Counter = Counter()
    for line in out.splitlines():
        methods, paths = line.split("\t")
        for m, p in zip(methods.split("|"), paths.split("|")):
            got[(m, p.split("?")[0])] += 1
    return got


def test_imported_h2c_streams_equal_tsharks(tmp_path):
    r = run_cli("import", "pcap", str(CAPTURE), "-o", str(tmp_path / "h2.tape"))
    assert r.code == 0, r.err
    tape = flowtape.open(tmp_path / "h2.tape")
    rows = tape.sql("SELECT side, method, path, http_version FROM http").fetchall()
    assert {r[3] for r in rows} == {"HTTP/2"}
    by_side = {side: Counter((m, (p or "").split("?")[0]) for s, m, p, _ in rows if s == side) for side in ("client", "server")}
    expected = _tshark_requests()
    assert sum(expected.values()) > 0
    assert by_side["client"] == by_side["server"] == expected  # both ends are on the wire: a row per side
