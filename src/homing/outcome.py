"""How a push is answered: a status, a one-word outcome and, maybe, why.

The bottom of the house: the pipeline makes these, the adapters turn them into HTTP answers,
hooks and telemetry read them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PushResult:
    """How a push was answered: the HTTP status, a one-word outcome and, maybe, why."""

    status: int
    outcome: str
    detail: str | None = None
    #: Seconds the sender should wait before trying again (the ``Retry-After`` header):
    #: Cloud Tasks slows the queue for it; Pub/Sub backs off on any failure anyway.
    retry_after: int | None = None

    @property
    def acked(self) -> bool:
        return 200 <= self.status < 300


#: The answers every push may get, made once.
DONE = PushResult(204, "done")
DUPLICATE = PushResult(204, "duplicate")
IN_PROGRESS = PushResult(409, "in_progress", "another delivery of this event is running")
STORE_DOWN = PushResult(503, "store_unavailable", "the dedupe store is unavailable", retry_after=10)
STORE_BUSY = PushResult(
    503, "store_unavailable", "every database connection is in use", retry_after=1
)

#: Every outcome a push (or a replay) can have: the pipeline's and the refusals'. Metrics and
#: logs label by these alone; any other reads as ``other``.
OUTCOMES = frozenset(
    {
        "done",
        "duplicate",
        "quarantined",
        "retry",
        "handler_failed",
        "in_progress",
        "store_unavailable",
        "unknown_event",
        "already_done",
        "malformed",
        "unauthenticated",
        "forbidden",
        "rejected",
        "too_large",
    }
)
OTHER = "other"
