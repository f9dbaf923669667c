"""flowtape: a flight recorder for cluster networks.

    >>> import flowtape
    >>> tape = flowtape.open("fixtures/tiny.tape")
    >>> sorted(tape.nodes)
    ['node-a', 'node-b']
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import Exit, FlowtapeError  # noqa: E402
from .schema import FORMAT, TABLES  # noqa: E402
from . import reader  # noqa: E402
from .tape import Problem, Tape, TapeWriter  # noqa: E402


def _analysis(tape: Tape):
    """Every open tape's analysis state: the one place where the core meets flowtape.analyze."""
    from .analyze.analysis import Analysis

    return Analysis(tape)


reader.ANALYSIS = _analysis


def open(path: str) -> Tape:  # noqa: A001 - the public API is flowtape.open
    """Open a tape for reading: DuckDB views and Polars LazyFrames over its tables."""
    return Tape(path)


__all__ = ["FORMAT", "TABLES", "Exit", "FlowtapeError", "Problem", "Tape", "TapeWriter", "open", "__version__"]
