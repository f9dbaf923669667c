"""capture.live.gobin on real Go binaries (built here by Debian's go): version, crypto/tls entries
and RETs from .gopclntab, stripped or not, against the symbol table and objdump; and every kind
of binary that must be skipped, with its reason."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from flowtape.capture.live.gobin import FUNCS, GOROUTINE_FUNCS, NotProbeable, inspect
from flowtape.capture.live.gotls import GOROUTINE_PROGRAMS, PROGRAMS, GoTlsAttacher, defines_openssl
from gobuild import go_build, go_version


@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    d = tmp_path_factory.mktemp("gobin")
    return {"server": go_build("server.go", d / "server"), "stripped": go_build("server.go", d / "server-stripped", stripped=True),
            "hello": go_build("hello.go", d / "hello"), "chain": go_build("chainsvc.go", d / "chain-stripped", stripped=True), "dir": d}


def _nm(path) -> dict[str, int]:
    out = subprocess.run(["nm", str(path)], capture_output=True, text=True, check=True).stdout
    return {parts[2]: int(parts[0], 16) for parts in (ln.split(None, 2) for ln in out.splitlines()) if len(parts) == 3}


def _objdump_rets(path, start: int, end: int) -> list[int]:
    out = subprocess.run(["objdump", "-d", f"--start-address={start:#x}", f"--stop-address={end:#x}", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return [int(m.group(1), 16) for m in re.finditer(r"^\s*([0-9a-f]+):\s+(?:[0-9a-f]{2} )+\s*ret\b", out, re.M)]


def test_entries_and_returns_match_the_symbol_table_and_objdump(bins):
    if shutil.which("objdump") is None:
        pytest.fail("objdump (binutils) is needed to check the RET addresses")
    b = inspect(bins["server"])
    assert b.version == go_version()
    syms = _nm(bins["server"])
    assert set(b.funcs) == set(FUNCS) | {"runtime.newproc1"}  # a server only: the linker left net/http's client out
    for name, f in b.funcs.items():
        assert f.entry == syms[name]
        assert f.entry < f.end
        assert f.returns == _objdump_rets(bins["server"], f.entry, f.end)
        assert len(f.returns) >= (1 if name in GOROUTINE_FUNCS else 2)


def test_a_stripped_binary_gives_the_same_addresses(bins):
    assert _nm_fails(bins["stripped"])  # really stripped: no symbol table left
    full, stripped = inspect(bins["server"]), inspect(bins["stripped"])
    assert stripped.version == full.version
    assert {n: (f.entry, f.end, f.returns) for n, f in stripped.funcs.items()} == {n: (f.entry, f.end, f.returns) for n, f in full.funcs.items()}


def _nm_fails(path) -> bool:
    r = subprocess.run(["nm", str(path)], capture_output=True, text=True)
    return r.returncode != 0 or "no symbols" in r.stderr


def _reason(path) -> str:
    with pytest.raises(NotProbeable) as e:
        inspect(path)
    return e.value.reason


def test_binaries_that_cannot_be_probed_say_why(bins, tmp_path):
    assert _reason(bins["hello"]) == "no_crypto_tls"
    # for its goroutines the same binary is probeable: newproc1 and no crypto/tls function
    g = inspect(bins["hello"], goroutines=True)
    assert not g.tls and "runtime.newproc1" in g.funcs and not any(f.startswith("crypto/tls.") for f in g.funcs)
    assert inspect(bins["server"], goroutines=True).tls
    assert _reason("/bin/ls") == "not_go"
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00garbage" * 1000)
    assert _reason(junk) == "not_elf"
    assert _reason(tmp_path / "missing") == "unreadable"
    # Go before 1.17 passes arguments on the stack: the same binary claiming go1.16 is refused
    data = bins["server"].read_bytes()
    v = go_version().encode()
    old = tmp_path / "old"
    old.write_bytes(data.replace(v, (b"go1.16." + b"9" * len(v))[: len(v)]))
    assert _reason(old) == "go_too_old"
    cut = tmp_path / "cut"
    cut.write_bytes(data[: len(data) // 3])  # the section headers (at the end) are gone
    assert _reason(cut) in ("not_elf", "unreadable")


def test_static_openssl_is_told_from_an_imported_one(bins):
    assert not defines_openssl("/usr/bin/curl")  # imports SSL_write from libssl.so.3
    assert not defines_openssl(str(bins["server"]))
    node = shutil.which("node")
    if node is not None and subprocess.run(["nm", "-D", node], capture_output=True, text=True).stdout.count(" T SSL_write\n"):
        assert defines_openssl(node)  # Node.js with OpenSSL linked in


class FakeTable(dict):
    """A bcc table keyed and valued by ctypes integers, kept as plain ints."""

    def __getitem__(self, key):
        import ctypes

        return ctypes.c_int64(dict.__getitem__(self, key.value))

    def __setitem__(self, key, value):
        dict.__setitem__(self, key.value, value.value)


class FakeBpf:
    """Records attach_uprobe calls; `fail_on` makes the attach of that binary raise, as the kernel
    does when the process's /proc/PID/exe vanished meanwhile."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[tuple[str, int, str]] = []
        self.fail_on = fail_on
        self.tables: dict[bytes, FakeTable] = {}

    def __getitem__(self, name: bytes) -> FakeTable:
        return self.tables.setdefault(name, FakeTable())

    def attach_uprobe(self, name: bytes, addr: int, fn_name: bytes) -> None:
        if self.fail_on and self.fail_on in name.decode():
            raise Exception("Failed to attach BPF to uprobe")
        self.calls.append((name.decode(), addr, fn_name.decode()))


def _proc(root, pid: int, exe) -> None:
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    if (d / "exe").is_symlink():
        (d / "exe").unlink()
    (d / "exe").symlink_to(exe)


def test_the_process_scan_attaches_each_binary_once_and_counts_the_rest(bins, tmp_path):
    proc = tmp_path / "proc"
    _proc(proc, 101, bins["stripped"])
    _proc(proc, 102, bins["stripped"])  # a second process of the same binary: no new uprobes
    _proc(proc, 103, bins["hello"])
    _proc(proc, 104, "/bin/ls")
    logged: list[str] = []
    bpf = FakeBpf()
    a = GoTlsAttacher(bpf, logged.append, proc=proc)
    new = a.scan()
    b = inspect(bins["stripped"])
    expected = [(str(proc / "101" / "exe"), b.funcs[name].entry, enter) for name, (enter, _) in PROGRAMS.items()]
    assert new == [str(bins["stripped"])]
    assert [c for c in bpf.calls if c[2].endswith("_enter")] == expected
    assert len(bpf.calls) == 2 + len(b.funcs["crypto/tls.(*Conn).Read"].returns) == a.uprobes  # Write: its entry only
    assert a.skipped == {"no_crypto_tls": 1, "not_go": 1}
    assert len(logged) == 1 and "no_crypto_tls" not in logged[0] and "without crypto/tls" in logged[0]
    assert a.scan() == []  # nothing new: nothing looked at again
    assert a.manifest()["functions"] == list(PROGRAMS)
    # the binary replaced on disk (a new file at the same path) is looked at again
    replaced = tmp_path / "gosrv"
    replaced.write_bytes(bins["server"].read_bytes())
    replaced.chmod(0o755)
    _proc(proc, 105, replaced)
    assert a.scan() == [str(replaced)]
    assert a.manifest()["binaries"] == {str(bins["stripped"]): go_version(), str(replaced): go_version()}


def test_a_process_gone_while_its_probes_attach_is_counted_and_the_scan_goes_on(bins, tmp_path):
    proc = tmp_path / "proc"
    _proc(proc, 201, bins["stripped"])
    _proc(proc, 202, bins["server"])
    logged: list[str] = []
    a = GoTlsAttacher(FakeBpf(fail_on="/201/"), logged.append, proc=proc)
    assert a.scan() == [str(bins["server"])]
    assert a.skipped == {"attach_failed": 1}
    assert any("uprobes not attached" in m for m in logged)


def test_the_goroutine_probes_go_where_the_functions_are(bins, tmp_path):
    """With goroutines on, runtime.newproc1 (entry and RETs) and net/http's persistConn roundTrip
    (entry) and writeLoop (entry and RETs) get their programs too, found in a stripped binary that
    has net/http's client; a binary without the client gets the others."""
    proc = tmp_path / "proc"
    _proc(proc, 101, bins["chain"])
    _proc(proc, 102, bins["stripped"])
    bpf = FakeBpf()
    a = GoTlsAttacher(bpf, proc=proc, goroutines=True)
    assert a.scan() == [str(bins["chain"]), str(bins["stripped"])]
    b = inspect(bins["chain"])
    assert set(b.funcs) == set(FUNCS) | set(GOROUTINE_FUNCS)
    assert b.spawn is not None
    server = inspect(bins["stripped"])
    assert [c[1] for c in bpf.calls if c[0].endswith("/102/exe") and c[2] == "ft_go_spawn_site"] == [server.spawn.addr]
    assert not [c for c in bpf.calls if c[0].endswith("/102/exe") and "loop" in c[2]]
    bpf.calls = [c for c in bpf.calls if c[0].endswith("/101/exe")]
    calls = {}
    for _, addr, fn in bpf.calls:
        calls.setdefault(fn, []).append(addr)
    assert calls["ft_go_spawn_site"] == [b.spawn.addr] and "ft_go_newproc_enter" not in calls  # one trap per spawn
    assert bpf.tables[b"ft_go_spawn_slots"] == {b.spawn.addr: b.spawn.creator_sp, server.spawn.addr: server.spawn.creator_sp}
    assert a.spawn_sites == 2
    assert calls["ft_go_roundtrip_enter"] == [b.funcs["net/http.(*persistConn).roundTrip"].entry]
    assert "ft_go_roundtrip_return" not in calls
    assert calls["ft_go_writeloop_return"] == b.funcs["net/http.(*persistConn).writeLoop"].returns
    assert a.manifest()["functions"] == list(PROGRAMS) + list(GOROUTINE_PROGRAMS)


def _objdump_lines(path, sym: str) -> list[str]:
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(path)], capture_output=True, text=True, check=True).stdout
    body = out.split(f"<{sym}>:\n", 1)[1].split("\n\n", 1)[0]
    return [ln for ln in body.splitlines() if ln.strip()]


def test_the_spawn_site_is_after_newproc1s_call_and_the_creator_slot_is_its_rbx_spill(bins):
    """Against objdump (AT&T syntax, its own decoder): the instruction after runtime.newproc.func1's
    `call runtime.newproc1`, and the slot newproc1's prologue stores %rbx to, seen from RSP after the RET."""
    b = inspect(bins["server"])
    func1 = _objdump_lines(bins["server"], "runtime.newproc.func1")
    at = next(k for k, ln in enumerate(func1) if re.search(r"call\s+[0-9a-f]+ <runtime\.newproc1>", ln))
    assert b.spawn.addr == int(func1[at + 1].split(":")[0], 16)
    prologue = _objdump_lines(bins["server"], "runtime.newproc1")[:12]
    frame = next(int(m.group(1), 16) for ln in prologue if (m := re.search(r"sub\s+\$0x([0-9a-f]+),%rsp", ln)))
    spill = next(int(m.group(1), 16) for ln in prologue if (m := re.search(r"mov\s+%rbx,0x([0-9a-f]+)\(%rsp\)", ln)))
    assert b.spawn.creator_sp == spill - frame - 8
    assert inspect(bins["stripped"]).spawn == b.spawn


def test_without_a_spawn_site_newproc1_gets_its_entry_and_returns(bins, tmp_path, monkeypatch):
    """The fallback: a binary whose pattern was not found, and one whose site address another binary
    holds with another slot (the kernel map is keyed by address), get newproc1's entry + RET pair."""
    from flowtape.capture.live import gotls

    proc = tmp_path / "proc"
    _proc(proc, 301, bins["stripped"])
    real = inspect(bins["stripped"])
    for spawn, slots in ((None, {}), (real.spawn, {real.spawn.addr: real.spawn.creator_sp - 8})):
        bpf = FakeBpf()
        bpf.tables[b"ft_go_spawn_slots"] = FakeTable(slots)
        monkeypatch.setattr(gotls, "inspect", lambda exe, s=spawn, goroutines=False: type(real)(real.path, real.version, real.funcs, s))
        a = GoTlsAttacher(bpf, proc=proc, goroutines=True)
        a.scan()
        fns = [c[2] for c in bpf.calls]
        assert "ft_go_spawn_site" not in fns and a.spawn_sites == 0
        assert fns.count("ft_go_newproc_enter") == 1 and fns.count("ft_go_newproc_return") == len(real.funcs["runtime.newproc1"].returns)
