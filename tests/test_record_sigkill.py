"""A recorder killed with SIGKILL leaves a tape that opens; verify reports the cut."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import flowtape
from ebpf_support import ebpf_host, require_ebpf  # noqa: F401  (fixture)
from netlab import Lab

pytestmark = [pytest.mark.ebpf, require_ebpf()]

FLOWTAPE = str(Path(sys.executable).with_name("flowtape"))

UDP_SENDER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while True:
    s.sendto(b"k" * 100, (sys.argv[1], 9))
    time.sleep(0.01)
"""


def test_sigkill_keeps_rotated_parts_and_verify_reports_the_cut(tmp_path):
    tape = tmp_path / "killed.tape"
    with Lab() as lab:
        a, b = lab.add_host("a"), lab.add_host("b")
        rec = subprocess.Popen([FLOWTAPE, "record", "-o", str(tape), "--interfaces", lab.bridge, "--flow-interval", "0.2", "--rotate", "0.5"],
                               stderr=subprocess.PIPE, text=True)
        sender = None
        try:
            assert "recording to" in rec.stderr.readline()
            sender = a.popen([sys.executable, "-c", UDP_SENDER, b.ip])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # until at least one part is finished and listed
                m = json.loads((tape / "manifest.json").read_text())
                if any(f["table"] == "flows" for f in m["files"].values()):
                    break
                time.sleep(0.1)
            time.sleep(0.3)
            rec.send_signal(signal.SIGKILL)
            assert rec.wait(timeout=10) == -signal.SIGKILL
        finally:
            if sender is not None:
                sender.kill()
                sender.wait()
            if rec.poll() is None:
                rec.kill()

        t = flowtape.open(str(tape))
        assert any("not closed cleanly" in str(p) for p in t.problems)
        n = t.sql(f"select sum(packets)::bigint n from flows where src_ip = '{a.ip}' and dst_ip = '{b.ip}'").pl()["n"][0]
        assert n and n > 0
        v = subprocess.run([FLOWTAPE, "verify", str(tape)], capture_output=True, text=True)
        assert "not closed cleanly" in v.stderr
        # the programs died with the recorder (BPF links): a new recording starts cleanly
        again = subprocess.run([FLOWTAPE, "record", "-o", str(tmp_path / "again.tape"), "--interfaces", lab.bridge, "--duration", "1"],
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
