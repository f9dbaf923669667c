"""`flowtape record`: the live recorder's command (a thin layer over capture.live.recorder)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ...durations import parse_seconds
from ...errors import UsageError
from ...storage import parse_url
from ..k8s.watcher import ContextOpt, InClusterOpt, KubeconfigOpt, NoK8sOpt


def register(app: typer.Typer) -> None:
    @app.command()
    def record(
        output: Annotated[Path, typer.Option("--output", "-o", help="Tape to write (a new NAME.tape folder).")],
        duration: Annotated[Optional[str], typer.Option(help="Stop after this long (30, 90s, 5m, 1h); default: until Ctrl-C/SIGTERM.")] = None,
        interfaces: Annotated[Optional[str], typer.Option(help="Comma-separated interfaces for flows and L7 capture (a bridge means its ports); default: all, and new ones as they appear.")] = None,
        probes: Annotated[str, typer.Option(help="Comma-separated probes: flows,connections,l7,gotls,goroutines (l7: the dns, http and tls tables; http needs connections; gotls: the HTTPS of Go programs, needs l7; goroutines: http.goroutine and go_spawns of Go programs, needs gotls).")] = "flows,connections,l7,gotls,goroutines",
        flow_interval: Annotated[float, typer.Option(help="Seconds between flow counter drains (one flow row per flow direction and interval).")] = 5.0,
        rotate: Annotated[float, typer.Option(help="Seconds between part rotations (a SIGKILL loses at most this much).")] = 60.0,
        node: Annotated[Optional[str], typer.Option(help="Node name written into the tape (default: the host name).")] = None,
        ssl_lib: Annotated[Optional[list[str]], typer.Option("--ssl-lib", help="OpenSSL library (or statically linked binary) to read HTTPS plaintext from with uprobes; repeatable; default: the system libssl.so.3. --ssl-lib none turns HTTPS plaintext off.")] = None,
        no_redact: Annotated[bool, typer.Option("--no-redact", help="Keep query string values and every header column (recorded in the manifest). Bodies are never stored.")] = False,
        header_allow_list: Annotated[Optional[str], typer.Option("--header-allow-list", help="Comma-separated headers whose values are kept when redacting (default: host,user-agent,content-type,traceparent,tracestate,grpc-message).")] = None,
        owner_fallback: Annotated[bool, typer.Option("--owner-fallback", help="Name the owner of server sockets accepted without the peer address (libuv, Node.js) by the first process that reads or writes them; runs a program on every send and receive (Linux 6.3+).")] = False,
        kubeconfig: KubeconfigOpt = None,
        context: ContextOpt = None,
        in_cluster: InClusterOpt = False,
        no_k8s: NoK8sOpt = False,
        upload: Annotated[Optional[str], typer.Option("--upload", help="s3://BUCKET/PREFIX/: upload each finished part, then the manifest, as rotations complete (the tape goes to PREFIX/<name of -o>/ unless the URL ends in NAME.tape/). Parts stay local; network losses are retried. Credentials: the AWS chain; AWS_ENDPOINT_URL for S3-compatible stores.")] = None,
        upload_timeout: Annotated[str, typer.Option(help="How long the last upload may take at the end (then: exit 10, the tape stays local, `flowtape push` finishes it).")] = "60s",
        resume: Annotated[bool, typer.Option("--resume", help="Continue the tape at -o if it exists (a restarted pod), with a gap for the time in between; its pending uploads go on.")] = False,
        inject_trace_context: Annotated[str, typer.Option("--inject-trace-context", help="ip-option: write a random trace id per connection as the IPv4 option 136 (OBI/Beyla's) into egress IPv4 TCP packets of connections that carry no trace context, so the recorder on the far node reads the same id (connections.wire_trace_id); this side records it too. Changes packets (20 bytes each; full-size non-GSO segments are sent unchanged and counted). IPv6 is not injected. Default: off.")] = "off",
        print_bpf: Annotated[bool, typer.Option("--print-bpf", help="Print the final C of the selected probes and exit.", hidden=True)] = False,
    ) -> None:
        """Record flows, TCP connections, DNS, HTTP and TLS from eBPF into a tape (needs root),
        with the Kubernetes state when a cluster is configured (kubeconfig, or in a pod).

        Example: sudo flowtape record -o incident.tape --duration 5m
        """
        from ..k8s.watcher import discover_kube_config
        from .inject import parse_mode
        from .recorder import RecordOptions, Recorder, render_sources

        if no_k8s and (kubeconfig or context or in_cluster):
            raise UsageError("--no-k8s cannot be combined with --kubeconfig, --context or --in-cluster")
        libs = None if not ssl_lib else ([] if [x.lower() for x in ssl_lib] == ["none"] else [str(x) for x in ssl_lib])

        opts = RecordOptions(
            out=output,
            node=node,
            probes=tuple(p.strip() for p in probes.split(",") if p.strip()),
            interfaces=[i.strip() for i in interfaces.split(",") if i.strip()] if interfaces else None,
            flow_interval=flow_interval,
            rotate=rotate,
            duration=parse_seconds(duration),
            ssl_libs=libs,
            no_redact=no_redact,
            header_allow_list=[h.strip() for h in header_allow_list.split(",") if h.strip()] if header_allow_list is not None else None,
            owner_fallback=owner_fallback,
            upload=upload,
            upload_timeout=parse_seconds(upload_timeout, "--upload-timeout") or 0.0,
            resume=resume,
            inject_trace_context=parse_mode(inject_trace_context),
        )
        if upload:
            parse_url(upload)  # a malformed URL is a usage error before anything starts
        if print_bpf:
            sys.stdout.write(render_sources(opts))
            return
        if not no_k8s:
            from . import ebpf

            ebpf.check_privileges()  # the first thing to fix; reading ~/.kube/config may need it too
            opts.kube = discover_kube_config(kubeconfig, context, in_cluster)  # KubeError: one line, before any tape
            opts.kube_explicit = bool(kubeconfig or context or in_cluster)
        summary = Recorder(opts).run()
        rows = ", ".join(f"{k} {v:,}" for k, v in sorted(summary.rows.items())) or "no rows"
        lost = sum(summary.lost.values())
        print(f"recorded {summary.seconds:.1f} s into {summary.tape}: {rows}; lost {lost}", file=sys.stderr)
        if upload and summary.upload_error is None:
            print(f"uploaded {summary.uploaded_parts} part(s) ({summary.uploaded_bytes:,} bytes) and the manifest to {upload}", file=sys.stderr)
        if summary.upload_error is not None:
            raise summary.upload_error
