"""`--inject-trace-context ip-option`: bpf/inject.c, the one probe that writes into packets.

It gives each IPv4 TCP connection that carries no trace context of its own a random trace id and
writes it as the IPv4 option 136 (OBI/Beyla's layout) into its egress packets, so that the
recorder on the far node reads the same id (wire_trace_context, connections.wire_*). This side
records it through the l7 probe: the injector runs first on each egress hook (attached after
the l7 programs, at the front of the chain), so l7's reader sees the packet as it leaves.
Off by default; the manifest says when it was on (settings.inject_trace_context, probes.inject)
and what it skipped (extra.inject: packets sent unchanged, which lose nothing from the tape, so
they are not `lost` counters).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any

from ...errors import UsageError
from . import ebpf
from .interfaces import Iface, TcAttachments

MODES = ("off", "ip-option")

COUNTERS = {0: "inject.injected_packets", 1: "inject.skipped_mtu", 2: "inject.skipped_foreign",
            3: "inject.skipped_other", 4: "inject.connections", 5: "inject.map_full",
            6: "inject.injected_wire_packets"}


def parse_mode(value: str | None) -> str:
    """The --inject-trace-context value, or a usage error naming the flag and the choices."""
    v = (value or "off").strip().lower()
    if v not in MODES:
        raise UsageError(f"--inject-trace-context: {value!r} is not a mode (use ip-option, or off)")
    return v


@dataclass
class InjectProbe:
    interfaces: list[str] | None = None
    conn_entries: int = 65536
    bpf: Any = None
    tc: TcAttachments | None = None
    _progs: dict[str, Any] = field(default_factory=dict)

    def source(self) -> str:
        return ebpf.render_source("inject.c", {"FT_INJ_CONN_ENTRIES": self.conn_entries})

    def load(self) -> None:
        bcc = ebpf.import_bcc()
        self.bpf = ebpf.compile_bpf(self.source())
        for name in ("ft_inject_ingress", "ft_inject_egress"):
            self._progs[name] = self.bpf.load_func(name.encode(), bcc.BPF.SCHED_CLS)

    def attach(self) -> list[Iface]:
        """On every planned interface not attached yet. Call it after the l7 probe's attach: tcx
        links go to the front of the chain, so the injector runs before the l7 reader."""
        if self.tc is None:
            self.tc = TcAttachments(self.interfaces, self._progs["ft_inject_ingress"].fd, self._progs["ft_inject_egress"].fd,
                                    self._configure, self._forget)
        return self.tc.attach()

    def refresh(self) -> list[Iface]:
        return self.tc.refresh() if self.tc is not None else []

    def _configure(self, i: Iface) -> None:
        table = self.bpf[b"ft_inj_ifaces"]
        table[ctypes.c_uint(i.ifindex)] = table.Leaf(i.l2_len, int(i.role != "loopback"), int(i.count_ingress), int(i.count_egress))

    def _forget(self, ifindex: int) -> None:
        try:
            del self.bpf[b"ft_inj_ifaces"][ctypes.c_uint(ifindex)]
        except KeyError:
            pass

    def counters(self) -> dict[str, int]:
        return ebpf.percpu_counters(self.bpf[b"ft_inj_ctr"], COUNTERS)

    def trace_ids(self) -> dict[tuple, str]:
        """The connections given an id (((ip, port), (ip, port)) -> 32 hex digits), for tests."""
        out = {}
        for k, v in self.bpf[b"ft_inj_conns"].items():
            if v.foreign:
                continue
            a = (ebpf.ip_text(4, bytes(k.saddr)), k.sport)
            b = (ebpf.ip_text(4, bytes(k.daddr)), k.dport)
            out[(a, b)] = bytes(v.trace_id).hex()
        return out

    def manifest(self) -> dict[str, Any]:
        return {
            "mode": "ip-option",
            "program": "bpf/inject.c (tcx egress writes, ingress only looks)",
            "option": "IPv4 option type 136, length 20: 16-byte trace id + 2 zero bytes (OBI/Beyla)",
            "trace_id": "random, one per connection (both directions)",
            "packets": "egress IPv4 TCP of the covered interfaces (not loopback), taken as l7 takes them (so not the packets "
                       "forwarded from a covered pod veth: cover the uplink alone to inject those); "
                       "never connections that carry an IP option or a trace context of their own; IPv6 not injected",
            "mtu": "GSO packets: gso_size lowered by 20; other packets that would exceed the MTU are sent unchanged (extra.inject: inject.skipped_mtu)",
            "interfaces": {i.name: coverage_of(i) for i in (self.tc.plan.values() if self.tc else [])},
        }

    def programs(self) -> dict[str, int]:
        return {(name.decode() if isinstance(name, bytes) else name): fn.fd for name, fn in self.bpf.funcs.items()}

    def close(self) -> None:
        ebpf.release(self.tc.links if self.tc is not None else {}, self.bpf)
        self.bpf = None


def coverage_of(i: Iface) -> str:
    if i.role == "loopback":
        return "not injected (loopback)"
    if i.count_egress:
        return "injected on egress"
    return "ingress only (looks for foreign contexts)"
