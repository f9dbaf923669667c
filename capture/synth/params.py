"""Generator parameters: what `flowtape synth` accepts, validated into one frozen object.

Every check that a user can fail raises UsageError with one line naming the flag, so the
CLI and the Python API reject bad input the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ...durations import parse_duration  # noqa: F401  (part of synth's API)
from ...errors import UsageError

SLICE_NS = 5_000_000_000
"""Generation step and flow export interval (the recorder drains its flow map every 5 s)."""

# A fixed epoch keeps output independent of the wall clock: 2024-03-01T08:00:00Z, shifted by
# whole hours derived from the seed so that tapes of different seeds do not overlap by accident.
EPOCH_NS = 1_709_280_000 * 1_000_000_000

_UNITS = {"h": 3_600_000_000_000}


@dataclass(frozen=True)
class Params:
    """Everything the output depends on. Same Params -> byte-identical table content."""

    seed: int = 1
    services: int = 10
    nodes: int = 6
    zones: int = 3
    regions: int = 1
    duration_ns: int = 600 * 1_000_000_000
    rps: float = 50.0
    rollouts: int | None = None  # None: one per 2.5 minutes of tape, at least two (IPs get reused)
    incidents: tuple[str, ...] = field(default=())  # incident specs as given on the command line
    journeys: float = 0.0  # request journeys (nested call trees, capture.synth.journeys) entering per second
    journeys_traceparent: bool = True  # the journeys' requests carry a W3C traceparent

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise UsageError(f"--seed must be >= 0, got {self.seed}")
        if self.services < 4:
            raise UsageError(f"--services must be at least 4 (frontend, api, a database, a cache), got {self.services}")
        if self.services > 200:
            raise UsageError(f"--services must be at most 200, got {self.services}")
        if not 1 <= self.regions <= 2:
            raise UsageError(f"--regions must be 1 or 2, got {self.regions}")
        if self.zones < self.regions or self.zones > 12:
            raise UsageError(f"--zones must be between --regions ({self.regions}) and 12, got {self.zones}")
        if self.nodes < self.zones or self.nodes > 240:
            raise UsageError(f"--nodes must be between --zones ({self.zones}) and 240, got {self.nodes}")
        if self.duration_ns < SLICE_NS:
            raise UsageError(f"--duration must be at least 5s, got {self.duration_ns / 1e9:g}s")
        if self.duration_ns > 7 * 24 * _UNITS["h"]:
            raise UsageError("--duration must be at most 7 days")
        if not 0 < self.rps <= 1_000_000:
            raise UsageError(f"--rps must be > 0 and <= 1000000, got {self.rps:g}")
        if not 0 <= self.journeys <= 1000:
            raise UsageError(f"--journeys must be between 0 and 1000 per second, got {self.journeys:g}")
        if self.rollouts is not None and self.rollouts < 0:
            raise UsageError(f"--rollouts must be >= 0, got {self.rollouts}")

    @property
    def start_ns(self) -> int:
        return EPOCH_NS + (self.seed % 10_000) * _UNITS["h"]

    @property
    def end_ns(self) -> int:
        # whole slices only: flows are drained on 5 s boundaries
        return self.start_ns + (self.duration_ns // SLICE_NS) * SLICE_NS

    @property
    def n_rollouts(self) -> int:
        if self.rollouts is not None:
            return self.rollouts
        return max(2, int(self.duration_ns // (150 * 1_000_000_000)))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["incidents"] = list(self.incidents)
        if not self.journeys:  # tapes without journeys keep the parameters (and bytes) they had before
            del d["journeys"], d["journeys_traceparent"]
        d["start_ns"], d["end_ns"] = self.start_ns, self.end_ns
        return d
