"""The tape: TapeWriter to write one, Tape to read one (see DESIGN.md, "The tape")."""

from .reader import Part, Problem, Tape, open_tape
from .writer import TapeWriter

__all__ = ["Part", "Problem", "Tape", "TapeWriter", "open_tape"]
