"""The outbox's request half: staging an event in the caller's transaction, and sending it once
that transaction has committed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.util.concurrency import greenlet_spawn

from homing.errors import PublishFailed, StoreError
from homing.hooks import Hooks
from homing.outbox.draining import DrainingOutbox
from homing.outbox.table import delete_row, find_row, insert_row, select_event_id
from homing.publishers.base import OutgoingMessage, Publisher
from homing.stores.sql.engine import driver_cursor, translate_errors

logger = logging.getLogger("homing.outbox")


class SQLOutbox(DrainingOutbox):
    """Events waiting for the broker, in the ``homing_outbox`` table of ``engine``'s database.

    Once an event is published its row is no longer needed; rows are deleted in batches rather
    than one transaction per event: in the next :meth:`stage` (inside the caller's transaction,
    no commit of its own), or by a sweep ``sweep_delay`` seconds later, or at :meth:`aclose`.
    Until then this process knows them as published and never sends them again; a process
    killed in between leaves rows that a later drain publishes once more, under the same event
    id, which the push endpoint recognises.

    The outbox drains itself: :meth:`start` (from the app's lifespan) publishes what a previous
    process left behind, and a successful :meth:`send` publishes older waiting rows when this
    process saw publishes fail, or when it last looked more than ``drain_interval`` seconds ago
    (rows another instance left). ``homing outbox flush`` and :class:`FlushEndpoint` remain for
    instances that get no traffic.

    Args:
        drain_age: rows younger than this many seconds are left to the request that staged
            them (its send is probably under way) by the periodic and start-up drains.
        hooks: the service's hooks (``homing.hooks``): every publish tried is timed and told
            to them, as :meth:`~homing.Homing.publish` does, so its metrics count outbox
            publishes too.
        clock: the time in seconds since the epoch that rows are stamped with when staged and
            aged by (``drain_age``). Wall time, not ``time.monotonic``: a row staged by one
            instance is aged by another. Tests pass a clock they move.
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
        super().__init__(
            engine,
            publisher,
            backlog_limit=backlog_limit,
            drain_age=drain_age,
            drain_interval=drain_interval,
            sweep_delay=sweep_delay,
            keep_published=keep_published,
            hooks=hooks,
            clock=clock,
        )
        self._exists = select_event_id()
        self._insert_row = insert_row(engine)
        self._delete_row = delete_row(engine)
        self._find_row = find_row(engine)

    async def stage(
        self, transaction: AsyncSession | AsyncConnection, message: OutgoingMessage
    ) -> OutgoingMessage:
        """Write ``message`` to the outbox inside the caller's open transaction.

        Raises :class:`~homing.errors.StoreError` when the database fails (nothing is
        committed then: the caller's transaction is lost with its connection).
        """
        swept = self._sweepable()
        row = self._insert_row.parameters(
            event_id=message.event_id,
            event_type=message.event_type,
            data=message.data,
            attributes=orjson.dumps(dict(message.attributes)).decode(),
            ordering_key=message.ordering_key,
            created_at=self._now(),
            attempts=0,
            last_error=None,
            deliver_at=message.deliver_at,
        )
        async with translate_errors(f"staging event {message.event_id!r}", self.engine):
            connection = (
                await transaction.connection()
                if isinstance(transaction, AsyncSession)
                else transaction
            )
            await connection.run_sync(self._stage_rows, row, swept)
        if swept:
            self._riding[message.event_id] = swept
        return message

    def _stage_rows(self, connection: Connection, row: tuple[Any, ...], swept: list[str]) -> None:
        with driver_cursor(connection) as cursor:  # in the caller's transaction
            if swept:
                cursor.executemany(self._delete_row.sql, [(event_id,) for event_id in swept])
            cursor.execute(self._insert_row.sql, row)

    async def send(self, message: OutgoingMessage) -> bool:
        """Publish a staged message whose transaction has committed; ``True`` once published.

        ``False`` when it was not published now — the broker or the database failed; it
        waits in the outbox and the reason is logged — or when there is nothing to send (its
        transaction rolled back, or it was sent already). Never raises for those: the state
        change has committed, so the caller's request has succeeded either way.
        """
        event_id = message.event_id
        swept = self._riding.pop(event_id, None)
        if event_id in self._published:
            return False
        try:
            async with translate_errors(
                f"looking up event {event_id!r} in the outbox", self.engine
            ):
                staged = await greenlet_spawn(self._staged, event_id)
        except StoreError as exc:
            logger.error("event %s waits in the outbox: %s", event_id, exc)
            self._backlog = True
            return False
        if not staged:  # rolled back, or sent and swept already
            return False
        for swept_id in swept or ():  # its transaction committed, and so did these deletes
            self._published.pop(swept_id, None)
        try:
            await self._publish(message)
        except PublishFailed as exc:
            logger.warning("event %s waits in the outbox: %s", event_id, exc)
            self._backlog = True
            await self._record_failure(event_id, str(exc))
            return False
        self._mark_published(event_id)
        if self._backlog or time.monotonic() - self._last_drain > self.drain_interval:
            await self._drain_quietly(older_than=0.0 if self._backlog else self.drain_age)
        return True

    def _staged(self, event_id: str) -> bool:
        with self.engine.sync_engine.connect() as connection, driver_cursor(connection) as cursor:
            return self._find_row(cursor, event_id=event_id).fetchone() is not None

    async def committed(self, message: OutgoingMessage, *, within: float = 10.0) -> bool:
        """Whether the transaction that staged ``message`` committed, when its COMMIT failed.

        A connection that breaks during COMMIT leaves it in doubt: the server may have
        committed before the answer was lost. The staged row says which. While the database
        cannot be reached, it is asked again for up to ``within`` seconds; ``False`` then, or
        when the row is not there (rolled back). Never raises for database errors.
        """
        deadline = time.monotonic() + within
        delay = 0.05
        while True:
            try:
                async with (
                    translate_errors(f"looking up event {message.event_id!r}"),
                    self.engine.connect() as connection,
                ):
                    found = await connection.scalar(self._exists, {"event_id": message.event_id})
            except StoreError as exc:
                if time.monotonic() + delay > deadline:
                    logger.warning("event %s: commit still in doubt: %s", message.event_id, exc)
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            return found is not None or message.event_id in self._published
