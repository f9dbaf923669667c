"""The capture people run today, as a benchmark arm: `tcpdump -i IFACE -w FILE -s SNAPLEN` over the same
load as the recorder's arm, and what the recorder's arm reports beside it (bytes on disk, memory).

Used by bench_l7.py and bench_record.py. One arm = one load run with the capture tool running:
its CPU time (user and system, from /proc) over the load, what it lost (tcpdump's "packets dropped
by kernel" at exit), the bytes it wrote (the pcap file; for the recorder, the tape folder after it
closed, Parquet compression included) and, for the recorder, its resident memory after start and
its peak (VmRSS, VmHWM).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

SNAPLENS = (256, 0)  # the forensic compromise, and full packets (tcpdump's -s 0 = 262144)


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a running process (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (the peak so far) of a running process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def smaps_mib(pid: int) -> dict[str, float]:
    """RSS, PSS (shared pages divided among the processes mapping them) and USS (pages only this process
    maps) of a running process, in MiB, from /proc/PID/smaps_rollup. A library another process maps too
    (libLLVM of a second bcc user) counts whole in RSS, shared in PSS, not at all in USS."""
    out = {"rss": 0.0, "pss": 0.0, "uss": 0.0}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        kib = int(value.split()[0])
        if key == "Rss":
            out["rss"] = kib / 1024
        elif key == "Pss":
            out["pss"] = kib / 1024
        elif key in ("Private_Clean", "Private_Dirty"):
            out["uss"] += kib / 1024
    return out


def smaps_breakdown(pid: int, top: int = 10) -> list[tuple[str, float, float]]:
    """The `top` largest resident parts of a running process, as (what, RSS MiB, USS MiB): each file
    mapping by its file name (a Python package's files by the package), [heap], [anon] (every other
    anonymous mapping: Python objects, Arrow's allocator, bcc's tables) and the BPF maps' mmaps."""
    parts: dict[str, list[float]] = {}
    cur: list[float] = [0.0, 0.0]
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
            name = head[5] if len(head) > 5 else "[anon]"
            m = re.search(r"(?:site|dist)-packages/([^/]+)", name)
            name = m.group(1) if m else re.sub(r"\.so[.0-9]*$", ".so", name.rsplit("/", 1)[-1]) if name.startswith("/") else name
            cur = parts.setdefault(name, [0.0, 0.0])
        elif head and head[0] == "Rss:":
            cur[0] += int(head[1]) / 1024
        elif head and head[0] in ("Private_Clean:", "Private_Dirty:"):
            cur[1] += int(head[1]) / 1024
    return [(name, round(r, 1), round(u, 1)) for name, (r, u) in sorted(parts.items(), key=lambda kv: -kv[1][0])[:top]]


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tcpdumped(interface: str, run: Callable[[], dict], workdir: Path, tag: str, snaplen: int) -> dict:
    """run() with `tcpdump -i interface -w FILE -s snaplen` capturing; run's result plus the capture's cost.

    tcpdump is run as an SRE runs it (buffered writes, the default kernel buffer), as root (-Z root: it
    would otherwise drop to the tcpdump user, which cannot write the bench's temporary folder)."""
    pcap = workdir / f"{tag}.pcap"
    p = subprocess.Popen(["tcpdump", "-i", interface, "-w", str(pcap), "-s", str(snaplen), "-Z", "root", "-n"],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    while "listening on" not in (line := p.stderr.readline()):
        if not line:
            raise SystemExit(f"tcpdump did not start: {p.stderr.read()}")
    time.sleep(0.3)
    u0, s0 = cpu_split(p.pid)
    result = run()
    time.sleep(0.5)  # what the load caused is in the kernel's buffer: let tcpdump write it
    u1, s1 = cpu_split(p.pid)
    p.send_signal(signal.SIGINT)
    err = p.stderr.read()
    if p.wait() != 0:
        raise SystemExit(f"tcpdump exited with {p.returncode}:\n{err[-2000:]}")
    dropped = re.search(r"(\d+) packets? dropped by kernel", err)
    captured = re.search(r"(\d+) packets? captured", err)
    result.update(cpu_user_s=u1 - u0, cpu_sys_s=s1 - s0, dropped=int(dropped.group(1)) if dropped else -1,
                  packets=int(captured.group(1)) if captured else -1, bytes=pcap.stat().st_size)
    pcap.unlink()
    return result


def per_request(arm: dict) -> dict:
    """The per-request figures of one arm (its `requests` counted by the load tool)."""
    n = max(arm["requests"], 1)
    return {"cpu_us": round(1e6 * (arm["cpu_user_s"] + arm["cpu_sys_s"]) / n, 2),
            "cpu_user_us": round(1e6 * arm["cpu_user_s"] / n, 2), "bytes": round(arm["bytes"] / n, 1)}
