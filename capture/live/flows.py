"""The `flows` probe: TC programs (bpf/flows.c) counting packets per flow in the kernel.

User space only chooses interfaces, drains the counters every interval and turns them into
rows. `flow_rows` is a pure function so the decoding is tested without a kernel.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import ebpf
from .interfaces import Iface, TcAttachments

L4_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
PORTED = {6, 17, 132}
DIRECTIONS = {0: "ingress", 1: "egress"}
COUNTERS = {0: "flows.insert_failed", 1: "flows.not_ip", 2: "flows.truncated"}


def flow_rows(items: Iterable[tuple[Any, Any]], ifnames: dict[int, str], to_wall: Callable[[int], int]) -> dict[str, list]:
    """Columns (as lists) of `flows` rows from (flow key, flow_val) pairs: bcc ctypes or look-alikes
    with the fields of struct flow_key4/flow_key (family 4 when absent) and one CPU's flow_val.

    The same decoding as the recorder's drain (`flow_columns`), for tests and tools.
    """
    parts = []
    items = list(items)
    for family, width in ((4, 4), (6, 16)):
        sel = [(k, v) for k, v in items if getattr(k, "family", 4) == family]
        kd = np.dtype([("ifindex", "<u4"), ("direction", "u1"), ("ip_proto", "u1"), ("src_port", "<u2"), ("dst_port", "<u2"),
                       ("src_mac", "u1", (6,)), ("dst_mac", "u1", (6,)), ("src_ip", "u1", (width,)), ("dst_ip", "u1", (width,))])
        vd = np.dtype([("packets", "<u8"), ("bytes", "<u8"), ("first_ns", "<u8"), ("last_ns", "<u8"), ("tcp_flags", "<u2")])
        keys, vals = np.zeros(len(sel), kd), np.zeros((len(sel), 1), vd)
        for i, (k, v) in enumerate(sel):
            keys[i] = (k.ifindex, k.direction, k.ip_proto, k.src_port, k.dst_port, list(bytes(k.src_mac)[:6]), list(bytes(k.dst_mac)[:6]),
                       list(bytes(k.src_ip)[:width]), list(bytes(k.dst_ip)[:width]))
            vals[i, 0] = (v.packets, v.bytes, v.first_ns, v.last_ns, v.tcp_flags)
        parts.append((keys, vals, family))
    cols = flow_columns(parts, ifnames, int(to_wall(0)))
    return {n: c if isinstance(c, list) else c.to_pylist() for n, c in cols.items()}


# --- vectorised drain -------------------------------------------------------------------------


def _as_bytes(field: np.ndarray, width: int) -> pa.Array:
    """An (n, width) uint8 field as an Arrow fixed-size binary array (hashable in C)."""
    raw = np.ascontiguousarray(field, dtype=np.uint8)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(raw), [None, pa.py_buffer(raw.tobytes())])


def _decoded(values: Any, convert: Callable[[Any], Any], type_: pa.DataType) -> pa.Array:
    """Arrow array of convert(v) for each value, converting each distinct value once (hashing
    in Arrow: flow rows have few distinct addresses, interfaces and protocols)."""
    arr = values if isinstance(values, pa.Array) else pa.array(values)
    if len(arr) == 0:
        return pa.array([], type_)
    enc = arr.dictionary_encode()
    dictionary = pa.array([convert(v) for v in enc.dictionary.to_pylist()], type_)
    return pc.take(dictionary, enc.indices)


def _ip4_text(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


def _ip6_text(raw: bytes) -> str:
    return str(ipaddress.IPv6Address(raw))


def flow_columns(parts: list[tuple[np.ndarray, np.ndarray, int]], ifnames: dict[int, str], offset_ns: int) -> dict[str, pa.Array]:
    """Columns of `flows` rows from drained per-CPU maps, without a Python loop over the rows.

    `parts` holds (keys, values, family) per map: keys a structured array of struct flow_key4
    (family 4) or struct flow_key (family 6), values a structured (n, cpus) array of struct
    flow_val. Each CPU's copy is summed here: packets and bytes added, tcp_flags ORed, the
    earliest first_ns and the latest last_ns of the CPUs that saw packets.
    """
    tables = []
    for keys, vals, family in parts:
        packets_cpu = vals["packets"]
        packets = packets_cpu.sum(axis=1, dtype=np.uint64)
        keep = packets > 0
        if not keep.any():
            continue
        keys, vals, packets_cpu, packets = keys[keep], vals[keep], packets_cpu[keep], packets[keep]
        seen = packets_cpu > 0
        first = np.where(seen, vals["first_ns"], np.iinfo(np.uint64).max).min(axis=1)
        last = np.maximum(np.where(seen, vals["last_ns"], 0).max(axis=1), first)
        flags = np.bitwise_or.reduce(vals["tcp_flags"], axis=1)
        proto = keys["ip_proto"]
        sport, dport = keys["src_port"], keys["dst_port"]
        no_ports = ~np.isin(proto, list(PORTED)) | ((sport == 0) & (dport == 0))
        src_mac, dst_mac = keys["src_mac"], keys["dst_mac"]
        no_l2 = ~(src_mac.any(axis=1) | dst_mac.any(axis=1))
        width, text = (4, _ip4_text) if family == 4 else (16, _ip6_text)
        mac = ebpf.mac_text
        ifindex = keys["ifindex"]
        tables.append({
            "ts_start": pa.array(first.astype(np.int64) + offset_ns, pa.int64()),
            "ts_end": pa.array(last.astype(np.int64) + offset_ns, pa.int64()),
            "iface": _decoded(ifindex, lambda ix: ifnames.get(int(ix)), pa.string()),
            "ifindex": pa.array(ifindex, pa.uint32()),
            "direction": _decoded(keys["direction"], lambda d: DIRECTIONS.get(int(d)), pa.string()),
            "src_mac": pc.if_else(pa.array(no_l2), None, _decoded(_as_bytes(src_mac, 6), mac, pa.string())),
            "dst_mac": pc.if_else(pa.array(no_l2), None, _decoded(_as_bytes(dst_mac, 6), mac, pa.string())),
            "src_ip": _decoded(_as_bytes(keys["src_ip"], width), text, pa.string()),
            "dst_ip": _decoded(_as_bytes(keys["dst_ip"], width), text, pa.string()),
            "src_port": pa.array(sport, pa.uint16(), mask=no_ports),
            "dst_port": pa.array(dport, pa.uint16(), mask=no_ports),
            "l4": _decoded(proto, lambda p: L4_NAMES.get(int(p), f"ip{int(p)}"), pa.string()),
            "ip_proto": pa.array(proto, pa.uint8()),
            "packets": pa.array(packets, pa.uint64()),
            "bytes": pa.array(vals["bytes"].sum(axis=1, dtype=np.uint64), pa.uint64()),
            "tcp_flags": pa.array(flags, pa.uint16(), mask=proto != 6),
        })
    names = ("ts_start", "ts_end", "iface", "ifindex", "direction", "src_mac", "dst_mac", "src_ip", "dst_ip",
             "src_port", "dst_port", "l4", "ip_proto", "packets", "bytes", "tcp_flags")
    if not tables:
        return {n: [] for n in names}
    if len(tables) == 1:
        return tables[0]
    return {n: pa.concat_arrays([t[n] for t in tables]) for n in names}


class _BatchDrain:
    """BPF_MAP_LOOKUP_AND_DELETE_BATCH of a whole per-CPU hash into reused buffers, as numpy."""

    def __init__(self, table: Any):
        from bcc.libbcc import lib  # type: ignore[import-not-found]

        self.lib = lib
        self.max_entries = table.max_entries
        self.key_dtype = np.dtype(table.Key)
        leaf = getattr(table, "sLeaf", table.Leaf)
        self.val_dtype = np.dtype(leaf)
        self.cpus = getattr(table, "total_cpu", 1)
        # the kernel hands per-CPU values as round_up(value_size, 8) bytes per possible CPU
        self.val_stride = (self.val_dtype.itemsize + 7) // 8 * 8
        if self.val_stride != self.val_dtype.itemsize:
            self.val_dtype = np.dtype({"names": self.val_dtype.names, "formats": [self.val_dtype.fields[n][0] for n in self.val_dtype.names],
                                       "offsets": [self.val_dtype.fields[n][1] for n in self.val_dtype.names], "itemsize": self.val_stride})
        self.keys = ctypes.create_string_buffer(self.key_dtype.itemsize * self.max_entries)
        self.vals = ctypes.create_string_buffer(self.val_stride * self.cpus * self.max_entries)

    def __call__(self, fd: int) -> tuple[np.ndarray, np.ndarray]:
        ks, vs = self.key_dtype.itemsize, self.val_stride * self.cpus
        batch, count = ctypes.c_uint32(0), ctypes.c_uint32(0)
        total = 0
        while total < self.max_entries:
            count.value = self.max_entries - total
            res = self.lib.bpf_lookup_and_delete_batch(fd, ctypes.byref(batch) if total else None, ctypes.byref(batch),
                                                        ctypes.byref(self.keys, ks * total), ctypes.byref(self.vals, vs * total), ctypes.byref(count))
            err = ctypes.get_errno()
            total += count.value
            if res != 0:
                if err == errno.ENOENT:
                    break
                raise OSError(err, f"BPF_MAP_LOOKUP_AND_DELETE_BATCH: {os.strerror(err)}")
        keys = np.frombuffer(self.keys, self.key_dtype, count=total).copy()
        vals = np.frombuffer(self.vals, self.val_dtype, count=total * self.cpus).reshape(total, self.cpus).copy()
        return keys, vals


@dataclass
class FlowProbe:
    """Load bpf/flows.c, attach it to the planned interfaces, drain it every interval."""

    interfaces: list[str] | None = None
    map_entries: int = 65536  # IPv4 flow directions per interval
    map_entries6: int = 16384  # IPv6 flow directions per interval
    iface_array: int = 16384  # interfaces with a smaller ifindex are looked up in an array
    bpf: Any = None
    tc: TcAttachments | None = None
    _active_b: bool = False
    _progs: dict[str, Any] = field(default_factory=dict)
    _drains: dict[str, _BatchDrain] = field(default_factory=dict)

    def source(self) -> str:
        return ebpf.render_source("flows.c", {"FT_FLOW_ENTRIES": self.map_entries, "FT_FLOW6_ENTRIES": self.map_entries6, "FT_IFACE_ARRAY": self.iface_array})

    def load(self) -> None:
        self.bpf = ebpf.compile_bpf(self.source())
        bcc = ebpf.import_bcc()
        for name in ("ft_tc_ingress", "ft_tc_egress"):
            self._progs[name] = self.bpf.load_func(name.encode(), bcc.BPF.SCHED_CLS)
        for fam in ("4", "6"):
            self.bpf[f"ft_flow_active{fam}".encode()][ctypes.c_int(0)] = ctypes.c_int(self.bpf[f"ft_flows{fam}_a".encode()].get_fd())

    def attach(self) -> list[Iface]:
        """Attach to every planned interface not attached yet; returns those newly covered."""
        if self.tc is None:
            self.tc = TcAttachments(self.interfaces, self._progs["ft_tc_ingress"].fd, self._progs["ft_tc_egress"].fd,
                                    self._configure, self._forget)
        return self.tc.attach()

    def refresh(self) -> list[Iface]:
        """With no explicit --interfaces, cover interfaces created since the start (new pods)."""
        return self.tc.refresh() if self.tc is not None else []

    @property
    def plan(self) -> dict[int, Iface]:
        return self.tc.plan if self.tc is not None else {}

    def _table(self, ifindex: int) -> Any:
        return self.bpf[b"ft_ifaces_arr" if ifindex < self.iface_array else b"ft_ifaces"]

    def _configure(self, i: Iface) -> None:
        table = self._table(i.ifindex)
        table[ctypes.c_uint(i.ifindex)] = table.Leaf(i.l2_len, int(i.count_ingress), int(i.count_egress), 1)

    def _forget(self, ifindex: int) -> None:
        table = self._table(ifindex)
        if ifindex < self.iface_array:
            table[ctypes.c_uint(ifindex)] = table.Leaf(0, 0, 0, 0)
        else:
            del table[ctypes.c_uint(ifindex)]

    def drain(self, to_wall: Callable[[int], int]) -> dict[str, Any]:
        """Switch the kernel to the other flow maps, then read and clear the idle ones.

        `to_wall` converts bpf_ktime_get_ns() to wall-clock ns by adding an offset.
        """
        idle, nxt = ("b", "a") if self._active_b else ("a", "b")
        # An update of a map-of-maps returns only after running programs finished (RCU).
        for fam in ("4", "6"):
            self.bpf[f"ft_flow_active{fam}".encode()][ctypes.c_int(0)] = ctypes.c_int(self.bpf[f"ft_flows{fam}_{nxt}".encode()].get_fd())
        self._active_b = not self._active_b
        parts = []
        for fam in ("4", "6"):
            name = f"ft_flows{fam}_{idle}"
            table = self.bpf[name.encode()]
            try:
                drain = self._drains.get(name)
                if drain is None:
                    drain = self._drains[name] = _BatchDrain(table)
                keys, vals = drain(table.get_fd())
            except (OSError, ImportError, AttributeError):  # kernels or bcc without batch ops
                items = list(table.items())
                table.clear()
                drain = self._drains.get(name) or _BatchDrain(table)
                keys = np.frombuffer(b"".join(bytes(k) for k, _ in items), drain.key_dtype)
                vals = np.frombuffer(b"".join(bytes(v) for _, v in items), drain.val_dtype).reshape(len(items), drain.cpus)
            parts.append((keys, vals, int(fam)))
        names = {ix: i.name for ix, i in self.plan.items()}
        return flow_columns(parts, names, int(to_wall(0)))

    def counters(self) -> dict[str, int]:
        return ebpf.percpu_counters(self.bpf[b"ft_flow_ctr"], COUNTERS)

    def programs(self) -> dict[str, int]:
        return {name: p.fd for name, p in self._progs.items()}

    def close(self) -> None:
        ebpf.release(self.tc.links if self.tc is not None else {}, self.bpf)
        self.bpf = None
