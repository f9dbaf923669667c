"""A network lab for tests: network namespaces ("hosts") joined by veth pairs on a bridge.

Addresses come from 198.18.0.0/15 (the benchmarking range) and nothing is ever sent
elsewhere. The lab turns off segmentation offloads on its veths so that every packet the
kernel handles is a packet on the (virtual) wire, as tcpdump shows it.

    with Lab() as lab:
        srv = lab.add_host("srv")            # namespace, veth, 198.18.<n>.2
        cli = lab.add_host("cli")
        with lab.capture([cli.host_if]) as pcaps:
            cli.run(["curl", "-s", f"http://{srv.ip}/"])
        rows = tshark_fields(pcaps[cli.host_if], ["ip.src", "ip.len"])

Reusable for DNS/HTTP/TLS tests: Host.popen/run execute any command inside a host, and
`nginx_conf` writes a minimal nginx configuration for a folder of files.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

_SEQ = [0]


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def _quiet_ipv6(path: str) -> None:
    try:
        Path(path).write_text("1")
    except OSError:
        pass


@dataclass
class Host:
    """One network namespace with an address on the lab bridge."""

    lab: "Lab"
    name: str
    netns: str
    ip: str
    host_if: str  # the veth end in the root namespace (a bridge port)

    def cmd(self, argv: Sequence[str]) -> list[str]:
        # `ip netns exec` execs the command itself: the returned pid is the command's pid.
        return ["ip", "netns", "exec", self.netns, *argv]

    def popen(self, argv: Sequence[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(argv), **kw)

    def run(self, argv: Sequence[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        return subprocess.run(self.cmd(argv), check=check, **kw)


    def random_drops(self, one_in: int, egress: bool, min_len: int = 200) -> AbstractContextManager[Callable[[], int]]:
        """Drop about one in `one_in` packets of at least `min_len` bytes on this host's eth0
        (egress: before any capture point; ingress: after the bridge ports' captures), with a
        TC program in the namespace (the kernel has no netem). Yields a function that returns
        how many packets were dropped so far; the program goes with the block."""
        return tc_program(self.cmd([]), "eth0", egress, one_in, min_len)


@contextmanager
def tc_program(prefix: Sequence[str], ifname: str, egress: bool, one_in: int, min_len: int = 200) -> Iterator[Callable[[], int]]:
    """A foreign TC program (tcx, appended to the hook's chain) on `ifname`, run in a helper
    process started with `prefix` (e.g. `ip netns exec NS`, or nothing for the root
    namespace): it drops about one in `one_in` packets of at least `min_len` bytes and lets
    the others pass with TCX_PASS, which ends the chain there, as Cilium's programs do.
    one_in=0 drops none. Yields a function returning the number dropped so far."""
    p = subprocess.Popen([*prefix, sys.executable, "-c", _DROPPER, ifname, "egress" if egress else "ingress", str(one_in), str(min_len)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        if line.strip() != "attached":
            raise RuntimeError(f"the TC program on {ifname} did not start: {line!r}")

        def dropped() -> int:
            p.stdin.write("count\n")
            p.stdin.flush()
            return int(p.stdout.readline())

        yield dropped
    finally:
        p.kill()
        p.wait()


_DROPPER = r"""
import socket, sys
import bcc
from flowtape.capture.live import ebpf
ifname, egress, one_in, min_len = sys.argv[1], sys.argv[2] == "egress", int(sys.argv[3]), int(sys.argv[4])
b = bcc.BPF(text='''
BPF_ARRAY(dropped, u64, 1);
int drop(struct __sk_buff *skb) {
    if (ONE_IN == 0 || skb->len < MIN_LEN || bpf_get_prandom_u32() % (ONE_IN ? ONE_IN : 1) != 0)
        return 0;   /* TCX_PASS: ends the chain */
    int zero = 0;
    u64 *n = dropped.lookup(&zero);
    if (n)
        __sync_fetch_and_add(n, 1);
    return 2;       /* TCX_DROP */
}''', cflags=[f"-DMIN_LEN={min_len}", f"-DONE_IN={one_in}"])
fn = b.load_func(b"drop", bcc.BPF.SCHED_CLS)
link = ebpf.link_create(fn.fd, socket.if_nametoindex(ifname), ebpf.BPF_TCX_EGRESS if egress else ebpf.BPF_TCX_INGRESS)
print("attached", flush=True)
for _ in sys.stdin:
    print(b["dropped"][0].value, flush=True)
"""


@dataclass
class Lab:
    """Bridge + namespaces; everything is removed by close() (or the with-block)."""

    net: str = ""  # /24 inside 198.18.0.0/15, e.g. "198.18.7"
    tag: str = ""
    bridge: str = ""
    hosts: list[Host] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="flowtape-lab-")))

    def __post_init__(self) -> None:
        _SEQ[0] += 1
        n = (os.getpid() * 7 + _SEQ[0]) % 250 + 1
        self.tag = self.tag or f"{os.getpid() % 10000}{_SEQ[0]}"[-6:]
        self.net = self.net or f"198.18.{n}"
        self.bridge = f"ftb{self.tag}"
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        _quiet_ipv6(f"/proc/sys/net/ipv6/conf/{self.bridge}/disable_ipv6")
        sh("ip", "addr", "add", f"{self.net}.1/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")

    def www(self, files: dict[str, bytes]) -> Path:
        """A document root for start_nginx_l7 (workdir/www) holding `files` (name -> content)."""
        root = self.workdir / "www"
        root.mkdir()
        for name, content in files.items():
            (root / name).write_bytes(content)
        return root

    @property
    def gateway_ip(self) -> str:
        """The root namespace's own address on the lab bridge."""
        return f"{self.net}.1"

    def add_host(self, name: str) -> Host:
        idx = len(self.hosts) + 2
        netns = f"ft{self.tag}-{name}"
        host_if = f"ftv{self.tag}{idx}"
        peer = f"ftp{self.tag}{idx}"
        sh("ip", "netns", "add", netns)
        h = Host(self, name, netns, f"{self.net}.{idx}", host_if)
        self.hosts.append(h)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer)
        _quiet_ipv6(f"/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6")
        sh("ip", "link", "set", peer, "netns", netns)
        sh("ip", "link", "set", host_if, "master", self.bridge)
        sh("ip", "link", "set", host_if, "up")
        h.run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])
        h.run(["ip", "link", "set", peer, "name", "eth0"])
        h.run(["ip", "addr", "add", f"{h.ip}/24", "dev", "eth0"])
        h.run(["ip", "link", "set", "eth0", "up"])
        h.run(["ip", "link", "set", "lo", "up"])
        # One skb = one wire packet, so tcpdump and the recorder see the same packets.
        for argv in (h.cmd(["ethtool", "-K", "eth0", "tso", "off", "gso", "off", "gro", "off"]),
                     ["ethtool", "-K", host_if, "tso", "off", "gso", "off", "gro", "off"]):
            subprocess.run(argv, capture_output=True)
        return h

    @contextmanager
    def capture(self, interfaces: Sequence[str], snaplen: int = 256, bpf_filter: Sequence[str] = ()) -> Iterator[dict[str, Path]]:
        """tcpdump on each interface (root namespace) for the duration of the block; snaplen 0:
        whole packets; bpf_filter: a capture filter's words (e.g. ["host", ip])."""
        procs, files = [], {}
        for i in interfaces:
            f = self.workdir / f"{i}.pcap"
            # (not --immediate-mode: a wake-up per packet makes tcpdump drop most of a fast download on
            # `any`; packets of the last second reach the file only if the block lingers that long)
            p = subprocess.Popen(["tcpdump", "-i", i, "-U", "-n", "-s", str(snaplen), "-B", "16384", "-w", str(f), *bpf_filter],
                                 stderr=subprocess.PIPE, text=True)
            # tcpdump says "listening on" once its socket is bound: from then on nothing is missed
            # (on `any` it first names the link type it writes)
            line = p.stderr.readline()
            if "data link type" in line:
                line = p.stderr.readline()
            if "listening" not in line:
                p.kill()
                raise RuntimeError(f"tcpdump on {i} failed: {line.strip()}")
            procs.append(p)
            files[i] = f
        try:
            yield files
        finally:
            for p in procs:
                p.send_signal(signal.SIGINT)
            for p in procs:
                p.wait(timeout=10)

    def close(self) -> None:
        for h in self.hosts:
            sh("ip", "netns", "pids", h.netns, check=False)
            for pid in sh("ip", "netns", "pids", h.netns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", h.netns, check=False)
            sh("ip", "link", "del", h.host_if, check=False)
        sh("ip", "link", "del", self.bridge, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- peers ------------------------------------------------------------------------------------


def nginx_conf(root: Path, workdir: Path, listen: str) -> Path:
    """A minimal nginx.conf serving `root` on `listen` (ip:port) with one worker (one known pid)."""
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
user root;
worker_processes 1;
daemon off;
master_process on;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    keepalive_timeout 65;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    default_type application/octet-stream;
    server {{
        listen {listen} reuseport backlog=4096;
        root {root};
    }}
}}
""")
    return conf


def start_nginx(host: Host, root: Path, port: int = 80) -> tuple[subprocess.Popen, int]:
    """Start nginx in `host`; returns the master process and its worker's pid once it answers."""
    conf = nginx_conf(root, host.lab.workdir, f"{host.ip}:{port}")
    master = host.popen(["nginx", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master.pid}/task/{master.pid}/children")
        kids = children.read_text().split() if children.exists() else []
        if kids and host.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{host.ip}:{port}/"], check=False).returncode == 0:
            return master, int(kids[0])
        time.sleep(0.05)
    master.kill()
    raise RuntimeError("nginx did not start")


def wait_line(stream, needle: str, timeout: float = 60) -> str:
    """Read a child's output until a line containing `needle` (its "ready" line); fail with what it printed."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"never saw {needle!r}; got: {''.join(seen)[-2000:]}")


@contextmanager
def recorder(argv: Sequence[str]) -> Iterator[subprocess.Popen]:
    """`flowtape record ARGV` for the block: yields once it is recording; at the end of the
    block it is stopped with SIGINT and must exit 0 (killed instead if the block failed)."""
    flowtape = str(Path(sys.executable).with_name("flowtape"))
    rec = subprocess.Popen([flowtape, "record", *argv], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        while "recording to" not in (line := rec.stderr.readline()):
            if not line:
                raise AssertionError(f"the recorder did not start: {rec.stderr.read()}")
        yield rec
        rec.send_signal(signal.SIGINT)
        rec.stderr.read()
        assert rec.wait(timeout=60) == 0
    finally:
        if rec.poll() is None:
            rec.kill()
            rec.wait()


@contextmanager
def node_recorder(host: Host, argv: Sequence[str]) -> Iterator[subprocess.Popen]:
    """`flowtape record ARGV` run inside `host`'s network namespace, as the recorder of a node whose
    network is that namespace (its interfaces are the namespace's: `--interfaces eth0`). `ip netns
    exec` gives the command a sysfs of the namespace (so /sys/class/net lists its interfaces) but
    hides the host's cgroup2 and debugfs mounts: they are mounted again in the command's own mount
    namespace. Tracepoints and uprobes are not per namespace: such a recorder still sees every
    socket of the machine (its connections rows include other namespaces' sockets), only its TC
    programs are confined to the namespace's interfaces. Stopped as `recorder` stops it."""
    flowtape = str(Path(sys.executable).with_name("flowtape"))
    script = ("mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null; mount -t debugfs none /sys/kernel/debug 2>/dev/null; "
              'exec "$@"')
    rec = host.popen(["sh", "-c", script, "sh", flowtape, "record", *argv], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        while "recording to" not in (line := rec.stderr.readline()):
            if not line:
                raise AssertionError(f"the recorder in {host.name} did not start: {rec.stderr.read()}")
        yield rec
        rec.send_signal(signal.SIGINT)
        rec.stderr.read()
        assert rec.wait(timeout=60) == 0
    finally:
        if rec.poll() is None:
            rec.kill()
            rec.wait()


def tshark_fields(pcap: Path, fields: Sequence[str], display_filter: str = "ip") -> list[list[str]]:
    """One list of field values per packet (empty string when a field is absent)."""
    argv = ["tshark", "-n", "-r", str(pcap), "-Y", display_filter, "-T", "fields", "-E", "separator=\t", "-E", "occurrence=f"]
    for f in fields:
        argv += ["-e", f]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def tshark_tcp_conversations(pcap: Path) -> int:
    """Number of TCP conversations in tshark's `-z conv,tcp` statistics."""
    out = subprocess.run(["tshark", "-n", "-r", str(pcap), "-q", "-z", "conv,tcp"], check=True, capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if "<->" in line)


# --- L7 peers: nginx with an access log and TLS, dnsmasq -----------------------------------

H2_PORT = 8443  # nginx_l7_conf's HTTP/2 (ALPN h2) listener, beside HTTP/1.1 on 443
H2C_PORT = 8080  # nginx_l7_conf's cleartext HTTP/2 listener (h2c, prior knowledge only: nginx has no Upgrade: h2c)
ACCESS_FORMAT = "$remote_addr $remote_port $request_method $request_uri $status $request_time $msec $connection $connection_requests $https $bytes_sent $request_length"


def make_cert(workdir: Path, names: Sequence[str]) -> tuple[Path, Path]:
    """A self-signed test certificate (openssl) for `names`; returns (cert, key)."""
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    san = ",".join(f"DNS:{n}" for n in names)
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
       "-subj", f"/CN={names[0]}", "-addext", f"subjectAltName={san}")
    return cert, key


def nginx_l7_conf(root: Path, workdir: Path, ip: str, tls: tuple[Path, Path] | None = None, workers: int = 1) -> Path:
    """nginx serving `root` on ip:80 (and ip:443 with TLS) with an access log per listener and a
    known set of responses: files (200, or 404 when missing), /moved (301), /boom (500),
    /empty (204), /same (304), /upload (200 after reading a request body of any size). Keep-alive
    on; both logs in ACCESS_FORMAT. H2C_PORT serves the same over cleartext HTTP/2 (access-h2c.log); with
    TLS, H2_PORT serves the same over HTTP/2 (own log)."""
    conf = workdir / "nginx-l7.conf"
    common = f"""
        keepalive_timeout 65;
        keepalive_requests 1000000;
        root {root};
        location = /moved {{ return 301 /f100; }}
        location = /boom {{ return 500; }}
        location = /empty {{ return 204; }}
        location = /same {{ return 304; }}
        location = /upload {{ client_max_body_size 0; return 200; }}
"""
    tls_server = ""
    if tls is not None:
        tls_server = f"""
    server {{
        listen {ip}:443 ssl reuseport backlog=4096;
        ssl_certificate {tls[0]};
        ssl_certificate_key {tls[1]};
        access_log {workdir}/access-tls.log lab;
        {common}
    }}
    server {{
        listen {ip}:{H2_PORT} ssl http2;
        ssl_certificate {tls[0]};
        ssl_certificate_key {tls[1]};
        access_log {workdir}/access-h2.log lab;
        {common}
    }}"""
    conf.write_text(f"""
user root;
worker_processes {workers};
daemon off;
master_process on;
pid {workdir}/nginx-l7.pid;
error_log {workdir}/nginx-l7-error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format lab '{ACCESS_FORMAT}';
    sendfile on;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    default_type application/octet-stream;
    server {{
        listen {ip}:80 reuseport backlog=4096;
        access_log {workdir}/access.log lab;
        {common}
    }}
    server {{
        listen {ip}:{H2C_PORT} http2;
        access_log {workdir}/access-h2c.log lab;
        {common}
    }}{tls_server}
}}
""")
    return conf


def start_nginx_l7(host: Host, root: Path, tls: tuple[Path, Path] | None = None, workers: int = 1) -> tuple[subprocess.Popen, list[int]]:
    """Start nginx_l7_conf's nginx in `host`; returns the master and its worker pids once it answers.
    The readiness probe is not logged (it asks for /__ready, then the logs are truncated)."""
    workdir = host.lab.workdir
    conf = nginx_l7_conf(root, workdir, host.ip, tls, workers)
    master = host.popen(["nginx", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master.pid}/task/{master.pid}/children")
        kids = children.read_text().split() if children.exists() else []
        if len(kids) >= workers and host.run(["curl", "-s", "-o", "/dev/null", f"http://{host.ip}/__ready"], check=False).returncode == 0:
            # nginx logs after it has answered: truncate once the probe's line is there, not before
            ready_by = time.monotonic() + 5
            while "/__ready" not in (workdir / "access.log").read_text() and time.monotonic() < ready_by:
                time.sleep(0.01)
            for log in ("access.log", "access-tls.log"):
                (workdir / log).write_text("")
            return master, [int(k) for k in kids]
        time.sleep(0.05)
    master.kill()
    raise RuntimeError("nginx did not start")


def access_log(workdir: Path, tls: bool = False, name: str | None = None) -> list[dict]:
    """Lines of the lab nginx's access log (`name`, else the plain or TLS one) as dicts (fields of ACCESS_FORMAT)."""
    names = [f.lstrip("$") for f in ACCESS_FORMAT.split()]
    path = workdir / (name or ("access-tls.log" if tls else "access.log"))
    out = []
    for line in path.read_text().splitlines():
        d = dict(zip(names, line.split(" ")))
        d["remote_port"] = int(d["remote_port"])
        d["status"] = int(d["status"])
        d["request_time"] = float(d["request_time"])
        d["connection_requests"] = int(d["connection_requests"])
        d["bytes_sent"], d["request_length"] = int(d["bytes_sent"]), int(d["request_length"])
        out.append(d)
    return out


def start_dnsmasq(host: Host, options: Sequence[str]) -> subprocess.Popen:
    """dnsmasq answering on host.ip:53 (UDP and TCP) from local records only (`options`)."""
    argv = ["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces", f"--listen-address={host.ip}",
            "--except-interface=lo", f"--pid-file={host.lab.workdir}/dnsmasq-{host.name}.pid", "--user=root", *options]
    p = host.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"dnsmasq failed: {p.stderr.read()}")
        r = host.run(["dig", "+time=1", "+tries=1", f"@{host.ip}", "__ready.invalid"], check=False)
        if r.returncode == 0:
            return p
        time.sleep(0.05)
    p.kill()
    raise RuntimeError("dnsmasq did not start")
