"""Both ways of naming a server socket's owner, on a real kernel (root + bcc needed).

The cgroup getpeername hooks (Linux 5.8+, the default) and the accept syscall tracepoints (the
fallback for older kernels, or without cgroup v2) must attribute an accepted socket to the
process that accepted it, not to whatever task the softirq that completed the handshake
interrupted. Over IPv4, IPv6 and an IPv4 client of a dual-stack listener (the peer address is
then IPv4-mapped). Loopback only; the probe is driven in-process, as the recorder drives it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
from ebpf_support import ebpf_host, require_ebpf  # noqa: F401  (fixture)

from flowtape.capture.live.connections import ConnectionProbe, ConnectionTracker

pytestmark = [pytest.mark.ebpf, require_ebpf()]


@pytest.mark.parametrize("via", ["auto", "accept-tracepoints"])
@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"), (socket.AF_INET6, "::ffff:127.0.0.1")],
                         ids=["ipv4", "ipv6", "ipv4-mapped"])
def test_accepting_thread_owns_the_server_socket(ebpf_host, via, family, host):  # noqa: F811
    probe = ConnectionProbe(server_owner_via=via, ringbuf_pages=64, sock_entries=4096, unowned_entries=4096)
    probe.check()
    probe.load()
    try:
        assert probe.server_owner == ("cgroup getpeername hooks (accept)" if via == "auto" else "accept syscall tracepoints")
        names = set(probe.programs())
        if via == "auto":
            assert {"ft_getpeername4", "ft_getpeername6"} <= names and not any("syscalls" in n for n in names)
        else:
            assert "tracepoint__syscalls__sys_exit_accept4" in names and "ft_getpeername4" not in names
        tracker = ConnectionTracker("t", lambda t: t)
        probe.open(tracker.feed)
        srv = socket.socket(family)
        if host.startswith("::ffff:"):
            srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # a dual-stack listener
        srv.bind(("::" if host.startswith("::ffff:") else host, 0))
        srv.listen()
        port = srv.getsockname()[1]

        def serve() -> None:  # another thread of this process accepts; this one connects
            conn, _ = srv.accept()
            conn.sendall(conn.recv(4))
            conn.close()

        t = threading.Thread(target=serve)
        t.start()
        cli = socket.create_connection((host.removeprefix("::ffff:"), port))
        cli.sendall(b"ping")
        assert cli.recv(4) == b"ping"
        cli.close()
        t.join(10)
        srv.close()
        time.sleep(0.2)
        probe.poll(0)
        rows = [r for r in tracker.take_rows(final=True) if r["server_port"] == port]
    finally:
        probe.close()
    comm = Path("/proc/self/comm").read_text().strip()
    assert sorted((r["role"], r["pid"], r["comm"]) for r in rows) == [("client", os.getpid(), comm), ("server", os.getpid(), comm)]
