"""ebpf.release_startup_memory: once the programs are loaded, the resident pages of the process's file
mappings (libraries' code touched by compiling and importing) are given back (MADV_PAGEOUT) and read
back intact when touched again; anonymous memory stays, and so do pages another process maps too
(the kernel skips them: why a second bcc user on the node keeps LLVM's shared pages resident)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from ebpf_support import skip_or_fail

# the resident KiB of one mapped file, as /proc/self/smaps counts it: both child scripts need it
RSS_KIB = textwrap.dedent("""
    def rss_kib(path):
        rss, current = 0, None
        for line in open("/proc/self/smaps"):
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and all(c in "0123456789abcdef-" for c in head[0]):
                current = head[5] if len(head) > 5 else ""
            elif line.startswith("Rss:") and current == path:
                rss += int(head[1])
        return rss
""")

SCRIPT = RSS_KIB + textwrap.dedent("""
    import mmap, os, sys, time
    from flowtape.capture.live import ebpf

    CONTENT = bytes(range(256)) * (8 << 12)  # 8 MiB
    maps = {}
    for name in ("libalone-fake.so", "libshared-fake.so"):  # mapped by this process only / by a second one too
        path = os.path.join(sys.argv[1], name)
        with open(path, "wb") as f:
            f.write(CONTENT)
        f = open(path, "rb")
        m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
        sum(m[i] for i in range(0, len(m), 4096))  # touch every page: resident
        maps[name] = (path, m)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # the second process: maps the shared file, touches it, waits
        try:
            with open(maps["libshared-fake.so"][0], "rb") as f:
                m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
            sum(m[i] for i in range(0, len(m), 4096))
            os.write(w, b"1")
            time.sleep(60)
        finally:
            os._exit(0)  # without the byte the parent's read returns empty: the test fails, it does not hang
    os.close(w)
    assert os.read(r, 1) == b"1", "the second process could not map the file"
    anon = mmap.mmap(-1, 8 << 20)
    anon[:] = CONTENT  # anonymous memory, written: resident
    before = {n: rss_kib(p) for n, (p, _) in maps.items()}
    done = ebpf.release_startup_memory()
    after = {n: rss_kib(p) for n, (p, _) in maps.items()}
    os.kill(child, 9)
    os.waitpid(child, 0)
    intact = maps["libalone-fake.so"][1][:] == CONTENT and anon[:] == CONTENT
    print(before["libalone-fake.so"], after["libalone-fake.so"], before["libshared-fake.so"], after["libshared-fake.so"],
          done["paged_out"], intact)
""")


def test_file_pages_are_given_back_and_read_back_intact(tmp_path):
    if tuple(int(x) for x in os.uname().release.split(".")[:2]) < (5, 4):
        skip_or_fail("MADV_PAGEOUT needs Linux 5.4+")
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    alone_before, alone_after, shared_before, shared_after, paged_out, intact = r.stdout.split()
    assert int(paged_out) >= 16 << 20  # both fake libraries (and the interpreter's own) were advised
    assert int(alone_before) >= 8 * 1024 - 64  # the whole file was resident
    assert int(alone_after) < int(alone_before) // 4  # and most of it is given back
    assert int(shared_after) >= int(shared_before) - 64  # pages another process maps stay
    assert intact == "True"  # file pages read back with their contents; anonymous memory untouched


UNUSED = RSS_KIB + textwrap.dedent("""
    import mmap, os, sys
    from flowtape.capture.live import ebpf

    maps = {}
    for name in ("libLLVM-fake.so", "libother-fake.so"):  # the compiler's name, and a library the recorder runs
        path = os.path.join(sys.argv[1], name)
        with open(path, "wb") as f:
            f.write(bytes(range(256)) * (8 << 12))
        f = open(path, "rb")
        m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
        sum(m[i] for i in range(0, len(m), 4096))
        maps[name] = (path, m)
    before = {n: rss_kib(p) for n, (p, _) in maps.items()}
    advised = ebpf.release_unused_libraries()
    after = {n: rss_kib(p) for n, (p, _) in maps.items()}
    print(before["libLLVM-fake.so"], after["libLLVM-fake.so"], before["libother-fake.so"], after["libother-fake.so"], advised)
""")


def test_the_repeated_release_pages_out_the_unused_libraries_only(tmp_path):
    """What the recorder repeats every RELEASE_EVERY_S: the compiler's pages (once no other process
    shares them), never those of the libraries it runs (they would only be read back)."""
    if tuple(int(x) for x in os.uname().release.split(".")[:2]) < (5, 4):
        skip_or_fail("MADV_PAGEOUT needs Linux 5.4+")
    r = subprocess.run([sys.executable, "-c", UNUSED, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    llvm_before, llvm_after, other_before, other_after, advised = (int(x) for x in r.stdout.split())
    assert advised >= 8 << 20
    assert llvm_before >= 8 * 1024 - 64 and llvm_after < llvm_before // 4
    assert other_after >= other_before - 64


POOL = "import flowtape, pyarrow as pa; print(pa.default_memory_pool().backend_name)"


def _pool(argv: list[str], **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"} | env
    r = subprocess.run([sys.executable, "-c", POOL, *argv], capture_output=True, text=True, timeout=60, env=environ)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_the_recorder_allocates_arrow_from_malloc_and_the_analysis_keeps_mimalloc():
    # `python -c CODE record` has sys.argv == ["-c", "record"]: what `flowtape record` sees
    assert _pool(["record"]) == "system"  # mimalloc kept 50-60 MiB more of what rotations freed
    assert _pool(["report"]) == "mimalloc"
    assert _pool([]) == "mimalloc"
    assert _pool(["record"], ARROW_DEFAULT_MEMORY_POOL="mimalloc") == "mimalloc"  # the user's choice stands
