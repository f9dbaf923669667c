"""Long HTTP bodies are skipped in the kernel, and sizes stay exact (root, real nginx and curl).

Once user space has parsed a head announcing a long Content-Length body, it tells bpf/l7.c
where that body ends and the kernel stops sending the body's segments (capture/live/l7.py,
L7Decoder.skip_body). Until it has (user space behind), the kernel sheds body bytes when the
ring is over half full: segments that do not start a head go out with their length only.
Before both, a 200 MB download was ~65k ring-buffer events and overflowed the ring, losing
other flows' events with it. Oracle: nginx's access log ($bytes_sent,
$request_length: head and body bytes of each exchange), per connection and in order.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from ebpf_support import ebpf_host, require_ebpf  # noqa: F401  (fixture)
from netlab import Lab, access_log, recorder, start_nginx_l7

import flowtape

pytestmark = [pytest.mark.ebpf, require_ebpf()]

BIG = 48 * 1024 * 1024


@pytest.fixture(scope="module")
def recording(ebpf_host, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("bodies")
    with Lab() as lab:
        srv, cli = lab.add_host("srv"), lab.add_host("cli")
        www = lab.www({"f100": b"x" * 100, "big": os.urandom(1 << 20) * (BIG >> 20)})
        upload = lab.workdir / "upload.bin"
        upload.write_bytes(os.urandom(1 << 20) * (BIG >> 20))
        master, _ = start_nginx_l7(srv, www)
        tape = work / "bodies.tape"
        try:
            with recorder(["-o", str(tape), "--interfaces", lab.bridge, "--probes", "connections,l7", "--no-k8s"]) as rec:
                base = f"http://{srv.ip}"
                # one connection: a long body, a short one, a long one again (keep-alive reuses it)
                cli.run(["curl", "-sf", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null", f"{base}/big", f"{base}/f100", f"{base}/big"], timeout=120)
                # a long request body, then a short request on the same connection
                sent = cli.run(["curl", "-sf", "-o", "/dev/null", "-w", "%{size_request} %{size_upload}\\n", "--data-binary", f"@{upload}", f"{base}/upload",
                                "--next", "-sf", "-o", "/dev/null", "-w", "%{size_request} %{size_upload}\\n", f"{base}/f100"], timeout=120).stdout.decode()
                # the recorder frozen (as if far behind) during a long download on a new connection:
                # nobody tells the kernel to skip, the ring fills past half, body segments go out
                # without their bytes (shed), and nothing is lost
                rec.send_signal(signal.SIGSTOP)
                try:
                    cli.run(["curl", "-sf", "-o", "/dev/null", f"{base}/big"], timeout=120)
                finally:
                    rec.send_signal(signal.SIGCONT)
                time.sleep(1.5)  # past the recorder's grace period for rows
        finally:
            master.terminate()
            master.wait()
        yield {"tape": flowtape.open(str(tape)), "manifest": json.loads((tape / "manifest.json").read_text()), "log": access_log(lab.workdir),
               "curl_sent": [sum(map(int, line.split())) for line in sent.splitlines()]}


def test_sizes_equal_what_nginx_and_curl_counted(recording):
    """Response sizes against nginx's $bytes_sent; request sizes against nginx's $request_length,
    except where nginx discarded the body (`return 200` does not count it): there against what
    curl sent (%{size_request} + %{size_upload})."""
    log = sorted(recording["log"], key=lambda x: (x["connection"], x["connection_requests"]))
    assert [(x["request_method"], x["request_uri"], x["status"]) for x in log] == [
        ("GET", "/big", 200), ("GET", "/f100", 200), ("GET", "/big", 200), ("POST", "/upload", 200), ("GET", "/f100", 200), ("GET", "/big", 200)]
    rows = recording["tape"].sql("select method, path, status, request_bytes, response_bytes, client_port from http "
                                 "where side = 'server' order by ts_request").pl().to_dicts()
    got = [(r["method"], r["path"], r["status"], r["request_bytes"], r["response_bytes"], r["client_port"]) for r in rows]
    want = [(x["request_method"], x["request_uri"], x["status"], x["request_length"], x["bytes_sent"], x["remote_port"]) for x in log]
    want[3:5] = [(*w[:3], sent, *w[4:]) for w, sent in zip(want[3:5], recording["curl_sent"])]
    assert recording["curl_sent"][1] == log[4]["request_length"]  # the two oracles agree where both count
    assert got == want
    assert want[0][4] > BIG and want[3][3] > BIG and want[5][4] > BIG  # the long bodies are in those sizes


def test_long_bodies_were_skipped_or_shed_and_nothing_was_lost(recording):
    m = recording["manifest"]
    lost = m["lost"][next(iter(m["lost"]))]
    assert lost["l7.ringbuf_full"] == 0 and lost["http_desync"] == 0 and lost["http_orphan_responses"] == 0, lost
    assert lost["l7.http_segments_shed"] > 0, lost  # the frozen recorder's download
    notes = m["extra"]["l7_decode_notes"]
    # two downloads and one upload while the recorder ran; the frozen one's request comes late
    assert notes["http_bodies_skipped_in_kernel"] >= 3, notes
    client_rows = recording["tape"].sql("select count(*) n from http where side = 'client'").pl()["n"][0]
    assert client_rows == 6
