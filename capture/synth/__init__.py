"""Synthetic cluster recordings with known ground truth (`flowtape synth`).

    >>> from flowtape.capture.synth import Params, synthesize      # doctest: +SKIP
    >>> synthesize("x.tape", Params(seed=3, duration_ns=60 * 10**9, incidents=("latency",)))

Modules, one concept each: params (arguments), cluster (nodes, workloads, pods over time),
traffic (the call graph), incidents (what goes wrong and the truth), dns (resolver behaviour),
wire (bytes -> packets), conns (connections and pools), requests (vectorised requests and http
rows), flows (kernel-style flow aggregation), k8s (state tables), sim (the slice loop),
run (writer, truth.json); cli (`flowtape synth`) and tiny (the hand-written example tape, `flowtape tiny`).
Writes through flowtape's TapeWriter; imports nothing of capture.live.
"""

from .params import Params, parse_duration
from .run import TRUTH_NAME, Result, read_truth, synthesize

__all__ = ["Params", "Result", "TRUTH_NAME", "parse_duration", "read_truth", "synthesize"]
