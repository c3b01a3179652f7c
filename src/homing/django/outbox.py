"""The outbox in Django's transaction: publish an event with the change that caused it.

::

    with transaction.atomic():
        user.name = new_name
        user.save()
        publish(UserNameChanged(user_id=user.id, new_name=new_name))   # staged with the ORM

When the block commits, the event is published (``transaction.on_commit``) before the view
returns. If the block rolls back, nothing is published. If the broker is down, or the process
dies between the commit and the publish, the row waits in ``homing_outbox``: the next publish
that succeeds drains what waited longer than ``DRAIN_AGE`` seconds (as
:class:`homing.outbox.SQLOutbox` does), and so does ``manage.py homing outbox flush`` (Cloud
Scheduler, or a cron job, for an instance that gets no traffic). An event keeps its id however
often it is published, so the push endpoint runs its handler once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.db import DatabaseError, transaction
from django.db.models import F
from pydantic import BaseModel

import homing.django.config as config
from homing.app import Homing
from homing.errors import PublishFailed, StoreError
from homing.publishers.base import OutgoingMessage

logger = logging.getLogger("homing.outbox")

#: Rows younger than this many seconds are left to the request that staged them.
DRAIN_AGE = 10.0
#: A publish drains older rows when the last drain is this many seconds old (or one failed).
DRAIN_INTERVAL = 30.0


@dataclass(frozen=True, slots=True)
class FlushReport:
    """What a flush did."""

    published: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class _Drains:
    """When this process last drained the outbox, and whether publishes have failed since."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last = time.monotonic()
        self.backlog = True  # what an earlier process left: drained by the first publish


_drains = _Drains()


def publish(
    event: BaseModel,
    *,
    event_id: str | None = None,
    attributes: Mapping[str, str] | None = None,
    ordering_key: str | None = None,
    delay: timedelta | None = None,
    at: datetime | None = None,
    homing: Homing | None = None,
    using: str | None = None,
) -> str:
    """Sign ``event``, stage it in the outbox and publish it when the transaction commits.

    Inside ``transaction.atomic(using=...)`` the row is written in that transaction and the
    publish waits for its commit; outside one the row commits at once and is published now.
    Returns the event id. A failed publish does not raise (the change has committed): the
    event waits in the outbox, and the reason is logged.

    Args:
        delay: deliver it this much later (or ``at``, a timezone-aware time), on an event
            type declared with a transport that can delay (``transport="tasks"``); checked
            here, before anything is staged. A row published late keeps its time.
        homing: the service (default: ``settings.HOMING["APP"]``).
        using: the database (default: ``settings.HOMING["DATABASE"]``).

    Raises:
        InvalidDelay: the delay is invalid or its transport cannot keep it.
    """
    from homing.django.models import OutboxEntry

    target = homing if homing is not None else config.service()
    alias = using or config.database()
    message = target.sign(
        event,
        event_id=event_id,
        attributes=attributes,
        ordering_key=ordering_key,
        delay=delay,
        at=at,
    )
    OutboxEntry.objects.using(alias).create(
        event_id=message.event_id,
        event_type=message.event_type,
        data=message.data,
        attributes=orjson.dumps(dict(message.attributes)).decode(),
        ordering_key=message.ordering_key,
        created_at=datetime.now(UTC),
        attempts=0,
        last_error=None,
        deliver_at=message.deliver_at,
    )
    transaction.on_commit(lambda: send(message, homing=target, using=alias), using=alias)
    return message.event_id


async def apublish(
    event: BaseModel,
    *,
    event_id: str | None = None,
    attributes: Mapping[str, str] | None = None,
    ordering_key: str | None = None,
    delay: timedelta | None = None,
    at: datetime | None = None,
    homing: Homing | None = None,
    using: str | None = None,
) -> str:
    """:func:`publish` from async code (the row commits at once: async code holds no
    ``atomic()`` block)."""
    return await sync_to_async(publish, thread_sensitive=True)(
        event,
        event_id=event_id,
        attributes=attributes,
        ordering_key=ordering_key,
        delay=delay,
        at=at,
        homing=homing,
        using=using,
    )


def send(message: OutgoingMessage, *, homing: Homing, using: str) -> bool:
    """Publish a staged message whose transaction committed; ``True`` once published.

    ``False`` when it waits in the outbox (the broker or the database failed; logged). Then,
    or when the last drain is older than :data:`DRAIN_INTERVAL`, older rows are drained.
    """
    from homing.django.models import OutboxEntry

    try:
        config.loop.run(_publish(homing, message))
    except PublishFailed as exc:
        logger.warning("event %s waits in the outbox: %s", message.event_id, exc)
        _drains.backlog = True
        _record_failure(message.event_id, str(exc), using)
        return False
    try:
        OutboxEntry.objects.using(using).filter(event_id=message.event_id).delete()
    except DatabaseError as exc:  # published: a later drain publishes it once more, same id
        logger.warning("the outbox row of %s stays: %s", message.event_id, exc)
    if _drains.backlog or time.monotonic() - _drains.last > DRAIN_INTERVAL:
        try:
            flush(homing=homing, using=using, older_than=DRAIN_AGE, limit=50)
        except StoreError as exc:
            logger.warning("draining the outbox failed; it is tried again later: %s", exc)
    return True


async def _publish(homing: Homing, message: OutgoingMessage) -> None:
    await config.started(homing)
    if homing.publisher is None:
        raise PublishFailed(
            "the service has no publisher",
            event_type=message.event_type,
            event_id=message.event_id,
        )
    # Timed and told to the hooks as Homing.publish does; each event type to its transport.
    await homing.hooks.publish(homing.transports, message)


def _record_failure(event_id: str, error: str, using: str) -> None:
    from homing.django.models import OutboxEntry

    try:
        OutboxEntry.objects.using(using).filter(event_id=event_id).update(
            attempts=F("attempts") + 1, last_error=error[:2000]
        )
    except DatabaseError as exc:
        logger.warning("could not record the failed publish of %s: %s", event_id, exc)


def flush(
    *,
    limit: int = 500,
    older_than: float = 0.0,
    homing: Homing | None = None,
    using: str | None = None,
) -> FlushReport:
    """Publish up to ``limit`` waiting events, oldest first (staged ``older_than`` seconds
    ago or more); stop at the first the broker refuses.

    Synchronous (call :func:`aflush` from async code). Raises
    :class:`~homing.errors.StoreError` when the database fails.
    """
    from homing.django.models import OutboxEntry

    target = homing if homing is not None else config.service()
    alias = using or config.database()
    if not _drains.lock.acquire(blocking=False):
        return FlushReport()  # another thread of this process is draining
    try:
        _drains.last = time.monotonic()
        rows = OutboxEntry.objects.using(alias).order_by("created_at")
        if older_than > 0:
            rows = rows.filter(created_at__lte=datetime.now(UTC) - timedelta(seconds=older_than))
        published = failed = 0
        errors: list[str] = []
        for row in list(rows[:limit]):
            message = OutgoingMessage(
                data=bytes(row.data),
                attributes=orjson.loads(row.attributes),
                event_type=row.event_type,
                event_id=row.event_id,
                ordering_key=row.ordering_key,
                deliver_at=row.deliver_at,
            )
            try:
                config.loop.run(_publish(target, message))
            except PublishFailed as exc:
                failed += 1
                errors.append(str(exc))
                _record_failure(row.event_id, str(exc), alias)
                break
            OutboxEntry.objects.using(alias).filter(event_id=row.event_id).delete()
            published += 1
        _drains.backlog = failed > 0
    except DatabaseError as exc:
        raise StoreError(f"draining the outbox: {type(exc).__name__}: {exc}") from exc
    finally:
        _drains.lock.release()
    if published or failed:
        logger.info("outbox: %d published, %d failed", published, failed)
    return FlushReport(published=published, failed=failed, errors=errors)


async def aflush(**options: Any) -> FlushReport:
    """:func:`flush` from async code."""
    return await sync_to_async(flush, thread_sensitive=True)(**options)


def count(*, using: str | None = None) -> int:
    """How many events wait in the outbox."""
    from homing.django.models import OutboxEntry

    return int(OutboxEntry.objects.using(using or config.database()).count())
