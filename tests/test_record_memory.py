"""ebpf.release_compiler_memory: once the programs are loaded, the compiler libraries' resident pages are
given back (MADV_PAGEOUT) and nothing else's, and the pages read back intact when touched again."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import mmap, os, sys
    from flowtape.capture.live import ebpf

    def rss_kib(path):
        rss, current = 0, None
        for line in open("/proc/self/smaps"):
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and all(c in "0123456789abcdef-" for c in head[0]):
                current = head[5] if len(head) > 5 else ""
            elif line.startswith("Rss:") and current == path:
                rss += int(head[1])
        return rss

    maps = {}
    for name in ("libLLVM-fake.so", "libother-fake.so"):  # a compiler library's name, and any other file
        path = os.path.join(sys.argv[1], name)
        with open(path, "wb") as f:
            f.write(bytes(range(256)) * (8 << 12))  # 8 MiB
        f = open(path, "rb")
        m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
        sum(m[i] for i in range(0, len(m), 4096))  # touch every page: resident
        maps[name] = (path, m)
    before = {n: rss_kib(p) for n, (p, _) in maps.items()}
    done = ebpf.release_compiler_memory()
    after = {n: rss_kib(p) for n, (p, _) in maps.items()}
    path, m = maps["libLLVM-fake.so"]
    intact = m[:] == bytes(range(256)) * (8 << 12)
    print(before["libLLVM-fake.so"], after["libLLVM-fake.so"], before["libother-fake.so"], after["libother-fake.so"], done["paged_out"], intact)
""")


def test_compiler_pages_are_given_back_and_read_back_intact(tmp_path):
    if tuple(int(x) for x in os.uname().release.split(".")[:2]) < (5, 4):
        pytest.skip("MADV_PAGEOUT needs Linux 5.4+")
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    llvm_before, llvm_after, other_before, other_after, paged_out, intact = r.stdout.split()
    assert int(paged_out) >= 8 << 20  # at least the fake compiler library was advised
    assert int(llvm_before) >= 8 * 1024 - 64  # the whole file was resident
    assert int(llvm_after) < int(llvm_before) // 4  # and most of it is given back
    assert int(other_after) >= int(other_before) - 64  # another library's pages stay
    assert intact == "True"
