"""Write a synthetic tape: the simulation's batches into a TapeWriter, plus truth.json.

Determinism: the tape window starts at an epoch derived from the seed, every random draw
comes from generators seeded by (seed, stream), writer rotation is by size only (never by
wall-clock time), and the manifest's node clocks and hosts are synthetic. Part files are
therefore byte-identical for the same arguments; only the manifest's created_ns/updated_ns
differ between runs.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ...manifest import write_atomic
from ...writer import TapeWriter

from .incidents import Incident, parse_incidents
from .params import SLICE_NS, Params
from .sim import Simulation, slice_count

TRUTH_NAME = "truth.json"
TRUTH_FORMAT = "flowtape-synth-truth/1"
ROW_GROUP_ROWS = 1 << 17
PACK_BELOW_ROWS = 4096  # dns, tls, connections (and some flows) come in slices of a few rows


@dataclass
class Result:
    path: Path
    rows: dict[str, int]
    incidents: list[Incident]
    truth: dict[str, Any]

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def truth_document(p: Params, sim: Simulation, incidents: list[Incident], rows: dict[str, int]) -> dict[str, Any]:
    c = sim.cluster
    return {
        "format": TRUTH_FORMAT,
        "params": p.as_dict(),
        "window": {"start_ns": p.start_ns, "end_ns": p.end_ns},
        "semantics": {
            "service_ips": "socket-level load balancing: connections, http, dns, tls and flows carry backend pod IPs on both sides; ClusterIPs appear only in k8s_services and DNS answers",
            "k8s_node": sim.node_names[0],
            "flow_bytes": "per endpoint and node: sum(flows.bytes) = bytes_sent + 52 * segs_sent + 8; sum(flows.packets) = segs_sent",
            "conn_id": "<node>-<socket cookie>; the client and server rows of a connection join on the 4-tuple",
        },
        "cluster": {
            "nodes": [{"name": n.name, "zone": n.zone, "region": n.region, "ip": n.ip} for n in c.nodes],
            "services": [{"namespace": s.namespace, "name": s.name, "cluster_ip": s.cluster_ip, "port": s.port} for s in c.services],
            "edges": [{"client": e.client.key, "server": e.server.key if e.server else e.external.name, "protocol": e.protocol,
                       "rate_rps": round(e.rate, 3), "median_ms": round(2.718281828459045 ** e.lat_mu / 1e6, 3)} for e in sim.edges],
            "rollouts": [{"workload": r.workload.key, "start_ns": r.start, "end_ns": r.end, "old_replicaset": r.old_rs, "new_replicaset": r.new_rs} for r in c.rollouts],
        },
        "incidents": [i.truth() for i in incidents],
        "rows": rows,
    }


def synthesize(path: str | Path, p: Params, progress: Callable[[int, int, int], None] | None = None) -> Result:
    """Generate a tape at `path` (a new folder). `progress(slice, slices, rows)` is called per slice."""
    incidents = parse_incidents(p.incidents, p)
    sim = Simulation(p, incidents)
    path = Path(path)
    first = sim.node_names[0]
    clock = lambda: {"realtime_ns": p.start_ns, "monotonic_ns": 1_000_000_000_000, "offset_ns": p.start_ns - 1_000_000_000_000, "uncertainty_ns": 1}  # noqa: E731
    # rotation by size only (deterministic); row groups of 128 Ki rows bound the writer's buffers
    # (one per table and node) so peak memory does not grow with the tape; the many tiny per-slice
    # appends of low-rate tables are buffered packed, else their per-object overhead (~20 KB
    # each) grows with the tape until their 128 Ki rows fill (never, for dns below ~1e9 rows)
    w = TapeWriter(path, node=first, rotate_seconds=float("inf"), row_group_rows=ROW_GROUP_ROWS, clock=clock(), pack_below_rows=PACK_BELOW_ROWS)
    rows: dict[str, int] = {}
    try:
        for name in sim.node_names:
            w.manifest["nodes"][name] = {"clock": clock(), "host": {"hostname": name, "kernel": "synthetic", "synthetic": True}}
            w.manifest["lost"].setdefault(name, {})
        w.set_window(p.start_ns, p.end_ns)
        w.set_probe("synth", {"interval_ns": SLICE_NS})
        w.update("extra", {"synth": {"params": p.as_dict(), "truth": TRUTH_NAME, "k8s_node": first, "incidents": [i.kind for i in incidents]}})

        def put(batch) -> int:
            n = 0
            for table, node, data in batch:
                k = w.append(table, data, node=node)
                rows[table] = rows.get(table, 0) + k
                n += k
            return n

        put(sim.k8s_batch())
        total, done = slice_count(p) + 1, 0
        for k, batch in enumerate(sim.slices()):
            done += put(batch)
            if progress is not None:
                progress(k + 1, total, done)
        if p.journeys:
            from .journeys import generate

            batches, journeys = generate(sim, p.journeys, p.journeys_traceparent, p.seed)
            put(batches)
        w.close()
    except BaseException:
        w.abort()
        raise
    truth = truth_document(p, sim, incidents, dict(sorted(rows.items())))
    if p.journeys:
        truth["journeys"] = journeys
    write_atomic(path / TRUTH_NAME, (json.dumps(truth, indent=1, sort_keys=True) + "\n").encode())
    return Result(path, dict(sorted(rows.items())), incidents, truth)


def read_truth(tape: str | Path) -> dict[str, Any]:
    return json.loads((Path(tape) / TRUTH_NAME).read_text())


if __name__ == "__main__":  # pragma: no cover - quick manual runs
    print(synthesize(sys.argv[1], Params(duration_ns=60 * 10**9)).rows)
