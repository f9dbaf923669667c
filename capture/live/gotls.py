"""HTTPS inside executables: find, among the running processes, the binaries whose TLS no shared
libssl uprobe sees, and attach bpf/l7.c's uprobes to each, once per binary (uprobes follow the
file, so later processes of the same binary are covered too; a binary replaced on disk is a new
file, found again):
- Go programs (crypto/tls is linked in): the Go TLS uprobes (capture.live.gobin finds where);
- executables that define SSL_write and SSL_read themselves (OpenSSL linked statically, as in
  Node.js builds): the OpenSSL uprobes, as for libssl (`on_openssl`).

Processes are found in /proc at start and about every second (each new pid is looked at once).
A Go binary that cannot be probed (Go before 1.17, no crypto/tls, unreadable) is skipped with
one log line and counted: the manifest's `probes.l7.go_tls`.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from elftools.common.exceptions import ELFError
from elftools.construct.core import ConstructError  # pyelftools' parse errors on a cut file
from elftools.elf.elffile import ELFFile

from .gobin import NotProbeable, inspect

PROC = Path("/proc")
PROGRAMS = {  # function -> (entry program, return program or None: Write is sent at its entry, see bpf/l7.c)
    "crypto/tls.(*Conn).Write": ("ft_go_write_enter", None),
    "crypto/tls.(*Conn).Read": ("ft_go_read_enter", "ft_go_read_return"),
}
# The goroutine probes (bpf/l7.c FT_HAVE_GOROUTINES: http.goroutine, go_spawns), on the binaries that have them
GOROUTINE_PROGRAMS = {
    "runtime.newproc1": ("ft_go_newproc_enter", "ft_go_newproc_return"),
    "net/http.(*persistConn).roundTrip": ("ft_go_roundtrip_enter", None),
    "net/http.(*persistConn).writeLoop": ("ft_go_writeloop_enter", "ft_go_writeloop_return"),
}
SPAWN_PROGRAM = "ft_go_spawn_site"  # instead of newproc1's pair where the binary has a spawn site


@dataclass
class GoTlsAttacher:
    """Attaches the Go TLS uprobes of a loaded bpf/l7.c (`bpf`) to every Go binary it finds."""

    bpf: Any
    log: Callable[[str], None] = lambda _msg: None
    on_openssl: Callable[[str, str], bool] | None = None  # (exe, path) of a static OpenSSL binary -> attached
    on_bio_pids: Callable[[set[int]], None] | None = None  # the pids running such a binary, after each scan
    proc: Path = PROC
    goroutines: bool = False  # also attach GOROUTINE_PROGRAMS (the loaded C has them)
    attached: dict[str, str] = field(default_factory=dict)  # binary path -> Go version
    goroutines_only: dict[str, str] = field(default_factory=dict)  # the same, for binaries without crypto/tls
    skipped: collections.Counter = field(default_factory=collections.Counter)  # reason -> binaries
    uprobes: int = 0
    spawn_sites: int = 0  # binaries whose spawns cost one uprobe (capture.live.gobin.spawn_site), not newproc1's entry + RETs
    _files: set[tuple[int, int]] = field(default_factory=set)  # (st_dev, st_ino) of binaries looked at
    _openssl_files: set[tuple[int, int]] = field(default_factory=set)  # those with OpenSSL linked in
    _pids: set[int] = field(default_factory=set)
    _bio_pids: set[int] = field(default_factory=set)

    def seen_files(self, paths: list[str]) -> None:
        """Binaries not to look at again (attached otherwise)."""
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue
            self._files.add((st.st_dev, st.st_ino))

    def scan(self) -> list[str]:
        """Look at processes not seen before; returns the binaries newly attached."""
        new = []
        try:
            pids = sorted(int(d.name) for d in self.proc.iterdir() if d.name.isdigit())
        except OSError:
            return new
        self._pids &= set(pids)  # forget exited pids (pids are reused)
        bio = self._bio_pids & self._pids
        for pid in pids:
            if pid in self._pids or pid == os.getpid():
                continue
            self._pids.add(pid)
            exe = self.proc / str(pid) / "exe"
            try:
                st = exe.stat()
                path = os.readlink(exe)
            except OSError:
                continue  # a kernel thread, or the process exited
            file = (st.st_dev, st.st_ino)
            if file not in self._files:
                self._files.add(file)
                if self._attach(str(exe), path, file):
                    new.append(path)
            if file in self._openssl_files:
                bio.add(pid)
        if bio != self._bio_pids and self.on_bio_pids is not None:
            self.on_bio_pids(bio)
        self._bio_pids = bio
        return new

    def _attach(self, exe: str, path: str, file: tuple[int, int]) -> bool:
        try:
            b = inspect(exe, goroutines=self.goroutines)
        except NotProbeable as e:
            if e.reason in ("not_go", "not_elf"):  # most processes are not Go: that is no news
                if e.reason == "not_go" and self.on_openssl is not None and defines_openssl(exe):
                    if not self.on_openssl(exe, path):
                        return False
                    self._openssl_files.add(file)  # memory BIOs (Node.js): see bpf/l7.c's ft_bio_pids
                    return True
                self.skipped[e.reason] += 1
                return False
            self.skipped[e.reason] += 1
            self.log(f"Go TLS: {path}: skipped: {e}")
            return False
        done = 0
        programs = {**PROGRAMS, **(GOROUTINE_PROGRAMS if self.goroutines else {})}
        try:
            for name, (enter, ret) in programs.items():
                f = b.funcs.get(name)
                if f is None:
                    continue  # a goroutine function the binary does not have (no net/http client)
                if name == "runtime.newproc1" and self._spawn_slot(b):
                    self.bpf.attach_uprobe(name=exe.encode(), addr=b.spawn.addr, fn_name=SPAWN_PROGRAM.encode())
                    done += 1
                    self.spawn_sites += 1
                    continue
                self.bpf.attach_uprobe(name=exe.encode(), addr=f.entry, fn_name=enter.encode())
                done += 1
                for addr in f.returns if ret else ():
                    self.bpf.attach_uprobe(name=exe.encode(), addr=addr, fn_name=ret.encode())
                    done += 1
        except Exception as e:  # the process exited (its /proc/PID/exe is gone) or the kernel refused
            self.skipped["attach_failed"] += 1
            self.log(f"Go TLS: {path}: uprobes not attached ({type(e).__name__}: {str(e)[:120]})")
            return False
        finally:
            self.uprobes += done
        (self.attached if b.tls else self.goroutines_only)[path] = b.version
        return True

    def _spawn_slot(self, b: Any) -> bool:
        """Register the binary's spawn site (address -> creator slot) for ft_go_spawn_site; False (use
        newproc1's entry and RETs) without one, or when another binary has the same address with
        another slot (the map is keyed by address)."""
        if b.spawn is None:
            return False
        import ctypes

        table = self.bpf[b"ft_go_spawn_slots"]
        key = ctypes.c_uint64(b.spawn.addr)
        try:
            known = table[key].value
        except KeyError:
            table[key] = ctypes.c_int64(b.spawn.creator_sp)
            return True
        return known == b.spawn.creator_sp

    def manifest(self) -> dict[str, Any]:
        return {"binaries": dict(sorted(self.attached.items())), "goroutines_only": dict(sorted(self.goroutines_only.items())),
                "uprobes": self.uprobes, "spawn_sites": self.spawn_sites, "skipped": dict(sorted(self.skipped.items())),
                "functions": list(PROGRAMS) + (list(GOROUTINE_PROGRAMS) if self.goroutines else []),
                "go_versions": "Go >= 1.17 on amd64 (register ABI); tested with 1.19"}


def defines_openssl(exe: str) -> bool:
    """The executable defines SSL_write and SSL_read in its dynamic symbols (OpenSSL or a fork
    linked in statically), rather than importing them from a shared libssl."""
    try:
        with open(exe, "rb") as fh:
            dynsym = ELFFile(fh).get_section_by_name(".dynsym")
            if dynsym is None:
                return False
            found = set()
            for sym in dynsym.iter_symbols():
                if sym.name in ("SSL_write", "SSL_read") and sym["st_shndx"] != "SHN_UNDEF":
                    found.add(sym.name)
            return len(found) == 2
    except (OSError, ELFError, ConstructError):
        return False
