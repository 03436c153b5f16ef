"""Typed domain errors.

Domain code (everything under ``pixelrpc.models``) raises these and never imports grpc.
The service layer maps each class to a gRPC status code in one table
(``pixelrpc.services.errors.STATUS_FOR_ERROR``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The most characters of a caller's value an error message or detail repeats. Messages travel in gRPC
# trailers (a few KiB in all): echoing a 10,000-character model name whole would turn INVALID_ARGUMENT
# into RESOURCE_EXHAUSTED on the client, and would fill logs with it.
ECHO_LIMIT = 200


def clip(value: object, limit: int = ECHO_LIMIT) -> str:
    """``str(value)`` cut to at most ``limit`` characters, for repeating caller input in an error.

    A cut text ends with ``…(N characters)`` so the reader knows it was longer. Quote it at the call
    site as before: ``f"invalid model name {clip(name)!r}"``.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    tail = f"…({len(text)} characters)"
    if len(tail) >= limit:
        return text[:limit]
    return text[: limit - len(tail)] + tail


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: ``field`` is a dotted path (``options.beam_width``)."""

    field: str
    description: str


class PixelRPCError(Exception):
    """Base class of every error the domain raises on purpose."""

    def __init__(self, message: str, *, violations: list[FieldViolation] | None = None):
        super().__init__(message)
        self.message = message
        self.violations: list[FieldViolation] = list(violations or [])

    def __reduce__(self):
        """Pickled whole (message and field violations): errors cross the caption decoding worker's
        process boundary (``services/decode_worker.py``)."""
        return _rebuild_error, (type(self), self.message, self.violations)


def _rebuild_error(cls: type, message: str, violations: list[FieldViolation]) -> PixelRPCError:
    exc = cls.__new__(cls)
    PixelRPCError.__init__(exc, message, violations=violations)
    return exc


class InvalidInput(PixelRPCError):
    """The caller sent something malformed or out of range (INVALID_ARGUMENT)."""

    def __init__(self, message: str, *, field: str | None = None,
                 violations: list[FieldViolation] | None = None):
        vs = list(violations or [])
        if field is not None and not vs:
            vs.append(FieldViolation(field, message))
        super().__init__(message, violations=vs)


class ModelNotFound(PixelRPCError):
    """No such model or version in the registry (NOT_FOUND)."""


class ModelCorrupt(PixelRPCError):
    """A stored model failed verification (sha256 mismatch, missing file, unsafe format) (DATA_LOSS)."""


class FailedPrecondition(PixelRPCError):
    """The request is well formed but the system is not in a state to run it (FAILED_PRECONDITION)."""


class RegistryUnavailable(PixelRPCError):
    """The registry folder is gone, unmounted or unreadable (UNAVAILABLE): retry once it is back.

    Models already loaded keep serving; the server recovers without a restart when the folder returns.
    """


class WorkerLost(PixelRPCError):
    """A worker process of the server (caption decoding) exited mid-job (UNAVAILABLE): retry; the
    server starts a new one on the next call."""


class Overloaded(PixelRPCError):
    """The queue is full (RESOURCE_EXHAUSTED)."""


class LimitExceeded(PixelRPCError):
    """A payload is larger than a configured limit (RESOURCE_EXHAUSTED)."""


class RegistryConflict(PixelRPCError):
    """Publishing lost a race or would overwrite an existing version (ALREADY_EXISTS)."""


class Cancelled(PixelRPCError):
    """The caller went away; the job stopped between two steps (CANCELLED)."""


class DeadlineExceeded(PixelRPCError):
    """The job ran out of its deadline (DEADLINE_EXCEEDED)."""


DEADLINE_PASSED = "the call's deadline passed before the job finished"  # DeadlineExceeded's usual message


class StreamStalled(PixelRPCError):
    """A stream's client read nothing for the stall limit; the stream was ended (ABORTED)."""


@dataclass
class CancelToken:
    """A flag a long job polls between steps; the service sets it on cancel or deadline.

    ``parent``: the token of a whole of which this job is one part (one request of a stream that
    carries many): cancelling the parent, or its deadline passing, stops this job too; this token's
    own cancel and deadline stop this job alone.
    """

    reason: str | None = None
    deadline: float | None = None  # time.monotonic() value
    parent: CancelToken | None = field(default=None, repr=False)
    _cancelled: bool = field(default=False, repr=False)

    def cancel(self, reason: str = "cancelled by the caller") -> None:
        self.reason = reason
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled or (self.parent is not None and self.parent.cancelled)

    def check(self) -> None:
        """Raise ``Cancelled`` or ``DeadlineExceeded`` if the job should stop now."""
        import time

        if self.parent is not None:
            self.parent.check()
        if self._cancelled:
            raise Cancelled(self.reason or "cancelled")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineExceeded(DEADLINE_PASSED)
