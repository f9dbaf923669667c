"""Shared gate for tests that load eBPF programs: skip where the host cannot, fail in CI.

An eBPF test may skip only when the host cannot run it (not root, bcc missing, no headers),
with the reason printed. Under CI=true the same condition is a failure: CI hosts are set up
by scripts/setup-host.sh, so a skip there would hide a broken setup.

Usage in a test module:
    from ebpf_support import require_ebpf
    pytestmark = [pytest.mark.ebpf, require_ebpf()]    # or call require_ebpf() in a fixture
"""

from __future__ import annotations

import os
import shutil

import pytest


def host_problem() -> str | None:
    """Why this host cannot run the recorder's eBPF tests, or None when it can."""
    from flowtape.capture.live import ebpf
    from flowtape.errors import FlowtapeError

    try:
        ebpf.check_privileges()
        ebpf.import_bcc()
        ebpf.kernel_headers()
        ebpf.tracefs()
    except FlowtapeError as e:
        return e.message
    for tool in ("ip", "tcpdump", "tshark", "nginx", "curl", "ethtool"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} is not installed (scripts/setup-host.sh installs it)"
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(problem: str) -> None:
    """Skip an eBPF test with the reason printed, or fail under CI=true."""
    if in_ci():
        pytest.fail(f"eBPF test cannot run on this CI host: {problem}", pytrace=False)
    pytest.skip(f"eBPF test skipped: {problem}")


def check_or_skip() -> None:
    """Call at the start of an eBPF test/fixture: skip (or fail under CI=true) when unsupported."""
    problem = host_problem()
    if problem is not None:
        skip_or_fail(problem)


@pytest.fixture(scope="session")
def ebpf_host() -> None:
    check_or_skip()


def require_ebpf():
    """A marker-like usefixtures entry for pytestmark."""
    return pytest.mark.usefixtures("ebpf_host")
