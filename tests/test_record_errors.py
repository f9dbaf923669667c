"""Every user-caused failure of `flowtape record` is one line and an exit code (root needed)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import flowtape
from ebpf_support import ebpf_host, require_ebpf  # noqa: F401  (fixture)
from flowtape.capture.live import ebpf, recorder
from flowtape.errors import Exit

pytestmark = [pytest.mark.ebpf, require_ebpf()]

FLOWTAPE = str(Path(sys.executable).with_name("flowtape"))


def run_cli(args, env=None, prefix=(), python_code=None):
    argv = [*prefix, FLOWTAPE, *args] if python_code is None else [*prefix, sys.executable, "-c", python_code, *args]
    return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)


def one_error_line(p) -> str:
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("flowtape: error: "), lines[0]
    return lines[0]


def test_not_root(tmp_path):
    p = run_cli(["record", "-o", "/tmp/never.tape", "--duration", "1"], prefix=("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"))
    assert p.returncode == Exit.NO_PERMISSION
    assert "needs root" in one_error_line(p) and "CAP_BPF" in p.stderr


def test_bcc_not_importable(tmp_path):
    code = "import sys; sys.modules['bcc'] = None; from flowtape.cli import main; sys.exit(main(sys.argv[1:]))"
    p = run_cli(["record", "-o", str(tmp_path / "x.tape"), "--duration", "1"], python_code=code)
    assert p.returncode == Exit.UNSUPPORTED
    line = one_error_line(p)
    assert "bcc is not importable" in line and "apt-get install -y bpfcc-tools python3-bpfcc libbpfcc" in line
    assert not (tmp_path / "x.tape").exists()


def test_kernel_headers_not_found(tmp_path):
    p = run_cli(["record", "-o", str(tmp_path / "x.tape"), "--duration", "1"], env={"BCC_KERNEL_SOURCE": str(tmp_path / "no-headers")})
    assert p.returncode == Exit.UNSUPPORTED
    assert "BCC_KERNEL_SOURCE" in one_error_line(p)
    assert not (tmp_path / "x.tape").exists()


def test_output_directory_not_writable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        p = run_cli(["record", "-o", str(ro / "x.tape"), "--duration", "1"])
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    assert p.returncode == Exit.NO_PERMISSION
    assert "not writable" in one_error_line(p)


def test_unknown_probe_and_interface_are_usage_errors(tmp_path):
    p = run_cli(["record", "-o", str(tmp_path / "a.tape"), "--probes", "flows,dns"])
    assert p.returncode == Exit.USAGE and "unknown probe 'dns'" in one_error_line(p)
    p = run_cli(["record", "-o", str(tmp_path / "b.tape"), "--interfaces", "no-such-if0", "--probes", "flows"])
    assert p.returncode == Exit.USAGE and "no interface named 'no-such-if0'" in one_error_line(p)


def test_inject_trace_context_is_checked_before_anything_starts(tmp_path):
    p = run_cli(["record", "-o", str(tmp_path / "c.tape"), "--inject-trace-context", "tcp-option"])
    assert p.returncode == Exit.USAGE and "--inject-trace-context: 'tcp-option' is not a mode (use ip-option, or off)" in one_error_line(p)
    p = run_cli(["record", "-o", str(tmp_path / "d.tape"), "--inject-trace-context", "ip-option", "--probes", "flows,connections"])
    assert p.returncode == Exit.USAGE and "needs the l7 probe" in one_error_line(p)
    assert not (tmp_path / "c.tape").exists() and not (tmp_path / "d.tape").exists()


class Status(io.StringIO):
    """The recorder's status stream; `started` is set once it says it is recording."""

    def __init__(self):
        super().__init__()
        self.started = threading.Event()

    def write(self, s):
        if "recording to" in s:
            self.started.set()
        return super().write(s)


def _record_lo(tmp_path, status=None, seconds=1.5):
    status = status or Status()
    opts = recorder.RecordOptions(out=tmp_path / "t.tape", interfaces=["lo"], flow_interval=0.5, duration=seconds, node="n1")
    summary = recorder.Recorder(opts, status=status).run()
    return summary, status.getvalue()


def test_missing_tracepoint_is_named_and_the_rest_is_recorded(tmp_path, monkeypatch):
    real = ebpf.tracepoint_exists
    monkeypatch.setattr(ebpf, "tracepoint_exists", lambda c, e: False if (c, e) == ("sock", "inet_sock_set_state") else real(c, e))
    summary, status = _record_lo(tmp_path)
    warn = [l for l in status.splitlines() if l.startswith("flowtape: warning:")]
    assert len(warn) == 1 and "sock:inet_sock_set_state" in warn[0] and "connections table will be missing" in warn[0]
    m = json.loads((tmp_path / "t.tape" / "manifest.json").read_text())
    assert "flows" in m["probes"] and "connections" not in m["probes"]
    assert [g["source"] for g in m["gaps"]] == ["connections"]
    assert m["complete"]


def test_missing_optional_tracepoint_and_cgroup2_say_what_is_missing(tmp_path, monkeypatch):
    real = ebpf.tracepoint_exists
    monkeypatch.setattr(ebpf, "tracepoint_exists", lambda c, e: False if e.startswith("sock_") and e.endswith("_length") else real(c, e))
    monkeypatch.setattr(ebpf, "cgroup2_root", lambda: None)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    status = Status()

    def traffic():
        status.started.wait(60)
        c = socket.create_connection(srv.getsockname())
        s, _ = srv.accept()
        c.sendall(b"x" * 10)
        s.recv(10)
        c.close()
        s.close()

    t = threading.Thread(target=traffic)
    t.start()
    summary, status = _record_lo(tmp_path, status, seconds=2.5)
    t.join()
    srv.close()
    warn = [l for l in status.splitlines() if l.startswith("flowtape: warning:")]
    assert any("tracepoint sock:sock_recv_length" in w and "no pid/comm" in w for w in warn), warn
    assert any("cgroup v2 is not available" in w and "bytes" in w for w in warn), warn
    tape = flowtape.open(str(tmp_path / "t.tape"))
    rows = tape.sql(f"select role, pid, bytes_sent from connections where server_port = {port}").pl().to_dicts()
    assert sorted(r["role"] for r in rows) == ["client", "server"]
    assert all(r["pid"] == os.getpid() and r["bytes_sent"] is None for r in rows)


def test_disk_full_stops_cleanly_and_keeps_what_was_written(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(small)], check=True)
    try:
        rec = subprocess.Popen([FLOWTAPE, "record", "-o", str(small / "x.tape"), "--interfaces", "lo", "--probes", "flows",
                                "--flow-interval", "0.3", "--rotate", "0.5"], stderr=subprocess.PIPE, text=True)
        assert "recording to" in rec.stderr.readline()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        deadline = time.monotonic() + 60
        port = 1024
        while rec.poll() is None and time.monotonic() < deadline:
            for _ in range(100):  # many distinct flows: parts grow until the disk is full
                port = port + 1 if port < 60000 else 1024
                s.sendto(b"x", ("127.0.0.1", port))
            time.sleep(0.1)
        rc = rec.wait(timeout=30)
        err = rec.stderr.read().strip().splitlines()
        assert rc == Exit.DISK_FULL, err
        assert err[-1].startswith("flowtape: error: ") and "no space left on device" in err[-1]
        tape = flowtape.open(str(small / "x.tape"))  # still a tape: finished parts are readable
        assert tape.sql("select count(*) n from flows").pl()["n"][0] > 0
    finally:
        subprocess.run(["umount", "-l", str(small)], check=True)
