"""The outbox's background half: publishing what waits in ``homing_outbox``, and deleting the
rows of what was published.

:class:`~homing.outbox.SQLOutbox` adds the request's half (:mod:`homing.outbox.staging`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from homing.errors import PublishFailed, StoreError
from homing.hooks import Hooks
from homing.outbox.table import add_failed_attempt, count_waiting, delete_events, select_waiting
from homing.publishers.base import OutgoingMessage, Publisher
from homing.stores.sql.engine import translate_errors

logger = logging.getLogger("homing.outbox")

#: How many published rows one statement deletes at most.
_SWEEP_BATCH = 500


@dataclass(frozen=True, slots=True)
class FlushReport:
    """What a flush did."""

    published: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite keeps no zone; homing writes UTC
        return value.replace(tzinfo=UTC)
    return value


#: Seconds :meth:`DrainingOutbox.aclose` lets a drain under way finish before cancelling it.
_CLOSE_GRACE = 5.0


class DrainingOutbox:
    """Publishes the events that wait in the outbox, and deletes the rows of published ones.

    The arguments and the behaviour are :class:`~homing.outbox.SQLOutbox`'s, which is this plus
    staging; this half keeps the state both halves share: the ids published here whose rows are
    not yet deleted, and whether publishes failed (a backlog).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        publisher: Publisher,
        *,
        backlog_limit: int = 50,
        drain_age: float = 10.0,
        drain_interval: float = 30.0,
        sweep_delay: float = 1.0,
        keep_published: float = 12.0,
        hooks: Hooks | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.engine = engine
        self.clock = clock
        self.publisher = publisher
        self.backlog_limit = backlog_limit
        self.drain_age = drain_age
        self.drain_interval = drain_interval
        self.sweep_delay = sweep_delay
        self.keep_published = keep_published
        self.hooks = hooks if hooks is not None else Hooks()
        self._backlog = False
        self._last_drain = time.monotonic()
        self._published: dict[str, float] = {}  # published here (when), row not yet deleted
        self._riding: dict[str, list[str]] = {}  # staged event id -> ids its transaction deletes
        self._sweeper: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self._delete = delete_events()

    def _sweepable(self, *, everything: bool = False) -> list[str]:
        """Published ids whose rows may go: each is kept until ``keep_published`` seconds after
        it was staged, so that :meth:`committed` still finds it."""
        if everything:
            return list(itertools.islice(self._published, _SWEEP_BATCH))
        now = time.monotonic()
        ids: list[str] = []
        for event_id, sweepable_at in self._published.items():  # in the order published
            if sweepable_at > now or len(ids) == _SWEEP_BATCH:
                break
            ids.append(event_id)
        return ids

    def _mark_published(self, event_id: str, staged_at: datetime | None = None) -> None:
        keep = self.keep_published
        if staged_at is not None:  # a drained row: its commit is long settled
            if staged_at.tzinfo is None:  # SQLite keeps no zone; homing writes UTC
                staged_at = staged_at.replace(tzinfo=UTC)
            keep -= (self._now() - staged_at).total_seconds()
        self._published[event_id] = time.monotonic() + max(0.0, keep)
        self._schedule_sweep()

    def _now(self) -> datetime:
        """The time rows are stamped with when staged, and aged by: :attr:`clock`'s."""
        return datetime.fromtimestamp(self.clock(), UTC)

    def _schedule_sweep(self) -> None:
        if self._sweeper is not None or not self._published:
            return
        first = next(iter(self._published.values()))
        due = max(self.sweep_delay, first - time.monotonic())
        self._sweeper = asyncio.get_running_loop().call_later(due, self._spawn, self.sweep)

    async def _publish(self, message: OutgoingMessage) -> None:
        await self.hooks.publish(self.publisher, message)

    def _spawn(self, function: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.get_running_loop().create_task(function())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def sweep(self, *, everything: bool = False) -> None:
        """Delete the rows of events this process published; a failure is logged and retried.

        A row stays ``keep_published`` seconds after its publish (``everything``: not even
        that), so that :meth:`committed` still finds it.
        """
        self._sweeper = None
        self._riding.clear()  # their ids stay in _published until this delete commits
        swept = self._sweepable(everything=everything)
        if not swept:
            self._schedule_sweep()
            return
        try:
            async with (
                translate_errors("deleting published events from the outbox"),
                self.engine.begin() as connection,
            ):
                await connection.execute(self._delete, {"ids": swept})
        except StoreError as exc:
            logger.warning("outbox rows of published events stay until the next sweep: %s", exc)
        else:
            for event_id in swept:
                self._published.pop(event_id, None)
        self._schedule_sweep()

    async def pending(self, *, limit: int = 100, older_than: float = 0.0) -> list[OutgoingMessage]:
        """The oldest events waiting to be published (staged ``older_than`` seconds ago or more).

        Raises :class:`~homing.errors.StoreError` when the database fails.
        """
        return [message for message, _ in await self._waiting(limit, older_than)]

    async def _waiting(
        self, limit: int, older_than: float
    ) -> list[tuple[OutgoingMessage, datetime]]:
        query = select_waiting(
            older_than=older_than, excluding=list(self._published), now=self._now()
        )
        async with translate_errors("reading the outbox"), self.engine.connect() as connection:
            rows = (await connection.execute(query.limit(limit))).mappings().all()
        return [
            (
                OutgoingMessage(
                    data=bytes(row["data"]),
                    attributes=orjson.loads(row["attributes"]),
                    event_type=row["event_type"],
                    event_id=row["event_id"],
                    ordering_key=row["ordering_key"],
                    deliver_at=_utc(row["deliver_at"]),
                ),
                row["created_at"],
            )
            for row in rows
        ]

    async def flush(self, *, limit: int = 500, older_than: float = 0.0) -> FlushReport:
        """Publish up to ``limit`` waiting events, oldest first.

        Stops at the first event the broker refuses (it is down; the rest would wait their
        publish timeout each). Raises :class:`~homing.errors.StoreError` when the database
        fails.
        """
        self._last_drain = time.monotonic()
        published = failed = 0
        errors: list[str] = []
        for message, staged_at in await self._waiting(limit, older_than):
            if message.event_id in self._published:
                continue  # published by a send meanwhile
            try:
                await self._publish(message)
            except PublishFailed as exc:
                failed += 1
                errors.append(str(exc))
                await self._record_failure(message.event_id, str(exc))
                break
            self._mark_published(message.event_id, staged_at)
            published += 1
        self._backlog = failed > 0
        if published or failed:
            logger.info("outbox: %d published, %d failed", published, failed)
        await self.sweep()
        return FlushReport(published=published, failed=failed, errors=errors)

    async def _drain_quietly(self, *, older_than: float) -> None:
        try:
            await self.flush(limit=self.backlog_limit, older_than=older_than)
        except StoreError as exc:
            logger.warning("draining the outbox failed; it is tried again later: %s", exc)
            self._backlog = True

    async def start(self) -> None:
        """Publish, in the background, what an earlier process left in the outbox.

        Rows younger than ``drain_age`` may belong to a send under way in another instance;
        they are looked at again once they are that old.
        """

        async def drain_twice() -> None:
            await self._drain_all(older_than=self.drain_age)
            with contextlib.suppress(TimeoutError):  # (or until aclose)
                await asyncio.wait_for(self._closing.wait(), self.drain_age)
            if self._closing.is_set():
                return
            await self._drain_all(older_than=self.drain_age)

        self._spawn(drain_twice)

    async def _drain_all(self, *, older_than: float) -> None:
        """Batch after batch, until a batch comes back short (or the broker refuses one)."""
        while True:
            try:
                report = await self.flush(limit=self.backlog_limit, older_than=older_than)
            except StoreError as exc:
                logger.warning("draining the outbox failed; it is tried again later: %s", exc)
                self._backlog = True
                return
            if report.failed or report.published < self.backlog_limit:
                return

    async def aclose(self) -> None:
        """Stop the background work and delete the rows of what was published."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        # A drain or sweep in the middle of a statement is let finish (a task cancelled there
        # would leave its connection to the garbage collector); one still waiting stops now.
        self._closing.set()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=_CLOSE_GRACE)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._published:  # nothing will look for them in this process any more
            left = len(self._published)
            await self.sweep(everything=True)
            if len(self._published) == left:
                break  # the database failed: a later process publishes them again
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def count(self) -> int:
        """How many events wait (not counting the rows of events this process published)."""
        query = count_waiting(excluding=list(self._published))
        async with translate_errors("counting the outbox"), self.engine.connect() as connection:
            return int(await connection.scalar(query) or 0)

    async def _record_failure(self, event_id: str, error: str) -> None:
        try:
            async with (
                translate_errors(f"recording a failed publish of {event_id!r}"),
                self.engine.begin() as connection,
            ):
                await connection.execute(add_failed_attempt(event_id, error))
        except StoreError as exc:
            logger.warning("could not record the failed publish of %s: %s", event_id, exc)
