"""
Name the states of a request row, of a batch row, and the kinds of rows in ``async_task_status``.

A request moves ``PENDING`` -> ``PROCESSING`` -> one of the final states; ``RETRY`` marks a request
whose transient error waits for its next try. Only rows in an open state may be claimed and sent.
A batch has one row of its own, whose status is a :class:`BatchState`.
"""

from __future__ import annotations

from enum import StrEnum


class RequestState(StrEnum):
    """State of one request row."""

    PENDING = "PENDING"
    """Stored, not yet sent."""
    PROCESSING = "PROCESSING"
    """Claimed by a worker; being sent or waiting for its reply."""
    RETRY = "RETRY"
    """A transient error occurred; the request waits for its next try."""
    SUCCESS = "SUCCESS"
    """The platform answered with ``infcode`` 0."""
    FAILURE = "FAILURE"
    """A business refusal, or a transient error that exhausted its tries."""
    REJECTED = "REJECTED"
    """Invalid input; never sent."""
    UNKNOWN = "UNKNOWN"
    """A write was sent and its outcome is not known; resolve it by policy."""
    CANCELLED = "CANCELLED"
    """Cancelled before it was sent."""


FINAL: frozenset[RequestState] = frozenset(
    {
        RequestState.SUCCESS,
        RequestState.FAILURE,
        RequestState.REJECTED,
        RequestState.UNKNOWN,
        RequestState.CANCELLED,
    }
)
"""States a request never leaves on its own; a final row is never claimed or sent again."""

OPEN: frozenset[RequestState] = frozenset(RequestState) - FINAL
"""States from which a request may still be claimed and sent."""


class BatchState(StrEnum):
    """State of a batch's own row."""

    STORED = "STORED"
    """Stored through the status API; sent once a ``medins_stored_batch`` run is triggered for it."""
    RUNNING = "RUNNING"
    DONE = "DONE"
    CANCELLED = "CANCELLED"


class RequestKind(StrEnum):
    """Kind of a row: the interface's kind from the catalog, or the batch's own row."""

    QUERY = "query"
    """Safe to repeat."""
    WRITE = "write"
    """Not safe to repeat: an unanswered write becomes ``UNKNOWN``."""
    SESSION = "session"
    """Sign-in and sign-out."""
    BATCH = "batch"
    """The batch's own row."""
