"""HTTP/2 and gRPC recorded from real peers (root + bcc), against the servers' own logs.

In a namespace lab (198.18.0.0/15): nginx serving h2c (prior knowledge) and h2 over TLS (ALPN
h2), driven by curl and h2load (2 connections x 5 concurrent streams); a grpcio server driven by
its client (OK, NOT_FOUND, UNAVAILABLE, a client deadline, server streaming) over h2c. Oracles:
nginx's access logs and the gRPC server's call log (tests/grpc_peer.py), per connection; tshark's
http2 dissector on a capture of the h2c traffic. h2c rows come from the TC programs (one row per
local side: both ends are on this node), h2-over-TLS rows from the OpenSSL uprobes (nginx, curl
and h2load link libssl.so.3).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

import flowtape
from ebpf_support import ebpf_host, require_ebpf  # noqa: F401  (fixture)
from flowtape.capture.decode.http2 import grpc_status_name
from netlab import H2_PORT, H2C_PORT, Lab, access_log, make_cert, start_nginx_l7, wait_line

pytestmark = [pytest.mark.ebpf, pytest.mark.slow, require_ebpf()]

FLOWTAPE = str(Path(sys.executable).with_name("flowtape"))
PEER = str(Path(__file__).with_name("grpc_peer.py"))
GRPC_PORT = 50051
NAME = "a.lab.test"
ROUNDS = 3  # each gRPC method this many times on one channel


@pytest.fixture(scope="module")
def recording(ebpf_host, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("h2")
    with Lab() as lab:
        srv, cli = lab.add_host("srv"), lab.add_host("cli")
        www = lab.www({"f100": b"x" * 100, "big": b"y" * 100_000})
        cert = make_cert(lab.workdir, [NAME])
        master, _ = start_nginx_l7(srv, www, tls=cert)
        grpc_log = work / "grpc.log"
        grpc = srv.popen([sys.executable, PEER, "serve", f"{srv.ip}:{GRPC_PORT}", str(grpc_log)], stdout=subprocess.PIPE, text=True)
        wait_line(grpc.stdout, "ready")
        tape = work / "h2.tape"
        rec = subprocess.Popen([FLOWTAPE, "record", "-o", str(tape), "--interfaces", lab.bridge, "--node", "lab-node", "--no-k8s"],
                               stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        status: list[str] = []
        try:
            wait_line(rec.stderr, "recording to")
            threading.Thread(target=lambda: status.extend(rec.stderr), daemon=True).start()
            h2c = f"http://{srv.ip}:{H2C_PORT}"
            tls = f"https://{NAME}:{H2_PORT}"
            resolve = ["--resolve", f"{NAME}:{H2_PORT}:{srv.ip}"]
            pcap = work / "h2c.pcap"  # whole packets (netlab's capture keeps 256 bytes: too few for HPACK)
            dump = subprocess.Popen(["tcpdump", "-i", srv.host_if, "-U", "-n", "-s", "0", "-B", "32768", "-w", str(pcap), "tcp"],
                                    stderr=subprocess.PIPE, text=True)
            assert "listening" in dump.stderr.readline()
            try:
                for path in ("/f100", "/nope", "/moved", "/big"):  # one connection each (curl 7.88 fails reusing h2c for a second URL)
                    assert cli.run(["curl", "-s", "-o", "/dev/null", "--http2-prior-knowledge", h2c + path], timeout=30).returncode == 0
                cli.run(["h2load", "-n", "60", "-c", "2", "-m", "5", f"{h2c}/f100"], timeout=60)
                out = cli.run([sys.executable, PEER, "call", f"{srv.ip}:{GRPC_PORT}", str(ROUNDS)], timeout=60, check=False)
                assert out.returncode == 0, out.stdout + out.stderr
                time.sleep(1)  # tcpdump writes what it received before the stop
            finally:
                dump.send_signal(signal.SIGINT)
                dump_err = dump.communicate(timeout=10)[1]
            cli.run(["curl", "-sk", "-o", "/dev/null", "-o", "/dev/null", "--http2", *resolve, f"{tls}/f100", f"{tls}/nope"], timeout=30)
            cli.run(["curl", "-sk", "-o", "/dev/null", "--http2", *resolve, f"{tls}/big"], timeout=30)
            cli.run(["h2load", "-n", "40", "-c", "2", "-m", "5", f"https://{srv.ip}:{H2_PORT}/f100"], timeout=60)
            time.sleep(1.5)
            rec.send_signal(signal.SIGINT)
            assert rec.wait(timeout=120) == 0, "".join(status)
        finally:
            if rec.poll() is None:
                rec.kill()
            grpc.terminate()
            master.terminate()
            master.wait(timeout=10)
        yield {
            "tape": flowtape.open(str(tape)), "tape_path": tape, "srv": srv,
            "h2c_log": access_log(lab.workdir, name="access-h2c.log"), "h2_log": access_log(lab.workdir, name="access-h2.log"),
            "grpc_log": [json.loads(line) for line in grpc_log.read_text().splitlines()],
            "pcap": pcap, "dump_err": dump_err, "status": "".join(status),
        }


def _rows(tape, query: str) -> list[dict]:
    return tape.sql(query).pl().to_dicts()


def _by_conn_log(log):
    out = defaultdict(Counter)
    for x in log:
        out[x["remote_port"]][(x["request_method"], x["request_uri"], x["status"])] += 1
    return dict(out)


def _by_conn_rows(rows):
    out = defaultdict(Counter)
    for x in rows:
        out[x["client_port"]][(x["method"], x["path"], x["status"])] += 1
    return dict(out)


@pytest.mark.parametrize("port,log", [(H2C_PORT, "h2c_log"), (H2_PORT, "h2_log")], ids=["h2c", "h2-tls"])
@pytest.mark.parametrize("side", ["server", "client"])
def test_rows_equal_nginx_access_log_per_connection(recording, port, log, side):
    r = recording
    want = _by_conn_log(r[log])
    assert sum(sum(c.values()) for c in want.values()) == (4 + 60 if port == H2C_PORT else 3 + 40)
    rows = _rows(r["tape"], f"select * from http where server_port = {port} and side = '{side}'")
    assert _by_conn_rows(rows) == want
    assert {x["http_version"] for x in rows} == {"HTTP/2"} and {x["tls"] for x in rows} == {port == H2_PORT}
    assert {x["comm"] for x in rows} == ({"nginx"} if side == "server" else {"curl", "h2load"})
    assert all(x["stream_id"] % 2 == 1 and x["headers_partial"] is False for x in rows)
    assert all(x["latency_ns"] > 0 and x["response_bytes"] > 0 for x in rows)


def test_grpc_rows_equal_the_servers_call_log(recording):
    r = recording
    want = Counter((x["method"], x["code"]) for x in r["grpc_log"])
    assert sum(want.values()) == 5 * ROUNDS
    for side in ("server", "client"):
        rows = _rows(r["tape"], f"select * from http where server_port = {GRPC_PORT} and side = '{side}'")
        got = Counter()
        for x in rows:
            code = grpc_status_name(x["grpc_status"])
            if code is None and x["stream_error"] == "CANCEL":
                code = "DEADLINE_EXCEEDED"  # the client reset the call at its deadline before the server's trailers
            got[(f"/{x['grpc_service']}/{x['grpc_method']}", code)] += 1
        assert got == want, side
        assert {x["path"] for x in rows} == {m for m, _ in want}
        (msg,) = {x["grpc_message"] for x in rows if x["grpc_method"] == "Missing"}
        assert msg == "no such key: k1"


def test_tshark_sees_the_same_h2c_streams(recording):
    r = recording
    # an oracle that missed packets is no oracle (tcpdump says how many the kernel dropped)
    counts = dict((what, int(n)) for n, what in re.findall(r"^(\d+) packets? (captured|received by filter|dropped by kernel)", r["dump_err"], re.M))
    assert counts["dropped by kernel"] == 0 and counts["captured"] == counts["received by filter"], r["dump_err"]
    out = subprocess.run(["tshark", "-n", "-r", str(r["pcap"]), "-d", f"tcp.port=={H2C_PORT},http2", "-d", f"tcp.port=={GRPC_PORT},http2",
                          "-Y", "http2.headers.status", "-T", "json", "--no-duplicate-keys", "-J", "tcp http2"],
                         check=True, capture_output=True, text=True).stdout
    seen = Counter()
    for pkt in json.loads(out):
        layers = pkt["_source"]["layers"]
        h2 = layers["http2"]
        for item in (h2 if isinstance(h2, list) else [h2]):
            frames = item["http2.stream"]
            for f in (frames if isinstance(frames, list) else [frames]):
                hs = f.get("http2.header", [])
                for h in (hs if isinstance(hs, list) else [hs]):
                    if h.get("http2.header.name") == ":status":
                        seen[(int(layers["tcp"]["tcp.dstport"]), int(f["http2.streamid"]), int(h["http2.header.value"]))] += 1
    rows = _rows(r["tape"], f"select client_port, stream_id, status from http where side = 'server' and server_port in ({H2C_PORT}, {GRPC_PORT}) and status is not null")
    # (a set: tshark shows a HEADERS frame again in each packet of a PDU it reassembled)
    assert Counter((x["client_port"], x["stream_id"], x["status"]) for x in rows) == Counter(set(seen))
    # every h2c stream has a status but the gRPC deadline ones, whose server may or may not answer before the client's reset
    assert 4 + 60 + 4 * ROUNDS <= len(rows) <= 4 + 60 + 5 * ROUNDS


def test_nothing_lost_and_http2_counted(recording):
    m = json.loads((recording["tape_path"] / "manifest.json").read_text())
    lost = {k: v for k, v in m["lost"]["lab-node"].items() if "http2" in k and v}
    assert lost == {}, lost
    notes = m["extra"]["l7_decode_notes"]
    # h2c connections once on the wire (4 curl, 2 h2load, 1 gRPC channel); TLS ones from each end's plaintext
    assert notes["http2_connections"] == 7 + 2 * (2 + 2), notes
    assert notes["http2_headers_partial"] == 0 and notes["http2_mid_connection"] == 0
