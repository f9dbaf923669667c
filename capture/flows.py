"""The `flows` probe: TC programs (bpf/flows.c) counting packets per flow in the kernel.

User space only chooses interfaces, drains the counters every interval and turns them into
rows. `flow_rows` is a pure function so the decoding is tested without a kernel.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import UsageError
from . import ebpf

SYS_NET = Path("/sys/class/net")
ARPHRD_ETHER, ARPHRD_LOOPBACK = 1, 772
L4_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
PORTED = {6, 17, 132}
DIRECTIONS = {0: "ingress", 1: "egress"}
COUNTERS = {0: "flows.insert_failed", 1: "flows.not_ip", 2: "flows.truncated"}


@dataclass(frozen=True)
class Iface:
    """How the flows program treats one interface (mirrors struct iface_cfg)."""

    name: str
    ifindex: int
    l2_len: int
    count_ingress: bool
    count_egress: bool

    @property
    def attach(self) -> bool:
        return self.count_ingress or self.count_egress


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def plan_interfaces(requested: Iterable[str] | None, sys_net: Path = SYS_NET) -> list[Iface]:
    """Interfaces to cover and how, so that each packet is counted once on this node.

    None means every interface of the recorder's network namespace. A bridge is represented by
    its ports: it is covered but never counts, and selecting it selects its ports. Loopback
    counts only on egress (every lo ingress is the same packet again).
    """
    present = sorted(p.name for p in sys_net.iterdir()) if sys_net.is_dir() else []
    names = list(present) if requested is None else list(dict.fromkeys(requested))
    for n in names:
        if n not in present:
            raise UsageError(f"--interfaces: no interface named {n!r} here (have: {', '.join(present)})")
    # Selecting a bridge selects its ports.
    for n in list(names):
        brif = sys_net / n / "brif"
        if brif.is_dir():
            names += [p.name for p in sorted(brif.iterdir()) if p.name not in names]
    plan = []
    for n in names:
        d = sys_net / n
        ifindex = int(_read(d / "ifindex", "0"))
        hwtype = int(_read(d / "type", "0"))
        l2 = 14 if hwtype in (ARPHRD_ETHER, ARPHRD_LOOPBACK) else 0
        if (d / "bridge").is_dir():
            plan.append(Iface(n, ifindex, l2, False, False))
        elif hwtype == ARPHRD_LOOPBACK:
            plan.append(Iface(n, ifindex, l2, False, True))
        else:
            plan.append(Iface(n, ifindex, l2, True, True))
    return plan


def flow_rows(items: Iterable[tuple[Any, Any]], ifnames: dict[int, str], to_wall: Callable[[int], int]) -> dict[str, list]:
    """Columns of `flows` rows from drained (flow_key, flow_val) pairs (bcc ctypes or look-alikes)."""
    cols: dict[str, list] = {k: [] for k in (
        "ts_start", "ts_end", "iface", "ifindex", "direction", "src_mac", "dst_mac", "src_ip", "dst_ip",
        "src_port", "dst_port", "l4", "ip_proto", "packets", "bytes", "tcp_flags")}
    for k, v in items:
        if not v.packets:
            continue
        family = k.family
        proto = k.ip_proto
        l2 = bytes(k.src_mac) != bytes(6) or bytes(k.dst_mac) != bytes(6)
        has_ports = proto in PORTED and (k.src_port or k.dst_port)
        cols["ts_start"].append(to_wall(v.first_ns))
        cols["ts_end"].append(to_wall(max(v.last_ns, v.first_ns)))
        cols["iface"].append(ifnames.get(k.ifindex))
        cols["ifindex"].append(k.ifindex)
        cols["direction"].append(DIRECTIONS.get(k.direction))
        cols["src_mac"].append(ebpf.mac_text(k.src_mac) if l2 else None)
        cols["dst_mac"].append(ebpf.mac_text(k.dst_mac) if l2 else None)
        cols["src_ip"].append(ebpf.ip_text(family, bytes(k.src_ip)))
        cols["dst_ip"].append(ebpf.ip_text(family, bytes(k.dst_ip)))
        cols["src_port"].append(k.src_port if has_ports else None)
        cols["dst_port"].append(k.dst_port if has_ports else None)
        cols["l4"].append(L4_NAMES.get(proto, f"ip{proto}"))
        cols["ip_proto"].append(proto)
        cols["packets"].append(v.packets)
        cols["bytes"].append(v.bytes)
        cols["tcp_flags"].append(v.tcp_flags if proto == 6 else None)
    return cols


@dataclass
class FlowProbe:
    """Load bpf/flows.c, attach it to the planned interfaces, drain it every interval."""

    interfaces: list[str] | None = None
    map_entries: int = 65536
    bpf: Any = None
    plan: dict[int, Iface] = field(default_factory=dict)
    links: dict[int, list[int]] = field(default_factory=dict)
    _active_b: bool = False
    _progs: dict[str, Any] = field(default_factory=dict)

    def source(self) -> str:
        return ebpf.render_source("flows.c", {"FT_FLOW_ENTRIES": self.map_entries})

    def load(self) -> None:
        self.bpf = ebpf.compile_bpf(self.source())
        bcc = ebpf.import_bcc()
        for name in ("ft_tc_ingress", "ft_tc_egress"):
            self._progs[name] = self.bpf.load_func(name.encode(), bcc.BPF.SCHED_CLS)
        self.bpf[b"ft_flow_active"][ctypes.c_int(0)] = ctypes.c_int(self.bpf[b"ft_flows_a"].get_fd())

    def attach(self) -> list[Iface]:
        """Attach to every planned interface not attached yet; returns those newly covered."""
        new = [i for i in plan_interfaces(self.interfaces) if i.ifindex not in self.plan]
        table = self.bpf[b"ft_ifaces"]
        for i in new:
            table[ctypes.c_uint(i.ifindex)] = table.Leaf(i.l2_len, int(i.count_ingress), int(i.count_egress), 0)
            self.plan[i.ifindex] = i
            if i.attach:
                try:
                    self.links[i.ifindex] = [
                        ebpf.attach_tcx(self._progs["ft_tc_ingress"].fd, i.ifindex, egress=False),
                        ebpf.attach_tcx(self._progs["ft_tc_egress"].fd, i.ifindex, egress=True),
                    ]
                except FileNotFoundError:
                    continue  # the interface vanished meanwhile
        return new

    def refresh(self) -> list[Iface]:
        """With no explicit --interfaces, cover interfaces created since the start (new pods)."""
        if self.interfaces is not None:
            return []
        present = {int(_read(p / "ifindex", "0")) for p in SYS_NET.iterdir()}
        for gone in [ix for ix in self.plan if ix not in present]:
            for fd in self.links.pop(gone, []):
                os.close(fd)
            del self.bpf[b"ft_ifaces"][ctypes.c_uint(gone)]
        return self.attach()

    def drain(self, to_wall: Callable[[int], int]) -> dict[str, list]:
        """Switch the kernel to the other flow map, then read and clear the idle one."""
        idle_name = "ft_flows_b" if self._active_b else "ft_flows_a"
        next_name = "ft_flows_a" if self._active_b else "ft_flows_b"
        # An update of a map-of-maps returns only after running programs finished (RCU).
        self.bpf[b"ft_flow_active"][ctypes.c_int(0)] = ctypes.c_int(self.bpf[next_name.encode()].get_fd())
        self._active_b = not self._active_b
        idle = self.bpf[idle_name.encode()]
        try:
            items = list(idle.items_lookup_and_delete_batch())
        except Exception:  # kernels or bcc without batch ops
            items = list(idle.items())
            idle.clear()
        names = {ix: i.name for ix, i in self.plan.items()}
        return flow_rows(items, names, to_wall)

    def counters(self) -> dict[str, int]:
        out = {}
        for k, per_cpu in self.bpf[b"ft_flow_ctr"].items():
            out[COUNTERS[k.value]] = int(sum(per_cpu))
        return out

    def programs(self) -> dict[str, int]:
        return {name: p.fd for name, p in self._progs.items()}

    def close(self) -> None:
        for fds in self.links.values():
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.links.clear()
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
