"""Go binaries: is it Go, which version, and where crypto/tls.(*Conn).Read/Write (and the functions
the goroutine probes need: GOROUTINE_FUNCS) start and return.

Everything is read from the ELF file, never from DWARF or a symbol table: `.gopclntab` (the
runtime's own function table, kept by `-ldflags='-s -w'`) gives every function's name and entry,
the next function's entry bounds it, and capstone disassembles it to find each RET (uprobes go
there, never uretprobes: Go moves goroutine stacks and a uretprobe's trampoline corrupts them),
and the instruction after runtime.newproc.func1's CALL of runtime.newproc1 (`spawn_site`: one
uprobe per `go` statement instead of two).
The version comes from `.go.buildinfo`. Supported: Go >= 1.17 on amd64 (the register ABI the
probes read: RAX, RBX, RCX, and R14 = g); pclntab formats of Go 1.16-1.17 (0xfffffffa),
1.18-1.19 (0xfffffff0) and 1.20+ (0xfffffff1). Tested with Debian's Go 1.19.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.construct.core import ConstructError  # pyelftools' parse errors on a cut file
from elftools.elf.elffile import ELFFile

FUNCS = ("crypto/tls.(*Conn).Write", "crypto/tls.(*Conn).Read")
# For http.goroutine and go_spawns (bpf/l7.c FT_HAVE_GOROUTINES), where present: goroutine creation,
# and net/http's client hand-over of a request from the caller's goroutine to its connection's writer.
GOROUTINE_FUNCS = ("runtime.newproc1", "net/http.(*persistConn).roundTrip", "net/http.(*persistConn).writeLoop")
# Where runtime.newproc1 is called from: the closure `newproc` runs on the system stack (spawn_site).
SPAWN_CALLERS = ("runtime.newproc.func1",)
BUILDINFO_MAGIC = b"\xff Go buildinf:"
PCLN_MAGICS = {0xFFFFFFFA: "1.16", 0xFFFFFFF0: "1.18", 0xFFFFFFF1: "1.20"}
MIN_VERSION = (1, 17)


class NotProbeable(Exception):
    """The binary cannot be probed; `reason` is one of REASONS (a manifest counter)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


REASONS = ("not_elf", "not_go", "go_too_old", "no_crypto_tls", "not_amd64", "unreadable")


@dataclass
class GoFunc:
    name: str
    entry: int  # virtual address
    end: int  # the next function's entry
    returns: list[int] = field(default_factory=list)  # virtual addresses of RET instructions


@dataclass
class GoBinary:
    path: str
    version: str  # "go1.19.8"
    funcs: dict[str, GoFunc]  # FUNCS, and those of GOROUTINE_FUNCS the binary has
    spawn: SpawnSite | None = None  # one uprobe per `go` statement instead of newproc1's entry + RETs
    tls: bool = True  # has crypto/tls (FUNCS); False: a binary inspected for its goroutines only


@dataclass
class SpawnSite:
    """The instruction right after `CALL runtime.newproc1` in runtime.newproc.func1: there RAX is the new
    g, and the creator (newproc1's callergp argument, RBX at its entry) is still in the stack slot
    newproc1's prologue spilled it to, at RSP + creator_sp (below RSP once newproc1 returned: nothing
    runs on that thread's system stack between the RET and the probed instruction)."""

    addr: int  # virtual address of the instruction after the CALL
    creator_sp: int  # the spill slot relative to RSP at `addr` (negative: newproc1's dead frame)


def _version_tuple(v: str) -> tuple[int, int]:
    m = re.match(r"go(\d+)\.(\d+)", v)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _read_vaddr(elf: ELFFile, addr: int, n: int) -> bytes:
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= addr < seg["p_vaddr"] + seg["p_filesz"]:
            off = addr - seg["p_vaddr"] + seg["p_offset"]
            elf.stream.seek(off)
            return elf.stream.read(n)
    return b""


def _uvarint(b: bytes, i: int) -> tuple[int, int]:
    x = shift = 0
    while i < len(b):
        c = b[i]
        i += 1
        x |= (c & 0x7F) << shift
        if c < 0x80:
            return x, i
        shift += 7
    raise ValueError("truncated varint")


def go_version(elf: ELFFile) -> str | None:
    """The Go version the binary was built with, from `.go.buildinfo` (None: not a Go binary)."""
    sec = elf.get_section_by_name(".go.buildinfo")
    if sec is None:
        return None
    data = sec.data()
    if not data.startswith(BUILDINFO_MAGIC) or len(data) < 32:
        return None
    ptr_size, flags = data[14], data[15]
    if flags & 2:  # Go 1.18+: the strings follow the header, length-prefixed
        n, i = _uvarint(data, 32)
        return data[i:i + n].decode(errors="replace")
    # older: a pointer to a Go string header (pointer, length)
    fmt = "<Q" if ptr_size == 8 else "<I"
    (hdr,) = struct.unpack_from(fmt, data, 16)
    raw = _read_vaddr(elf, hdr, 2 * ptr_size)
    if len(raw) < 2 * ptr_size:
        return None
    ptr, n = struct.unpack("<QQ" if ptr_size == 8 else "<II", raw)
    return _read_vaddr(elf, ptr, n).decode(errors="replace") or None


def pclntab_funcs(elf: ELFFile, wanted: tuple[str, ...]) -> dict[str, GoFunc]:
    """Entries and ends of the functions named in `wanted`, from `.gopclntab`."""
    sec = elf.get_section_by_name(".gopclntab")
    if sec is None:
        raise NotProbeable("not_go", "no .gopclntab section")
    tab = sec.data()
    magic, _, _, _min_lc, ptr = struct.unpack_from("<IBBBB", tab, 0)
    fmt = PCLN_MAGICS.get(magic)
    if fmt is None or ptr != 8:
        raise NotProbeable("go_too_old", f"pclntab magic {magic:#x} (pointer size {ptr}) is not one of Go 1.16+ on a 64-bit target")
    if fmt == "1.16":
        nfunc, _nfiles, nameoff, _cu, _file, _pc, pclnoff = struct.unpack_from("<7Q", tab, 8)
        text_start = 0
    else:
        nfunc, _nfiles, text_start, nameoff, _cu, _file, _pc, pclnoff = struct.unpack_from("<8Q", tab, 8)
    names = tab[nameoff:]
    pcln = tab[pclnoff:]
    want = set(wanted)
    entries: list[tuple[int, int]] = []  # (entry, funcoff) for nfunc + 1 (the end sentinel)
    if fmt == "1.16":
        for i in range(nfunc + 1):
            entry, funcoff = struct.unpack_from("<QQ", pcln, 16 * i)
            entries.append((entry, funcoff))
    else:
        for i in range(nfunc + 1):
            entryoff, funcoff = struct.unpack_from("<II", pcln, 8 * i)
            entries.append((text_start + entryoff, funcoff))
    out: dict[str, GoFunc] = {}
    for i in range(nfunc):
        entry, funcoff = entries[i]
        name_at = 8 if fmt == "1.16" else 4  # _func: entry (uintptr or uint32 offset), then nameOff int32
        (name_off,) = struct.unpack_from("<i", pcln, funcoff + name_at)
        end = names.find(b"\0", name_off)
        name = names[name_off:end].decode(errors="replace")
        if name in want:
            out[name] = GoFunc(name, entry, entries[i + 1][0])
            if len(out) == len(want):
                break
    return out


def ret_addresses(elf: ELFFile, f: GoFunc) -> list[int]:
    """Virtual addresses of every RET in [entry, end): capstone walks the instructions in order
    (a byte scan for 0xc3 would also hit immediates and ModRM bytes)."""
    import capstone

    code = _read_vaddr(elf, f.entry, f.end - f.entry)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = True  # padding (int3) between functions does not stop the walk
    return [ins.address for ins in md.disasm(code, f.entry) if ins.mnemonic == "ret"]


_RSP_SLOT = re.compile(r"\[rsp(?: \+ (0x[0-9a-f]+|\d+))?\]")


def _slot(op_str: str) -> int | None:
    m = _RSP_SLOT.search(op_str)
    return None if m is None else int(m.group(1) or "0", 0)


def creator_slot(elf: ELFFile, newproc1: GoFunc) -> int | None:
    """Where newproc1 keeps its callergp argument, relative to its caller's RSP after the RET: the
    prologue's `mov [rsp + O], rbx` (after `sub rsp, F` and maybe `push rbp`), taken only when RBX is
    untouched before it and no other instruction of newproc1 writes that slot or takes its address
    (Go's stack allocator may share a slot among values whose lives do not overlap). None otherwise."""
    import capstone

    code = _read_vaddr(elf, newproc1.entry, newproc1.end - newproc1.entry)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = True
    ins = list(md.disasm(code, newproc1.entry))
    depth = 8  # the return address
    spill = None
    for k, i in enumerate(ins[:24]):
        if i.mnemonic in ("call", "ret") or i.mnemonic.startswith("j") and i.mnemonic not in ("jbe", "jb", "ja", "jae"):
            return None
        if i.mnemonic == "push":
            depth += 8
        elif i.mnemonic == "sub" and i.op_str.startswith("rsp, "):
            depth += int(i.op_str.split(", ")[1], 0)
        elif i.mnemonic == "mov" and re.fullmatch(r"qword ptr \[rsp(?: \+ 0x[0-9a-f]+)?\], rbx", i.op_str):
            spill = (k, _slot(i.op_str))
            break
        elif re.match(r"[re]?bx\b|bl\b|bh\b", i.op_str) and i.mnemonic not in ("cmp", "test"):
            return None  # RBX changed before the spill
    if spill is None:
        return None
    k, off = spill
    for j, i in enumerate(ins):
        if j == k or _slot(i.op_str) != off:
            continue
        dst_is_mem = i.op_str.split(", ")[0].endswith("]")
        if i.mnemonic == "lea" or (dst_is_mem and i.mnemonic not in ("cmp", "test")):
            return None  # written again (or the slot's address taken): the value may not survive
    return off - depth


def spawn_site(elf: ELFFile, caller: GoFunc, newproc1: GoFunc) -> SpawnSite | None:
    """The instruction after the one `CALL runtime.newproc1` in `caller` (runtime.newproc.func1), or None
    when the pattern is not there (no such call, several, or no readable creator slot)."""
    import capstone

    slot = creator_slot(elf, newproc1)
    if slot is None:
        return None
    code = _read_vaddr(elf, caller.entry, caller.end - caller.entry)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = True
    after = [i.address + i.size for i in md.disasm(code, caller.entry)
             if i.mnemonic == "call" and i.op_str.startswith("0x") and int(i.op_str, 16) == newproc1.entry]
    if len(after) != 1 or not caller.entry < after[0] < caller.end:
        return None
    return SpawnSite(after[0], slot)


def inspect(path: str | Path, goroutines: bool = False) -> GoBinary:
    """A Go binary's version and the crypto/tls functions to probe (NotProbeable otherwise).
    goroutines: a binary without crypto/tls is still probeable for its goroutines (a plain-HTTP
    Go service: its rows link by goroutine as a TLS one's do); its `tls` is False then."""
    try:
        with open(path, "rb") as fh:
            try:
                elf = ELFFile(fh)
            except ELFError as e:
                raise NotProbeable("not_elf", f"not an ELF file ({e})") from None
            if elf["e_machine"] != "EM_X86_64":
                raise NotProbeable("not_amd64", f"machine {elf['e_machine']}: only amd64 Go binaries are probed")
            version = go_version(elf)
            if version is None:
                raise NotProbeable("not_go", "no Go build info")
            if _version_tuple(version) < MIN_VERSION:
                raise NotProbeable("go_too_old", f"{version}: before Go 1.17 arguments are on the stack (register ABI needed)")
            funcs = pclntab_funcs(elf, FUNCS + GOROUTINE_FUNCS + SPAWN_CALLERS)
            callers = [funcs.pop(n) for n in SPAWN_CALLERS if n in funcs]
            tls = all(f in funcs for f in FUNCS)
            if not tls:
                if not goroutines or "runtime.newproc1" not in funcs:
                    raise NotProbeable("no_crypto_tls", f"{version} binary without crypto/tls")
                for f in FUNCS:  # half of crypto/tls (a linker's dead-code pass): neither is probed
                    funcs.pop(f, None)
            for f in funcs.values():
                f.returns = ret_addresses(elf, f)
                if not f.returns:
                    raise NotProbeable("unreadable", f"{f.name}: no RET instruction found")
            spawn = None
            if "runtime.newproc1" in funcs and elf["e_type"] == "ET_EXEC":  # the probe keys the slot by address: not PIE
                spawn = next((s for s in (spawn_site(elf, c, funcs["runtime.newproc1"]) for c in callers) if s), None)
            return GoBinary(str(path), version, funcs, spawn, tls)
    except OSError as e:
        raise NotProbeable("unreadable", f"cannot read ({e.strerror})") from None
    except (struct.error, ValueError, IndexError, ConstructError, ELFError) as e:
        raise NotProbeable("unreadable", f"malformed Go tables ({e})") from None
