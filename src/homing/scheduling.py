"""When a published event is to be delivered: ``delay=`` or ``at=`` turned into one time.

A delayed event carries an absolute delivery time (:attr:`OutgoingMessage.deliver_at`), not a
delay: an event that waits in the outbox and is published late is still delivered at the time
its request asked for, or at once when that time has passed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from homing.errors import InvalidDelay

#: ``at=`` this little in the past is taken for "now" (the caller's clock read a moment ago).
PAST_TOLERANCE = timedelta(seconds=1)
#: A schedule this little beyond a transport's limit is allowed (clocks of two machines).
FUTURE_TOLERANCE = timedelta(seconds=5)


def deliver_at(
    *, delay: timedelta | None, at: datetime | None, now: datetime | None = None
) -> datetime | None:
    """The delivery time ``delay`` or ``at`` asks for (UTC), or ``None`` for "at once".

    Raises:
        InvalidDelay: both given, a negative delay, a naive ``at``, or an ``at`` in the past.
    """
    if delay is None and at is None:
        return None
    if delay is not None and at is not None:
        raise InvalidDelay("give delay= or at=, not both")
    now = now or datetime.now(UTC)
    if delay is not None:
        if not isinstance(delay, timedelta):
            raise InvalidDelay(f"delay must be a datetime.timedelta, not {type(delay).__name__}")
        if delay < timedelta(0):
            raise InvalidDelay(f"delay must not be negative (got {delay.total_seconds():g}s)")
        return now + delay
    assert at is not None
    if not isinstance(at, datetime):
        raise InvalidDelay(f"at must be a datetime.datetime, not {type(at).__name__}")
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidDelay("at must be timezone-aware (e.g. datetime.now(UTC) + ...)")
    if at < now - PAST_TOLERANCE:
        raise InvalidDelay(f"at is in the past ({(now - at).total_seconds():.1f}s ago)")
    return max(at.astimezone(UTC), now)


def check_schedule(
    when: datetime, *, limit: timedelta | None, transport: str, now: datetime | None = None
) -> None:
    """Refuse a delivery time ``transport`` cannot keep (``limit``: how far ahead it can
    schedule; ``None``: it cannot delay at all). A time already past is delivered at once."""
    if limit is None:
        raise InvalidDelay(
            f"{transport} cannot delay an event; publish it at once, or declare its event "
            "type on a transport that can (@homing.event(..., transport='tasks'), Cloud Tasks)"
        )
    ahead = when - (now or datetime.now(UTC))
    if ahead > limit + FUTURE_TOLERANCE:
        raise InvalidDelay(
            f"{transport} schedules at most {_span(limit)} ahead; this event is "
            f"{_span(ahead)} ahead"
        )


def _span(span: timedelta) -> str:
    seconds = span.total_seconds()
    if seconds >= 86400:
        return f"{seconds / 86400:g} days"
    return f"{seconds:g}s"
