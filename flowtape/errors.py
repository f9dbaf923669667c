"""Exit codes and the errors that map to them.

Every failure a user can cause is a FlowtapeError: the CLI prints its message as one line on
stderr and exits with its code. Anything else is a bug (a traceback with --traceback).
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    INTERNAL = 1  # a bug: unexpected exception
    USAGE = 2  # bad flags or arguments (click's own code)
    BAD_INPUT = 3  # unreadable or invalid tape, file or config
    VERIFY_FAILED = 4  # verify found problems
    REGRESSION = 5  # diff/check: a regression or a rule violated
    NO_PERMISSION = 6  # missing privilege (root, CAP_BPF) or unwritable output
    UNSUPPORTED = 7  # the host lacks something needed (bcc, headers, tracepoint, cgroup v2)
    DISK_FULL = 8  # ran out of space; what was written is kept
    EXPORT_FAILED = 9  # an OTLP receiver refused data (4xx, partial rejections) or stayed unreachable after retries
    UNREACHABLE = 10  # object storage (S3) could not be reached; every part is kept locally
    INTERRUPTED = 130


class FlowtapeError(Exception):
    """A failure with a one-line message for the user and an exit code."""

    exit_code: Exit = Exit.BAD_INPUT

    def __init__(self, message: str, exit_code: Exit | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class TapeError(FlowtapeError):
    """The tape (folder, manifest or part) cannot be read as a flowtape tape."""


class SchemaError(FlowtapeError):
    """Rows do not fit a table's schema; the message names table and column."""


class QueryError(FlowtapeError):
    """A SQL query failed."""

    @classmethod
    def failed(cls, e: Exception) -> "FlowtapeError":
        """The engine's error as one line: its first two non-empty lines, at most 300 characters
        (running out of memory within the engine's limit: out_of_memory)."""
        if is_out_of_memory(e):
            return out_of_memory(e)
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        return cls(f"query failed: {' '.join(lines[:2])[:300] if lines else type(e).__name__}")


class UsageError(FlowtapeError):
    exit_code = Exit.USAGE


class PermissionDenied(FlowtapeError):
    exit_code = Exit.NO_PERMISSION


class Unsupported(FlowtapeError):
    exit_code = Exit.UNSUPPORTED


class DiskFull(FlowtapeError):
    exit_code = Exit.DISK_FULL


class Unreachable(FlowtapeError):
    """Object storage did not answer (network gone, endpoint down): retrying later can succeed."""

    exit_code = Exit.UNREACHABLE


def is_out_of_memory(e: BaseException) -> bool:
    """DuckDB ran out of memory within its memory_limit (its OutOfMemoryException, or that error
    re-raised as text by a reader)."""
    return type(e).__name__ == "OutOfMemoryException" or "Out of Memory Error" in str(e)


def out_of_memory(e: BaseException) -> FlowtapeError:
    """Not a bug and not bad input: the host (or the limit given) has too little memory for this
    query. One line saying what to change; exit 7 (the host lacks something needed)."""
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    return FlowtapeError(f"DuckDB ran out of memory within its limit ({first[:160]}): free memory on the host "
                         "or raise the limit (export otlp --memory-limit, 1GB by default)", Exit.UNSUPPORTED)
