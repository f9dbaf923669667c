"""Which interfaces the TC probes cover, and the one loop that attaches and detaches them.

`plan_interfaces` decides how each interface counts so that a packet is seen once per node;
`TcAttachments` keeps one probe's TC program pair attached to that plan as interfaces come and
go (new pods' veths), for the flows and the L7 probes alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ...errors import UsageError
from . import ebpf

SYS_NET = Path("/sys/class/net")
ARPHRD_ETHER, ARPHRD_LOOPBACK = 1, 772


@dataclass(frozen=True)
class Iface:
    """How the flows program treats one interface (mirrors struct iface_cfg)."""

    name: str
    ifindex: int
    l2_len: int
    count_ingress: bool
    count_egress: bool
    role: str = "interface"  # or "bridge", "bridge port", "loopback"


def coverage(i: Iface) -> str:
    """What an interface of the plan counts, in words (for the manifest)."""
    return {
        "bridge": "egress from the host (its ports count what enters them)",
        "bridge port": "ingress (the bridge counts what the host sends)",
        "loopback": "egress only (loopback)",
    }.get(i.role, "ingress + local egress")


def read_sysfs(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def plan_interfaces(requested: Iterable[str] | None, sys_net: Path = SYS_NET) -> list[Iface]:
    """Interfaces to cover and how, so that each packet is counted once on this node.

    None means every interface of the recorder's network namespace. Selecting a bridge selects
    its ports. Its ports count what enters them (ingress) and it counts what the host sends into
    it (its egress): every frame leaving a port came from another port, counted there, or from
    the bridge, so no port needs an egress program (one program run less per bridged packet,
    and a broadcast from the host counts once, not once per port). A port selected without its
    bridge counts both ways, like any interface. Loopback counts only on egress (every lo
    ingress is the same packet again).
    """
    present = sorted(p.name for p in sys_net.iterdir()) if sys_net.is_dir() else []
    names = list(present) if requested is None else list(dict.fromkeys(requested))
    for n in names:
        if n not in present:
            raise UsageError(f"--interfaces: no interface named {n!r} here (have: {', '.join(present)})")
    # Selecting a bridge selects its ports.
    bridged: set[str] = set()
    for n in list(names):
        brif = sys_net / n / "brif"
        if brif.is_dir():
            ports = [p.name for p in sorted(brif.iterdir())]
            bridged.update(ports)
            names += [p for p in ports if p not in names]
    plan = []
    for n in names:
        d = sys_net / n
        ifindex = int(read_sysfs(d / "ifindex", "0"))
        hwtype = int(read_sysfs(d / "type", "0"))
        l2 = 14 if hwtype in (ARPHRD_ETHER, ARPHRD_LOOPBACK) else 0
        if (d / "bridge").is_dir():
            plan.append(Iface(n, ifindex, l2, False, True, "bridge"))
        elif n in bridged:
            plan.append(Iface(n, ifindex, l2, True, False, "bridge port"))
        elif hwtype == ARPHRD_LOOPBACK:
            plan.append(Iface(n, ifindex, l2, False, True, "loopback"))
        else:
            plan.append(Iface(n, ifindex, l2, True, True))
    return plan



class TcAttachments:
    """A probe's ingress/egress programs on every planned interface.

    `configure(iface)` writes the interface's entry into the probe's config map before its
    programs attach; `forget(ifindex)` removes it when the interface is gone."""

    def __init__(self, requested: list[str] | None, ingress_fd: int, egress_fd: int,
                 configure: Callable[[Iface], None], forget: Callable[[int], None]) -> None:
        self.requested = requested
        self.ingress_fd, self.egress_fd = ingress_fd, egress_fd
        self.configure, self.forget = configure, forget
        self.plan: dict[int, Iface] = {}
        self.links: dict[int, list[int]] = {}

    def attach(self) -> list[Iface]:
        """Attach to every planned interface not attached yet; returns those newly covered."""
        new = [i for i in plan_interfaces(self.requested) if i.ifindex not in self.plan]
        for i in new:
            self.configure(i)
            self.plan[i.ifindex] = i
            try:
                self.links[i.ifindex] = ebpf.attach_tc_pair(self.ingress_fd, self.egress_fd, i)
            except FileNotFoundError:
                continue  # the interface vanished meanwhile
        return new

    def refresh(self) -> list[Iface]:
        """With no explicit --interfaces, cover interfaces created since the start (new pods)
        and let go of those that are gone (their ifindex may come back as another interface)."""
        if self.requested is not None:
            return []
        present = {int(read_sysfs(p / "ifindex", "0")) for p in SYS_NET.iterdir()}
        for gone in [ix for ix in self.plan if ix not in present]:
            for fd in self.links.pop(gone, []):
                os.close(fd)
            del self.plan[gone]
            self.forget(gone)
        return self.attach()
