"""bcc loading helpers and host checks shared by the probes.

Everything here either works or raises a FlowtapeError with one line that says what is
missing and how to fix it. Programs are attached with BPF links (bpf(BPF_LINK_CREATE)):
the kernel detaches them when the recorder's file descriptors close, so a recorder killed
with SIGKILL leaves no program behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import struct
import subprocess
from pathlib import Path
from typing import Any, Iterator

from ...errors import PermissionDenied, Unsupported
from ..decode.addresses import IpText, ip_text  # noqa: F401  (the probes' readers use them as ebpf.*)

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
if not (BPF_DIR / "events.h").exists():  # installed (non-editable): flowtape/bpf is package data
    import flowtape.bpf as _bpf_pkg

    BPF_DIR = Path(_bpf_pkg.__file__).resolve().parent

INSTALL_HINT = "sudo apt-get install -y bpfcc-tools python3-bpfcc libbpfcc linux-headers-amd64 && sudo scripts/setup-host.sh .venv"

# bpf(2) numbers (uapi/linux/bpf.h): stable, so spelled out rather than parsed from headers.
_SYS_BPF = 321  # x86_64
BPF_LINK_CREATE = 28
BPF_CGROUP_SOCK_OPS = 3
BPF_CGROUP_INET4_GETPEERNAME = 29
BPF_CGROUP_INET6_GETPEERNAME = 30
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
BPF_F_BEFORE = 1 << 3  # with no relative program: attach first

_CAP_NET_ADMIN, _CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF = 12, 21, 38, 39


# --- privileges and host --------------------------------------------------------------------


def effective_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_privileges() -> None:
    """Loading programs needs root, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN (tracepoints, TC)."""
    caps = effective_caps()
    have = lambda c: bool(caps & (1 << c))  # noqa: E731
    if have(_CAP_SYS_ADMIN) or (have(_CAP_BPF) and have(_CAP_PERFMON) and have(_CAP_NET_ADMIN)):
        return
    raise PermissionDenied("recording needs root (or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN): run it with sudo")


def import_bcc() -> Any:
    """The `bcc` module (Debian's python3-bpfcc; the PyPI package named bcc is unrelated)."""
    try:
        import bcc  # type: ignore[import-not-found]
    except ImportError:
        raise Unsupported(f"bcc is not importable from this Python; install it with: {INSTALL_HINT}") from None
    if not hasattr(bcc, "BPF"):
        raise Unsupported(f"the `bcc` module found is not BPF Compiler Collection's ({bcc.__file__}); install it with: {INSTALL_HINT}")
    return bcc


def kernel_headers() -> Path:
    """Where bcc will find kernel headers: $BCC_KERNEL_SOURCE, else /lib/modules/$(uname -r)/build."""
    override = os.environ.get("BCC_KERNEL_SOURCE")
    if override:
        p = Path(override)
        if (p / "include").is_dir():
            return p
        raise Unsupported(f"BCC_KERNEL_SOURCE={override} has no include/ folder; point it at a linux-headers tree (e.g. /usr/src/linux-headers-$(uname -r))")
    build = Path("/lib/modules") / os.uname().release / "build"
    if (build / "include").is_dir():
        return build
    raise Unsupported(
        f"kernel headers not found at {build}: install linux-headers-amd64 and run scripts/setup-host.sh "
        "(it links them), or set BCC_KERNEL_SOURCE=/usr/src/linux-headers-<version>"
    )


def tracefs() -> Path:
    """The tracefs events folder bcc uses, mounting debugfs/tracefs when they are missing."""
    events = Path("/sys/kernel/debug/tracing/events")
    if events.is_dir():
        return events
    for fstype, where in (("debugfs", "/sys/kernel/debug"), ("tracefs", "/sys/kernel/debug/tracing")):
        if not Path(where, "events" if fstype == "tracefs" else "tracing").exists():
            subprocess.run(["mount", "-t", fstype, fstype, where], capture_output=True)
    if events.is_dir():
        return events
    raise Unsupported("tracefs is not mounted at /sys/kernel/debug/tracing and could not be mounted (mount -t tracefs tracefs /sys/kernel/debug/tracing)")


def tracepoint_exists(category: str, event: str) -> bool:
    return (tracefs() / category / event / "format").exists()


def cgroup2_root() -> Path | None:
    """Mount point of the cgroup v2 hierarchy (/sys/fs/cgroup or /sys/fs/cgroup/unified), or None."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1].replace("\\040", " "))
    return None


# --- program text ---------------------------------------------------------------------------


def render_source(filename: str, defines: dict[str, int | str | None]) -> str:
    """The final C for one probe family: its #defines, then the file with events.h inlined.

    Every knob is a #define at the top (a `None` value is written as a comment saying it is
    off), so `--print-bpf` shows exactly what was compiled.
    """
    header = (BPF_DIR / "events.h").read_text()
    body = (BPF_DIR / filename).read_text().replace('#include "events.h"', header)
    lines = [f"/* flowtape: {filename}, as loaded */"]
    for name, value in defines.items():
        lines.append(f"/* {name} off */" if value is None else f"#define {name} {value}")
    return "\n".join(lines) + "\n" + body


def compile_bpf(text: str) -> Any:
    """Compile with bcc; a compile failure becomes one line naming the first error."""
    bcc = import_bcc()
    kernel_headers()
    tracefs()
    try:
        return bcc.BPF(text=text.encode())
    except Exception as e:  # bcc raises plain Exception with the clang output
        msg = str(e)
        m = re.search(r"error: (.*)", msg)
        raise Unsupported(f"the kernel refused or bcc could not compile our eBPF program: {(m.group(1) if m else msg.splitlines()[0])[:200]}") from None


MADV_PAGEOUT = 21  # Linux 5.4+: reclaim the pages now, contents kept (a later touch reads them back)


def release_startup_memory() -> dict[str, int]:
    """Give back what starting up left resident and the recorder does not use, once every program is
    loaded.

    bcc compiles in-process: clang and LLVM touch ~85 MiB of their own code and leave ~35 MiB of
    freed heap behind. Importing touches far more of the libraries than recording uses: pyarrow's
    67 MiB resident after `import pyarrow.parquet, pyarrow.compute` is 18 MiB once it has written a
    few row groups (measured by paging it out and writing), numpy's 10 MiB and the CLI's polars and
    duckdb (imported for the analysis commands; the writer uses polars a little) ~45 MiB more. malloc_trim returns the heap's free
    pages; MADV_PAGEOUT on every file-backed mapping reclaims their resident pages (safe on any
    mapping: unlike MADV_DONTNEED it never discards contents, so relocated data stays, and anonymous
    memory is left alone), and what the recorder runs reads its pages back on the first touch: the
    RSS from then on is the working set. The kernel skips pages another process maps too (a second
    bcc user on the node keeps LLVM's shared pages resident). Returns what was done, for the log."""
    out = {"trimmed": 0, "paged_out": 0}
    try:
        out["trimmed"] = int(_libc.malloc_trim(0))  # 1 if memory was released (glibc)
    except AttributeError:  # not glibc
        pass
    # files only: not the heap, anonymous memory, [vdso], the BPF maps' anon_inode mappings, devices
    out["paged_out"] = _page_out(lambda path: path.startswith("/") and not path.startswith("/dev/") and not path.endswith("(deleted)"))
    return out


# Code the recorder never runs once its programs are loaded: the compiler (Go binaries found later are
# attached to programs loaded at the start, nothing is compiled again) and duckdb (imported with the CLI
# for the analysis commands). Not polars: flowtape/conform.py builds Arrow from row dicts with it.
_UNUSED_LIBS = ("/libLLVM", "/libclang", "/_duckdb")


def release_unused_libraries() -> int:
    """MADV_PAGEOUT on the libraries the running recorder never uses, again: the kernel skipped the
    pages another process mapped too when release_startup_memory ran (other bcc users map libLLVM),
    and they become ours alone when that process exits. Cheap (a read of /proc/self/maps and a few
    madvise calls), so the recorder repeats it every RELEASE_EVERY_S. The heap's free pages go back
    too (malloc_trim): every rotation's Arrow buffers come from malloc under the recorder's system
    pool (flowtape/__init__.py), and glibc keeps what they freed at the top of its arenas otherwise.
    Returns the bytes advised."""
    try:
        _libc.malloc_trim(0)
    except AttributeError:  # not glibc
        pass
    return _page_out(lambda path: any(lib in path for lib in _UNUSED_LIBS))


def _page_out(select: Any) -> int:
    madvise = _libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return 0
    advised = 0
    for line in maps:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not select(fields[5]):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if madvise(start, end - start, MADV_PAGEOUT) == 0:
            advised += end - start
    return advised


# --- attaching --------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def link_create(prog_fd: int, target_fd: int, attach_type: int, flags: int = 0) -> int:
    """bpf(BPF_LINK_CREATE): returns a link fd; closing it (or dying) detaches the program."""
    attr = struct.pack("<IIII", prog_fd, target_fd, attach_type, flags) + bytes(48)
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = _libc.syscall(_SYS_BPF, BPF_LINK_CREATE, buf, len(attr))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def attach_tcx(prog_fd: int, ifindex: int, egress: bool) -> int:
    try:
        # At the front of the hook's chain: a program before ours (Cilium's, say) may redirect or
        # drop a packet, and then we would never see it. Ours only look (they return TCX_NEXT).
        return link_create(prog_fd, ifindex, BPF_TCX_EGRESS if egress else BPF_TCX_INGRESS, BPF_F_BEFORE)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise Unsupported(f"this kernel cannot attach TC programs with tcx links ({e.strerror}; needs Linux 6.6+): the flows table will be missing") from None
        raise


def attach_tc_pair(ingress_fd: int, egress_fd: int, iface: Any) -> list[int]:
    """Links for the hooks an interface of the plan counts on (flows.Iface): none, one or both."""
    links = []
    try:
        if iface.count_ingress:
            links.append(attach_tcx(ingress_fd, iface.ifindex, egress=False))
        if iface.count_egress:
            links.append(attach_tcx(egress_fd, iface.ifindex, egress=True))
    except BaseException:
        for fd in links:
            os.close(fd)
        raise
    return links


def attach_cgroup(prog_fd: int, cgroup: Path, attach_type: int) -> int:
    """A link attaching a cgroup program (sock_ops, sock_addr hooks) to `cgroup` and below."""
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return link_create(prog_fd, fd, attach_type)
    finally:
        os.close(fd)


def kernel_at_least(major: int, minor: int) -> bool:
    """The running kernel's version (uname release, e.g. 6.18.44-...) is major.minor or later."""
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= (major, minor)


@contextlib.contextmanager
def run_time_stats() -> Iterator[None]:
    """kernel.bpf_stats_enabled=1 for the block: programs count their runs and run time (read by
    prog_stats). It costs two clock reads per program run, so only for measuring."""
    path = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = path.read_text().strip()
    path.write_text("1")
    try:
        yield
    finally:
        path.write_text(before)


def prog_stats(prog_fd: int) -> dict[str, int]:
    """run_cnt and run_time_ns of a loaded program (non-zero only with kernel.bpf_stats_enabled=1)."""
    out = {"run_cnt": 0, "run_time_ns": 0}
    try:
        for line in Path(f"/proc/self/fdinfo/{prog_fd}").read_text().splitlines():
            k, _, v = line.partition(":")
            if k.strip() in out:
                out[k.strip()] = int(v)
    except OSError:
        pass
    return out


# --- decoding -------------------------------------------------------------------------------


class CommText:
    """A task's comm (bpf_get_current_comm's 16 bytes) as text, with a bounded cache: events
    repeat the same few process names."""

    def __init__(self, limit: int = 10_000):
        self._cache: dict[bytes, str] = {}
        self._limit = limit

    def __call__(self, raw: bytes) -> str:
        text = self._cache.get(raw)
        if text is None:
            if len(self._cache) > self._limit:
                self._cache.clear()
            text = self._cache[raw] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        return text


def percpu_counters(table: Any, names: dict[int, str]) -> dict[str, int]:
    """A per-CPU array of counters, summed over the CPUs and named."""
    return {names[k.value]: int(sum(per_cpu)) for k, per_cpu in table.items()}


def release(links: dict[int, list[int]], bpf: Any) -> None:
    """Close every BPF link (the kernel detaches them) and free the bcc module."""
    for fds in links.values():
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
    links.clear()
    if bpf is not None:
        bpf.cleanup()


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in bytes(raw[:6]))


def ktime_to_wall(offset_ns: int):
    """Converter from bpf_ktime_get_ns() (CLOCK_MONOTONIC) to wall-clock ns."""
    return lambda t: int(t) + offset_ns
