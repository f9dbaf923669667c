"""The `flowtape import` group and `flowtape import pcap` (a thin layer over capture.importers.pcap).
`flowtape import kubectl` (capture/k8s/cli.py) joins the same group through `import_group`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer


def import_group(app: typer.Typer) -> typer.Typer:
    """The `import` group, made by whichever command module registers first: shared by all."""
    for group in app.registered_groups:
        if group.name == "import" and group.typer_instance is not None:
            return group.typer_instance
    imp = typer.Typer(help="Turn other captures (packet captures, kubectl dumps) into tape data.", no_args_is_help=True)
    app.add_typer(imp, name="import")
    return imp


def register(app: typer.Typer) -> None:
    imp = import_group(app)

    @imp.command("pcap")
    def import_pcap_cmd(
        files: Annotated[list[Path], typer.Argument(help="pcap or pcapng files (gzip-compressed too), read in this order.", show_default=False)],
        output: Annotated[Path, typer.Option("--output", "-o", help="Tape to write (a new NAME.tape folder).")],
        node: Annotated[Optional[str], typer.Option("--node", help="Node name for the rows (default: the first file's name without its extension).")] = None,
        interval: Annotated[float, typer.Option("--interval", help="Seconds of capture time per flow row (as the recorder's --flow-interval).")] = 5.0,
        no_redact: Annotated[bool, typer.Option("--no-redact", help="Keep query string values and every header column (recorded in the manifest). Bodies are never stored.")] = False,
        header_allow_list: Annotated[Optional[str], typer.Option("--header-allow-list", help="Comma-separated headers whose values are kept when redacting (default: host,user-agent,content-type,traceparent,tracestate,grpc-message).")] = None,
        dns_port: Annotated[Optional[list[int]], typer.Option("--dns-port", help="A port carrying DNS (UDP and TCP); repeatable; default 53, as the recorder.", min=1, max=65535)] = None,
    ) -> None:
        """Import packet captures into a new tape: flows, connections, dns, http and tls, with the
        recorder's decoders. Ethernet (VLAN, QinQ), Linux cooked v1/v2 (tcpdump -i any) and raw IP;
        IPv4 and IPv6. Damaged captures are read as far as they can be, each kind of damage counted.

        Example: flowtape import pcap node-a.pcap.gz -o incident.tape --node node-a
        """
        from ..decode.http_pairing import Redaction
        from .pcap import import_pcap

        allow = [h.strip() for h in header_allow_list.split(",") if h.strip()] if header_allow_list is not None else None
        s = import_pcap(list(files), output, node, interval, Redaction.from_settings(no_redact, allow), dns_ports=tuple(dns_port or (53,)))
        size = sum(r.hasher.size for r in s.files if r.hasher)
        packets = sum(r.packets for r in s.files)
        rows = ", ".join(f"{t} {n:,}" for t, n in s.rows.items()) or "no rows"
        rate = f"{size / s.seconds / 1e6:.1f} MB/s" if s.seconds > 0 else ""
        print(f"imported {packets:,} packets from {len(s.files)} file(s) into {s.tape} (node {s.node}): {rows}; {s.seconds:.1f} s, {rate}",
              file=sys.stderr)
