"""The transactional outbox: an event is written in the same database transaction as the state
change that caused it, so it can never be lost between the database and the broker.

::

    async with sessions.begin() as session:
        user.name = new_name
        staged = await outbox.stage(session, homing.sign(UserNameChanged(...)))
    await outbox.send(staged)   # published now when the broker answers; else it waits

A staged event that could not be sent stays in ``homing_outbox`` until :meth:`SQLOutbox.flush`
publishes it: from the authenticated HTTP route (Cloud Scheduler), the ``homing outbox flush``
command, or the next ``send``. Its event id never changes, so a republished event is recognised
downstream as the same event.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.util.concurrency import greenlet_spawn

from homing.auth import OIDCVerifier
from homing.errors import (
    AuthenticationFailed,
    ConfigurationError,
    PublishFailed,
    PushRejected,
    StoreError,
)
from homing.publishers.base import OutgoingMessage, Publisher
from homing.stores.sql import CompiledStatement, driver_cursor, translate_errors
from homing.stores.sql import outbox as outbox_table

logger = logging.getLogger("homing.outbox")


@dataclass(frozen=True, slots=True)
class FlushReport:
    """What a flush did."""

    published: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class SQLOutbox:
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
        on_published: told of every publish tried, with its duration and error (pass
            ``homing.published`` so that the service's hooks, such as its metrics, see them).
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
        on_published: Callable[[OutgoingMessage, float, BaseException | None], None] | None = None,
    ):
        self.engine = engine
        self.publisher = publisher
        self.backlog_limit = backlog_limit
        self.drain_age = drain_age
        self.drain_interval = drain_interval
        self.sweep_delay = sweep_delay
        self.keep_published = keep_published
        self.on_published = on_published
        self._backlog = False
        self._last_drain = time.monotonic()
        self._published: dict[str, float] = {}  # published here (when), row not yet deleted
        self._riding: dict[str, list[str]] = {}  # staged event id -> ids its transaction deletes
        self._sweeper: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        table = outbox_table.c
        # Built once: executed with parameters, they are compiled once too. The statements of
        # stage() and send() are compiled for the dialect up front and run on the driver's
        # cursor: they never change, and SQLAlchemy's per-statement work cost more than the
        # database's own (measured on POST /change-name).
        self._exists = select(table.event_id).where(table.event_id == bindparam("event_id"))
        self._delete = delete(outbox_table).where(
            table.event_id.in_(bindparam("ids", expanding=True))
        )
        self._insert_row = CompiledStatement(
            engine,
            outbox_table.insert().values(
                {column.name: bindparam(column.name) for column in outbox_table.c}
            ),
        )
        self._delete_row = CompiledStatement(
            engine, delete(outbox_table).where(table.event_id == bindparam("event_id"))
        )
        self._find_row = CompiledStatement(engine, self._exists)

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
            created_at=datetime.now(UTC),
            attempts=0,
            last_error=None,
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
            keep -= (datetime.now(UTC) - staged_at).total_seconds()
        self._published[event_id] = time.monotonic() + max(0.0, keep)
        self._schedule_sweep()

    def _schedule_sweep(self) -> None:
        if self._sweeper is not None or not self._published:
            return
        first = next(iter(self._published.values()))
        due = max(self.sweep_delay, first - time.monotonic())
        self._sweeper = asyncio.get_running_loop().call_later(due, self._spawn, self.sweep)

    async def _publish(self, message: OutgoingMessage) -> None:
        if self.on_published is None:
            await self.publisher.publish(message)
            return
        started = time.perf_counter()
        try:
            await self.publisher.publish(message)
        except BaseException as exc:
            self.on_published(message, time.perf_counter() - started, exc)
            raise
        self.on_published(message, time.perf_counter() - started, None)

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
        table = outbox_table.c
        query = select(outbox_table).order_by(table.created_at)
        if older_than > 0:
            query = query.where(
                table.created_at <= datetime.now(UTC) - timedelta(seconds=older_than)
            )
        if self._published:
            query = query.where(table.event_id.not_in(list(self._published)))
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
            await asyncio.sleep(self.drain_age)
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
        query = select(func.count()).select_from(outbox_table)
        if self._published:
            query = query.where(outbox_table.c.event_id.not_in(list(self._published)))
        async with translate_errors("counting the outbox"), self.engine.connect() as connection:
            return int(await connection.scalar(query) or 0)

    async def _record_failure(self, event_id: str, error: str) -> None:
        try:
            async with (
                translate_errors(f"recording a failed publish of {event_id!r}"),
                self.engine.begin() as connection,
            ):
                await connection.execute(
                    update(outbox_table)
                    .where(outbox_table.c.event_id == event_id)
                    .values(attempts=outbox_table.c.attempts + 1, last_error=error[:2000])
                )
        except StoreError as exc:
            logger.warning("could not record the failed publish of %s: %s", event_id, exc)


#: How many published rows one statement deletes at most.
_SWEEP_BATCH = 500


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class FlushEndpoint:
    """``POST``: flush the outbox; for Cloud Scheduler. Refuses callers without credentials.

    Accepts ``Authorization: Bearer <token>`` where the token is ``token`` (compared in constant
    time) or an OIDC token that ``oidc`` accepts (Cloud Scheduler's OIDC token for its service
    account). Answers 200 with the counts, or 503 when some events could not be published.
    """

    def __init__(
        self,
        outbox: SQLOutbox,
        *,
        token: str | None = None,
        oidc: OIDCVerifier | None = None,
        limit: int = 500,
    ) -> None:
        if not token and oidc is None:
            raise ConfigurationError("the outbox flush route needs a token or an OIDC verifier")
        self.outbox = outbox
        self._token = token.encode() if token else None
        self._oidc = oidc
        self.limit = limit

    async def _authorize(self, authorization: str | None) -> None:
        scheme, _, credentials = (authorization or "").partition(" ")
        if self._token is not None and scheme.lower() == "bearer":
            if hmac.compare_digest(credentials.strip().encode(), self._token):
                return
            if self._oidc is None:
                raise AuthenticationFailed("the flush token is not valid")
        if self._oidc is None:
            raise AuthenticationFailed("the flush route needs 'Authorization: Bearer <token>'")
        await self._oidc.verify(authorization)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        authorization = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None
        )
        status: int
        payload: dict[str, object]
        if scope["method"] != "POST":
            status, payload = 405, {"outcome": "method_not_allowed"}
        else:
            try:
                await self._authorize(authorization)
            except PushRejected as exc:
                status, payload = exc.status_code, {"outcome": exc.code, "detail": exc.detail}
            else:
                try:
                    report = await self.outbox.flush(limit=self.limit)
                    waiting = await self.outbox.count()
                except StoreError as exc:
                    logger.error("outbox flush: %s", exc)
                    status, payload = 503, {"outcome": "store_unavailable"}
                else:
                    status = 503 if report.failed else 200
                    payload = {
                        "published": report.published,
                        "failed": report.failed,
                        "pending": waiting,
                    }
        body = orjson.dumps(payload)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
