"""Who owns a server socket accepted without asking for the peer address (libuv does this).

accept() with a sockaddr buffer is attributed in the kernel (ft_peers); accept(fd, NULL, NULL)
only by the opt-in send/recv fallback (`flowtape record --owner-fallback`), which costs a program run
on every send and recv. Root and bcc needed; loopback only.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import flowtape
from ebpf_support import ebpf_host, require_ebpf  # noqa: F401  (fixture)

pytestmark = [pytest.mark.ebpf, require_ebpf()]

FLOWTAPE = str(Path(sys.executable).with_name("flowtape"))
_libc = ctypes.CDLL(None, use_errno=True)


def _exchange(with_address: bool) -> tuple[int, int]:
    """One connection on loopback, accepted with or without a peer address; returns the ports."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    if with_address:
        conn, _ = srv.accept()
        fd = conn.detach()
    else:
        fd = _libc.accept(srv.fileno(), None, None)
        assert fd >= 0, os.strerror(ctypes.get_errno())
    cli.sendall(b"ping")
    assert os.read(fd, 4) == b"ping"
    os.write(fd, b"pong")
    assert cli.recv(4) == b"pong"
    ports = srv.getsockname()[1], cli.getsockname()[1]
    cli.close()
    os.close(fd)
    srv.close()
    return ports


def _record(tmp_path: Path, fallback: bool) -> tuple[object, list[tuple[int, int, bool]]]:
    tape = tmp_path / f"owner-{int(fallback)}.tape"
    argv = [FLOWTAPE, "record", "-o", str(tape), "--probes", "connections", *(["--owner-fallback"] if fallback else [])]
    rec = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        while "recording to" not in (line := rec.stderr.readline()):
            assert line, rec.stderr.read()
        threading.Thread(target=lambda: [None for _ in rec.stderr], daemon=True).start()
        done = [(*_exchange(addr), addr) for addr in (True, False)]
        time.sleep(1.5)  # past the tracker's grace period for late events
        rec.send_signal(signal.SIGINT)
        assert rec.wait(timeout=60) == 0
    finally:
        if rec.poll() is None:
            rec.kill()
    return flowtape.open(str(tape)), done


def _server_pid(tape, server_port: int, client_port: int):
    rows = tape.sql(f"select pid, comm from connections where role = 'server' and server_port = {server_port} "
                    f"and client_port = {client_port}").pl().to_dicts()
    assert len(rows) == 1, rows
    return rows[0]["pid"]


@pytest.mark.parametrize("fallback", [False, True])
def test_server_owner_with_and_without_peer_address(tmp_path, fallback):
    tape, done = _record(tmp_path, fallback)
    for server_port, client_port, with_address in done:
        pid = _server_pid(tape, server_port, client_port)
        if with_address or fallback:
            assert pid == os.getpid()
        else:
            assert pid is None  # documented: only the opt-in fallback attributes these
    # the owner comes from the cgroup getpeername hooks that accept() runs, with no syscall
    # tracepoint (those would slow every syscall on the node)
    manifest = json.loads((Path(tape.path) / "manifest.json").read_text())
    assert manifest["probes"]["connections"]["server_owner"] == "cgroup getpeername hooks (accept)"
    programs = manifest["extra"]["bpf_programs"]
    assert {"ft_getpeername4", "ft_getpeername6"} <= set(programs) and not any("syscalls" in p for p in programs), programs
