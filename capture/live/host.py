"""What the recording host knows about names, stored in the manifest at record time.

A tape is read elsewhere and later, where this machine's `/etc/hosts`, its addresses and its
cgroup tree are not at hand; the analysis names endpoints without Kubernetes from these facts
(analyze.enrich): `nodes.<node>.host` gets

- `addresses`: the host's own addresses (its network namespace), `[{"ip", "iface"}]`;
- `namespace_addresses`: the addresses of the host's other network namespaces (containers,
  `ip netns`), `[{"ip", "iface", "netns"}]` (netns: the namespace's inode), loopback left out:
  on the host but not its own (named by the process seen there, by DNS, then by the host);
- `etc_hosts`: `/etc/hosts` as `[{"ip", "names"}]`, in file order;
- `cgroups`: for each cgroup v2 id seen in `connections` rows, what its path says: `path`,
  `runtime` (docker, podman, containerd, cri-o, lxc, machine for systemd-nspawn, or systemd
  for a service unit outside containers), `container` (the container's name where the runtime's
  own files give it, else its id cut to 12 characters) and `unit` (the systemd unit).

Everything here reads files (no subprocess) and says nothing when a file is missing: a host
without /etc/hosts or a runtime's state simply has fewer names.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

FIB_TRIE = Path("/proc/net/fib_trie")
IF_INET6 = Path("/proc/net/if_inet6")
ETC_HOSTS = Path("/etc/hosts")
DOCKER_STATE = Path("/var/lib/docker/containers")
PODMAN_STATE = (Path("/var/lib/containers/storage/overlay-containers/containers.json"),)

ID_RE = r"([0-9a-f]{64})"
# (runtime, pattern over one path component): systemd-driver scopes and cgroupfs-driver folders
RUNTIME_PATTERNS = (
    ("podman", re.compile(rf"^libpod-{ID_RE}(\.scope)?$")),
    ("docker", re.compile(rf"^docker-{ID_RE}\.scope$")),
    ("containerd", re.compile(rf"^cri-containerd-{ID_RE}\.scope$")),
    ("cri-o", re.compile(rf"^crio-{ID_RE}\.scope$")),
    ("containerd", re.compile(rf"^(?:nerdctl|containerd)-{ID_RE}\.scope$")),
)
PARENT_RUNTIMES = {"docker": "docker", "libpod_parent": "podman", "containerd": "containerd"}  # cgroupfs driver: /docker/<id>


def own_addresses(fib_trie: Path = FIB_TRIE, if_inet6: Path = IF_INET6) -> list[dict[str, Any]]:
    """The host's own IPv4 (local routes of /proc/net/fib_trie) and IPv6 (/proc/net/if_inet6)
    addresses in this network namespace, canonical text, each once."""
    out: dict[str, dict[str, Any]] = {}
    try:
        last = None
        for line in fib_trie.read_text().splitlines():
            s = line.strip()
            if s.startswith("|--"):
                last = s[3:].strip()
            elif s.startswith("/32 host LOCAL") and last:
                out.setdefault(last, {"ip": last, "iface": None})
    except OSError:
        pass
    try:
        for line in if_inet6.read_text().splitlines():
            f = line.split()
            if len(f) >= 6 and len(f[0]) == 32:
                ip = str(ipaddress.IPv6Address(bytes.fromhex(f[0])))
                out.setdefault(ip, {"ip": ip, "iface": f[5]})
    except (OSError, ValueError):
        pass
    return sorted(out.values(), key=lambda a: (ipaddress.ip_address(a["ip"]).version, ipaddress.ip_address(a["ip"])))


CLONE_NEWNET = 0x40000000
NETNS_FILES = (Path("/run/netns"), Path("/var/run/docker/netns"))  # `ip netns` and Docker keep handles there


def _netns_handles(proc: Path, skip: set[int]) -> dict[int, str]:
    """Network namespace inode -> a path that opens it: every process's, and the named handles
    of `ip netns` and Docker (a namespace may have no process yet)."""
    found: dict[int, str] = {}
    for folder in NETNS_FILES:
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            entries = []
        for f in entries:
            try:
                ino = os.stat(f).st_ino
            except OSError:
                continue
            if ino not in skip:
                found.setdefault(ino, str(f))
    try:
        pids = [d for d in os.listdir(proc) if d.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        path = f"{proc}/{pid}/ns/net"
        try:
            ino = os.stat(path).st_ino
        except OSError:
            continue
        if ino not in skip:
            found.setdefault(ino, path)
    return found


def _addresses_in(handle: str) -> list[dict[str, Any]]:
    """own_addresses() of the network namespace at `handle`, read by a thread that joins it
    (setns moves only the calling thread; the recorder's other threads stay where they are)."""
    result: list[dict[str, Any]] = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(handle, os.O_RDONLY)
        except OSError:
            return
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                return
        finally:
            os.close(fd)
        result.extend(own_addresses(Path("/proc/thread-self/net/fib_trie"), Path("/proc/thread-self/net/if_inet6")))

    t = threading.Thread(target=run, name="flowtape-netns", daemon=True)
    t.start()
    t.join(5)
    return result


class NamespaceAddresses:
    """Addresses of the host's other network namespaces (containers, `ip netns`): not the host's
    own, but on it. scan() looks at namespaces it has not seen before, so it is cheap to repeat
    (a container started during the recording is found at the next scan)."""

    def __init__(self, proc: Path = Path("/proc")):
        self.proc = proc
        try:
            self._seen = {os.stat("/proc/self/ns/net").st_ino}
        except OSError:
            self._seen = set()
        self.addresses: dict[str, dict[str, Any]] = {}

    def scan(self) -> bool:
        """Read the namespaces new since the last scan; True when an address was added."""
        added = False
        for ino, handle in _netns_handles(self.proc, self._seen).items():
            self._seen.add(ino)
            for a in _addresses_in(handle):
                ip = ipaddress.ip_address(a["ip"])
                if ip.is_loopback or a["ip"] in self.addresses:  # every namespace has its own loopback
                    continue
                self.addresses[a["ip"]] = {"ip": a["ip"], "iface": a["iface"], "netns": ino}
                added = True
        return added

    def listed(self) -> list[dict[str, Any]]:
        return sorted(self.addresses.values(), key=lambda a: (ipaddress.ip_address(a["ip"]).version, ipaddress.ip_address(a["ip"])))


def parse_etc_hosts(text: str) -> list[dict[str, Any]]:
    """Entries of an /etc/hosts text: `[{"ip", "names"}]` in file order, addresses canonical
    (an entry that is no address is skipped, as the resolver does)."""
    out = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            ip = str(ipaddress.ip_address(fields[0].split("%", 1)[0]))
        except ValueError:
            continue
        out.append({"ip": ip, "names": fields[1:]})
    return out


def etc_hosts(path: Path = ETC_HOSTS) -> list[dict[str, Any]]:
    try:
        return parse_etc_hosts(path.read_text(errors="replace"))
    except OSError:
        return []


def describe_cgroup(path: str) -> dict[str, Any]:
    """What a cgroup v2 path (relative to the hierarchy's root) says about its processes:
    runtime, container id, systemd unit. The innermost container wins (a container in a pod)."""
    runtime = container_id = unit = None
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        for name, pattern in RUNTIME_PATTERNS:
            m = pattern.match(part)
            if m:
                runtime, container_id = name, m.group(1)
                break
        else:
            if re.fullmatch(ID_RE, part) and i > 0 and parts[i - 1] in PARENT_RUNTIMES:
                runtime, container_id = PARENT_RUNTIMES[parts[i - 1]], part
            elif part.startswith("lxc.payload.") and len(part) > 12:
                runtime, container_id = "lxc", part[len("lxc.payload."):]
            elif m2 := re.fullmatch(r"machine-(.+)\.scope", part):
                runtime, container_id = "machine", m2.group(1).replace("\\x2d", "-")
        if part.endswith((".service", ".scope")) and not part.startswith("libpod-conmon-"):
            unit = part
    if runtime is None and unit is not None and unit.endswith(".service") and not unit.startswith("user@"):
        runtime = "systemd"
    return {"path": "/" + "/".join(parts), "runtime": runtime, "container_id": container_id, "unit": unit}


def container_names(ids: set[str], docker: Path = DOCKER_STATE, podman: tuple[Path, ...] = PODMAN_STATE) -> dict[str, str]:
    """Container id -> name, from Docker's per-container config and Podman's container store."""
    names: dict[str, str] = {}
    for cid in ids:
        try:
            name = json.loads((docker / cid / "config.v2.json").read_text()).get("Name")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(name, str) and name.strip("/"):
            names[cid] = name.strip("/")
    for store in podman:
        try:
            entries = json.loads(store.read_text())
        except (OSError, ValueError):
            continue
        for e in entries if isinstance(entries, list) else []:
            if isinstance(e, dict) and e.get("id") in ids and e.get("names"):
                names.setdefault(e["id"], str(e["names"][0]))
    return names


def cgroup_facts(paths: dict[int, str], docker: Path = DOCKER_STATE, podman: tuple[Path, ...] = PODMAN_STATE) -> dict[str, dict[str, Any]]:
    """The manifest's `cgroups`: cgroup id (as text, JSON keys are strings) -> describe_cgroup
    plus `container`, the container's name (or its id cut to 12 characters)."""
    described = {cid: describe_cgroup(p) for cid, p in paths.items()}
    names = container_names({d["container_id"] for d in described.values() if d["container_id"] and d["runtime"] in ("docker", "podman")},
                            docker, podman)
    out = {}
    for cid, d in sorted(described.items()):
        c = d.pop("container_id")
        d["container"] = names.get(c, c[:12] if c and re.fullmatch(ID_RE, c) else c) if c else None
        out[str(cid)] = d
    return out
