"""`flowtape k8s record` and `flowtape import kubectl`: thin commands over capture.k8s and
capture.importers.kubectl."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ...durations import parse_seconds

from ..importers.cli import import_group
from .watcher import ContextOpt, InClusterOpt, KubeconfigOpt

def record(output: Path, duration: float | None, kubeconfig: Path | None, context: str | None, in_cluster: bool,
           node: str | None, stop: threading.Event | None = None) -> dict:
    """Record Kubernetes state alone into a new tape; returns the watcher's summary."""
    from ...writer import TapeWriter

    from .watcher import KubeWatcher, load_kube_config

    cfg = load_kube_config(kubeconfig, context, in_cluster)  # fails before any tape exists
    existed = output.exists()
    writer = TapeWriter(output, node=node)
    kw = KubeWatcher(writer, cfg)
    try:
        kw.start()
    except BaseException:
        writer.abort()
        if not existed:
            shutil.rmtree(output, ignore_errors=True)  # nothing recorded: leave no empty tape
        raise
    writer.set_window(start_ns=kw.started_ns)
    writer.set_probe("k8s", {"api": cfg.host, "source": cfg.source, "context": cfg.context})
    stop = stop or threading.Event()
    try:
        stop.wait(duration)  # None: until Ctrl-C
    finally:
        kw.stop()
        writer.set_window(end_ns=time.time_ns())
        writer.close()
    return kw.summary()


def register(app: typer.Typer) -> None:
    k8s = typer.Typer(help="Record Kubernetes state (pods, services, endpoints, nodes) into a tape.", no_args_is_help=True)
    app.add_typer(k8s, name="k8s")

    @k8s.command("record")
    def record_cmd(
        output: Annotated[Path, typer.Option("--output", "-o", help="New tape to write.")],
        duration: Annotated[Optional[str], typer.Option("--duration", help="How long to record (30s, 5m, 1h); default until Ctrl-C.")] = None,
        kubeconfig: KubeconfigOpt = None,
        context: ContextOpt = None,
        in_cluster: InClusterOpt = False,
        node: Annotated[Optional[str], typer.Option("--node", help="Node name for the tape partition (default: this host).")] = None,
    ) -> None:
        """Watch the cluster's Pods, Services, EndpointSlices and Nodes and record every version.

        Needs get/list/watch on pods, services, nodes, endpointslices, replicasets and jobs
        (docs/k8s.md has the ClusterRole).

        Example: flowtape k8s record -o state.tape --duration 10m --context prod
        """
        summary = record(output, parse_seconds(duration), kubeconfig, context, in_cluster, node)
        res = summary["resources"]
        events = sum(r["events"] for r in res.values())
        breaks = sum(r["reconnects"] + r["relists_410"] for r in res.values())
        print(f"recorded {summary['rows_written']:,} k8s rows ({events:,} watch events, {breaks} watch break(s)) into {output}")

    imp = import_group(app)

    @imp.command("kubectl")
    def import_kubectl_cmd(
        dumps: Annotated[list[Path], typer.Argument(help="Files of `kubectl get pods,svc,endpointslices,nodes,rs,deploy,jobs -A -o json`.")],
        into: Annotated[Path, typer.Option("--into", help="Existing tape to add the objects to.")],
        node: Annotated[Optional[str], typer.Option("--node", help="Node partition for the rows (default: the tape's only node).")] = None,
    ) -> None:
        """Add kubectl JSON dumps to a tape as Kubernetes versions valid for the whole tape window.

        For tapes recorded without the watcher. Secrets and ConfigMaps in a dump are skipped.

        Example: kubectl get pods,svc,endpointslices,nodes,rs,deploy,jobs -A -o json > k8s.json
                 flowtape import kubectl k8s.json --into incident.tape
        """
        from ..importers.kubectl import import_kubectl

        out = import_kubectl(list(dumps), into, node)
        rows = ", ".join(f"{n:,} {t}" for t, n in out["rows"].items()) or "no rows"
        skipped = f"; skipped {', '.join(f'{n} {k}' for k, n in sorted(out['skipped'].items()))}" if out["skipped"] else ""
        print(f"imported {rows} into {into}{skipped}")
