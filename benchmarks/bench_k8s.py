"""Kubernetes watcher throughput and memory: 10k pods, 100k watch events, through the same code
the informer runs on each line of a watch stream (JSON decode -> row conversion -> versions store ->
TapeWriter), without the network.

Prints events/s against a baseline measured in the same run (bare json.loads of the same lines)
and the peak Python heap for 20k and for 100k events: bounded memory means the peak does not grow
with the number of events, only with the objects alive.

Run: .venv/bin/python benchmarks/bench_k8s.py [--pods 10000] [--events 100000]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import tracemalloc
from pathlib import Path

import kubernetes

from flowtape.capture.k8s.watcher import RESOURCES, KubeConfig, KubeWatcher
from flowtape.writer import TapeWriter


def pod(i: int, gen: int) -> dict:
    name = f"web-{i % 500}-abc-{i}"
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": f"ns-{i % 40}", "uid": f"uid-{i}-{gen}", "resourceVersion": str(gen * 1_000_000 + i),
                     "creationTimestamp": "2026-01-01T00:00:00Z", "labels": {"app": f"web-{i % 500}", "pod-template-hash": "abc", "rev": str(gen)},
                     "annotations": {"a": "x" * 200},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"web-{i % 500}-abc", "uid": "rs", "controller": True}]},
        "spec": {"nodeName": f"node-{i % 100}", "containers": [{"name": "app", "image": "registry.example/app:1", "env": [{"name": "X", "value": "y"}]}]},
        "status": {"phase": "Running", "podIP": f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}", "podIPs": [{"ip": f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}"}],
                   "containerStatuses": [{"name": "app", "containerID": f"containerd://{i:064x}", "ready": True}],
                   "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
    }


def events(pods: int, n: int, seed: int = 23) -> list[bytes]:
    """A realistic mix: 70% MODIFIED that change a label, 15% status-only MODIFIED (no new version),
    15% pod replaced (DELETED + ADDED with a new uid, same IP)."""
    rnd = random.Random(seed)
    gen = [0] * pods
    rev = [0] * pods
    out: list[bytes] = []
    while len(out) < n:
        i = rnd.randrange(pods)
        r = rnd.random()
        if r < 0.70:
            rev[i] += 1
            p = pod(i, gen[i])
            p["metadata"]["labels"]["rev"] = f"{gen[i]}.{rev[i]}"
            out.append(json.dumps({"type": "MODIFIED", "object": p}).encode())
        elif r < 0.85:
            p = pod(i, gen[i])
            p["metadata"]["labels"]["rev"] = f"{gen[i]}.{rev[i]}" if rev[i] else str(gen[i])
            p["status"]["conditions"][0]["lastProbeTime"] = str(len(out))
            out.append(json.dumps({"type": "MODIFIED", "object": p}).encode())
        else:
            out.append(json.dumps({"type": "DELETED", "object": pod(i, gen[i])}).encode())
            gen[i] += 1
            rev[i] = 0
            out.append(json.dumps({"type": "ADDED", "object": pod(i, gen[i])}).encode())
    return out[:n]


def run(pods: int, lines: list[bytes], path: Path) -> tuple[float, int]:
    cfg = kubernetes.client.Configuration()
    cfg.host = "http://127.0.0.1:9"
    writer = TapeWriter(path, node="bench", rotate_seconds=5)
    kw = KubeWatcher(writer, KubeConfig(cfg, "bench"))
    res = next(r for r in RESOURCES if r.plural == "pods")
    inf = next(i for i in kw.informers if i.res.plural == "pods")
    clock = [1_767_225_600 * 10**9]
    kw.clock = lambda: clock[0]
    t0 = time.perf_counter()
    kw._reconcile(res, [pod(i, 0) for i in range(pods)], clock[0], initial=True)
    for line in lines:
        clock[0] += 1000
        inf.handle_line(line)
    kw.store.flush()
    writer.close()
    return time.perf_counter() - t0, kw.store.rows_written


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=100_000)
    a = ap.parse_args()
    lines = events(a.pods, a.events)

    t0 = time.perf_counter()
    for line in lines:
        json.loads(line)
    base = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as d:
        secs, rows = run(a.pods, lines, Path(d) / "t.tape")
        peaks = {}
        for n in (a.events // 5, a.events):
            tracemalloc.start()
            run(a.pods, lines[:n], Path(d) / f"m{n}.tape")
            peaks[n] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()

    print(f"pods {a.pods:,}, watch events {len(lines):,} ({sum(map(len, lines)) / 1e6:.0f} MB of JSON), rows written {rows:,}")
    print(f"baseline json.loads      {len(lines) / base:>10,.0f} events/s")
    print(f"watcher (decode+convert+store+write) {len(lines) / secs:>10,.0f} events/s  ({secs / base:.1f}x the bare decode)")
    for n, peak in peaks.items():
        print(f"peak Python heap, {n:>7,} events: {peak / 2**20:6.1f} MiB")
    print(f"heap growth 5x events: {peaks[a.events] / peaks[a.events // 5]:.2f}x")


if __name__ == "__main__":
    main()
