"""homing's stores on a Django database connection: dedupe (with the transaction an
``effects="database"`` handler runs in) and quarantine.

Every operation runs synchronously on Django's connection, through asgiref's
``sync_to_async`` as Django's own async ORM does. A handler's transaction gets a thread of its
own (asgiref's ``ThreadSensitiveContext``) for its whole life: Django keeps one connection,
and one ``atomic()`` block, per thread, so the done mark, the handler's ORM calls (``await
Model.objects.acreate(...)``, or :meth:`DjangoTransaction.run`) and the commit all happen on
that thread, in one ``transaction.atomic()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC
from typing import Any, TypeVar

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db import DatabaseError, close_old_connections, connections, transaction
from django.db.utils import InterfaceError, OperationalError

from homing.errors import ConfigurationError, StoreError
from homing.stores.base import (
    Claim,
    DedupeStore,
    QuarantinedMessage,
    QuarantineStore,
    Transaction,
)

T = TypeVar("T")

_TABLE = "homing_handled_events"
_DONE = "done"
_CLAIMED = "claimed"
#: The databases whose SQL the dedupe store speaks (``INSERT ... ON CONFLICT``).
VENDORS = ("sqlite", "postgresql")

#: One writer at a time per SQLite file in this process. SQLite has one write lock, and a
#: transaction that waits for it waits in SQLite's busy handler, which sleeps in steps of up
#: to 100 ms: concurrent pushes would spend their time asleep while the lock is free. Here they
#: queue instead, each woken the moment the one before commits.
_sqlite_writers: dict[str, threading.RLock] = {}
_sqlite_writers_lock = threading.Lock()


def _sqlite_writer(name: str) -> threading.RLock:
    with _sqlite_writers_lock:
        return _sqlite_writers.setdefault(name, threading.RLock())


class _Writer:
    """The in-process writer lock of a SQLite database (``None`` elsewhere), given up after
    the database's own busy timeout, as SQLite would (the transaction then waits in SQLite)."""

    def __init__(self, lock: threading.RLock | None, timeout: float) -> None:
        self.lock, self.timeout = lock, timeout

    def acquire(self) -> bool:
        return self.lock is not None and self.lock.acquire(timeout=self.timeout)

    def release(self, acquired: bool) -> None:
        if acquired and self.lock is not None:
            self.lock.release()

    @contextmanager
    def held(self) -> Iterator[None]:
        acquired = self.acquire()
        try:
            yield
        finally:
            self.release(acquired)


def _describe(exc: BaseException) -> str:
    # The driver's first line: what failed, never the connection's settings.
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def _lost(exc: BaseException) -> bool:
    """The database, not the handler, failed: redeliver rather than count a handler failure."""
    return isinstance(exc, OperationalError | InterfaceError)


class _SQL:
    """The dedupe statements, in the connection's parameter style."""

    def __init__(self, quote: Callable[[str], str]) -> None:
        t = quote(_TABLE)
        self.claim_new = (
            f"INSERT INTO {t} (event_id, state, lease_until) VALUES (%s, '{_CLAIMED}', %s) "
            "ON CONFLICT (event_id) DO NOTHING"
        )
        self.take_expired = (
            f"UPDATE {t} SET lease_until = %s "
            f"WHERE event_id = %s AND state = '{_CLAIMED}' AND lease_until <= %s"
        )
        self.state = f"SELECT state FROM {t} WHERE event_id = %s"
        upsert = (
            f"INSERT INTO {t} (event_id, state, lease_until) VALUES (%s, '{_DONE}', 0) "
            f"ON CONFLICT (event_id) DO UPDATE SET state = '{_DONE}', lease_until = 0"
        )
        self.done = upsert
        # Only an expired claim is taken over; a live claim or a done mark leaves the statement
        # affecting no row (the race is lost).
        self.done_first = f"{upsert} WHERE {t}.state = '{_CLAIMED}' AND {t}.lease_until <= %s"
        self.renew = f"UPDATE {t} SET lease_until = %s WHERE event_id = %s AND state = '{_CLAIMED}'"
        self.release = f"DELETE FROM {t} WHERE event_id = %s AND state = '{_CLAIMED}'"


class DjangoDedupeStore(DedupeStore):
    """Handled event ids in ``homing_handled_events`` on Django's database ``using``.

    ``effects="database"`` handlers run inside ``transaction.atomic(using=using)``, which
    marks the event done as its first statement and commits it with the handler's writes.
    SQLite and PostgreSQL. Database errors leave it as :class:`~homing.errors.StoreError`.

    Args:
        using: the alias in ``DATABASES``.
        done_cache_size: how many ids seen done this process remembers, to answer a
            redelivery without a query.
    """

    transactional = True
    threaded_transactions = True

    def __init__(
        self,
        using: str = "default",
        *,
        done_cache_size: int = 10_000,
        transaction_threads: int = 16,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock=clock)
        self.using = using
        self._threads = transaction_threads
        self._executor: ThreadPoolExecutor | None = None
        self._sql: _SQL | None = None
        self._writer = _Writer(None, 0)
        self._done_cache: dict[str, None] = {}
        self._done_cache_size = done_cache_size

    def _statements(self) -> _SQL:
        if self._sql is None:
            connection = connections[self.using]
            if connection.vendor not in VENDORS:
                raise ConfigurationError(
                    f"DjangoDedupeStore supports {' and '.join(VENDORS)}, not "
                    f"{connection.vendor} (database {self.using!r})"
                )
            if connection.vendor == "sqlite":
                database = connection.settings_dict
                timeout = float((database.get("OPTIONS") or {}).get("timeout", 5))
                self._writer = _Writer(_sqlite_writer(str(database["NAME"])), timeout)
            self._sql = _SQL(connection.ops.quote_name)
        return self._sql

    def _remember_done(self, event_id: str) -> None:
        if self._done_cache_size <= 0:
            return
        self._done_cache[event_id] = None
        if len(self._done_cache) > self._done_cache_size:
            del self._done_cache[next(iter(self._done_cache))]

    def known_done(self, event_id: str) -> bool:
        return event_id in self._done_cache

    async def _write(self, doing: str, work: Callable[[Any, _SQL], T]) -> T:
        """``work(cursor, sql)`` in an ``atomic()`` block of its own, on Django's thread."""

        def run() -> T:
            connection = connections[self.using]
            if not connection.in_atomic_block:
                connection.close_if_unusable_or_obsolete()
            sql = self._statements()
            with (
                self._writer.held(),
                transaction.atomic(using=self.using),
                connection.cursor() as cursor,
            ):
                return work(cursor, sql)

        try:
            return await sync_to_async(run, thread_sensitive=True)()
        except DatabaseError as exc:
            raise StoreError(f"{doing}: {_describe(exc)}") from exc

    async def _claim(self, event_id: str, now: float, lease: float) -> Claim:
        if event_id in self._done_cache:
            return Claim.DUPLICATE

        def claim(cursor: Any, sql: _SQL) -> Claim | str | None:
            until = now + lease
            cursor.execute(sql.claim_new, [event_id, until])
            if cursor.rowcount == 1:
                return Claim.CLAIMED
            cursor.execute(sql.take_expired, [until, event_id, now])
            if cursor.rowcount == 1:
                return Claim.CLAIMED
            cursor.execute(sql.state, [event_id])
            row = cursor.fetchone()
            return None if row is None else str(row[0])

        state = await self._write(f"claiming event {event_id!r}", claim)
        if state is Claim.CLAIMED:
            return Claim.CLAIMED
        if state == _DONE:
            self._remember_done(event_id)
            return Claim.DUPLICATE
        return Claim.IN_PROGRESS

    async def _renew_claim(self, event_id: str, until: float) -> bool:
        def renew(cursor: Any, sql: _SQL) -> int:
            cursor.execute(sql.renew, [until, event_id])
            return int(cursor.rowcount)

        return await self._write(f"renewing the claim on {event_id!r}", renew) == 1

    async def done(self, event_id: str) -> None:
        await self._write(
            f"marking event {event_id!r} done",
            lambda cursor, sql: cursor.execute(sql.done, [event_id]),
        )
        self._remember_done(event_id)

    async def release(self, event_id: str) -> None:
        await self._write(
            f"releasing the claim on {event_id!r}",
            lambda cursor, sql: cursor.execute(sql.release, [event_id]),
        )

    def mark_done(self, event_id: str) -> None:
        """Mark ``event_id`` done in the ``atomic()`` block open on this thread (synchronous).

        For an ``effects="external"`` handler whose own ``atomic()`` block writes its effect:
        the effect and the mark commit together. Raises
        :class:`~homing.errors.ConfigurationError` outside an ``atomic()`` block.
        """
        connection = connections[self.using]
        if not connection.in_atomic_block:
            raise ConfigurationError(
                f"mark_done({event_id!r}) needs an open transaction.atomic(using={self.using!r})"
            )
        with connection.cursor() as cursor:
            cursor.execute(self._statements().done, [event_id])

    async def done_in(self, transaction: Any, event_id: str) -> None:
        """Mark ``event_id`` done in the ``atomic()`` block open on Django's thread.

        ``transaction`` is Django's connection for :attr:`using` (or ``None``); see
        :meth:`mark_done` for the synchronous form.
        """
        await sync_to_async(self.mark_done, thread_sensitive=True)(event_id)

    def note_done(self, event_id: str) -> None:
        self._remember_done(event_id)

    def transaction(self, event_id: str, *, force: bool = False) -> _EventTransaction:
        return _EventTransaction(self, event_id, force)

    async def run_threaded(
        self,
        event_id: str,
        function: Callable[[Transaction], object],
        *,
        force: bool = False,
    ) -> Claim:
        """The ``atomic()`` block, a plain ``def`` handler in it and the commit in one call on
        one of this store's threads (``transaction_threads`` of them, kept): no thread made
        per event, one hop instead of one each for opening, each ORM call and committing.

        A push cancelled meanwhile (its client went away) leaves the thread to finish: it
        commits or rolls back, and a redelivery then finds the event done or new.
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self._threads, thread_name_prefix="homing-django-transaction"
            )
        run = contextvars.copy_context().run  # the push's trace goes along
        opened = _EventTransaction(self, event_id, force)
        claim = await asyncio.get_running_loop().run_in_executor(
            self._executor, run, opened.run_whole, function
        )
        if claim is not Claim.IN_PROGRESS:
            self._remember_done(event_id)
        return claim

    async def aclose(self) -> None:
        """Let the transaction threads go once their work is over (``Homing.aclose()``)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)


class DjangoTransaction(Transaction):
    """The open ``atomic()`` block of an ``effects="database"`` handler.

    ``connection`` is Django's connection (of the transaction's thread). Write through the ORM's
    async methods (``await Model.objects.acreate(...)``) or hand synchronous code to
    :meth:`run`: both run on the transaction's thread, inside the block.
    """

    __slots__ = ()

    async def run(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call ``function(*args, **kwargs)`` inside the transaction (on its thread)."""
        if self.connection is None:
            raise ConfigurationError(f"no transaction is open ({self.claim.value})")
        return await sync_to_async(function, thread_sensitive=True)(*args, **kwargs)

    def _open_session(self) -> Any:
        raise ConfigurationError(
            "a Django handler has no SQLAlchemy session: write with the ORM's async methods "
            "(await Model.objects.acreate(...)) or await delivery.transaction.run(function)"
        )


async def run_in(delivery: Any, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Call synchronous ``function(*args, **kwargs)`` inside ``delivery``'s transaction.

    For an ``effects="database"`` handler on :class:`DjangoDedupeStore`: ``function`` runs on
    the transaction's thread, inside its ``atomic()`` block, where Django's ORM writes with the
    done mark::

        @homing.handler(UserRenamed, effects="database")
        async def notify(event: UserRenamed, delivery: Delivery) -> None:
            await run_in(delivery, Notification.objects.create, user_id=event.user_id)
    """
    transaction = getattr(delivery, "transaction", None)
    if not isinstance(transaction, DjangoTransaction):
        raise ConfigurationError("run_in() is for effects='database' handlers on DjangoDedupeStore")
    return await transaction.run(function, *args, **kwargs)


class _EventTransaction:
    """``DjangoDedupeStore.transaction()``: a thread of its own, ``atomic()``, the mark."""

    __slots__ = ("_atomic", "_context", "_event_id", "_force", "_store", "_writing")

    def __init__(self, store: DjangoDedupeStore, event_id: str, force: bool) -> None:
        self._store, self._event_id, self._force = store, event_id, force
        self._context: ThreadSensitiveContext | None = None
        self._atomic: Any = None
        self._writing = False  # holds the SQLite writer lock

    def _open(self) -> tuple[Claim, Any]:
        store, event_id = self._store, self._event_id
        sql = store._statements()
        connection = connections[store.using]
        writing = store._writer.acquire()
        atomic = transaction.atomic(using=store.using)
        try:
            atomic.__enter__()
        except BaseException:
            store._writer.release(writing)
            raise
        try:
            with connection.cursor() as cursor:
                if self._force:
                    cursor.execute(sql.done, [event_id])
                else:
                    cursor.execute(sql.done_first, [event_id, store.clock()])
                if cursor.rowcount == 1:
                    self._atomic, self._writing = atomic, writing
                    # Released once committed, before the other on_commit callbacks (an
                    # outbox publish) run: they need no write lock.
                    transaction.on_commit(self._committed, using=store.using)
                    return Claim.CLAIMED, connection
                cursor.execute(sql.state, [event_id])
                row = cursor.fetchone()
        except BaseException:
            try:
                atomic.__exit__(*sys.exc_info())
            finally:
                store._writer.release(writing)
                connections.close_all()
            raise
        try:
            atomic.__exit__(None, None, None)  # nothing was written: the race was lost
        finally:
            store._writer.release(writing)
            connections.close_all()
        return (Claim.DUPLICATE if row is not None and row[0] == _DONE else Claim.IN_PROGRESS), None

    def _committed(self) -> None:
        writing, self._writing = self._writing, False
        self._store._writer.release(writing)

    def run_whole(self, function: Callable[[Transaction], object]) -> Claim:
        """Open, ``function(transaction)``, commit (or roll back): on the calling thread, which
        keeps its connection for the next event as a request thread would (``CONN_MAX_AGE``)."""
        try:
            claim, connection = self._open()
        except DatabaseError as exc:
            raise self._opening_failed(exc) from exc
        if connection is None:
            return claim
        try:
            function(DjangoTransaction(claim, connection))
        except BaseException as exc:
            # (a rollback that fails too fails with the link: the handler's exception says more)
            with contextlib.suppress(DatabaseError):
                self._close(exc, thread_ends=False)
            if _lost(exc):
                raise self._handler_lost(exc) from exc
            raise
        try:
            self._close(None, thread_ends=False)
        except DatabaseError as failure:
            raise StoreError(f"committing event {self._event_id!r}: {_describe(failure)}") from (
                failure
            )
        return claim

    def _close(self, exc: BaseException | None, *, thread_ends: bool = True) -> None:
        """Commit (``exc`` is ``None``) or roll back. A thread that ends with the transaction
        closes its connections; a kept one closes them by ``CONN_MAX_AGE``, as at the end of a
        request."""
        atomic, self._atomic = self._atomic, None
        try:
            if exc is None:
                atomic.__exit__(None, None, None)  # commits; then the on_commit callbacks
            else:
                atomic.__exit__(type(exc), exc, exc.__traceback__)  # rolls back
        finally:
            self._committed()  # if no commit released it
            if thread_ends:
                connections.close_all()
            else:
                close_old_connections()

    def _opening_failed(self, exc: DatabaseError) -> StoreError:
        return StoreError(f"opening the transaction of event {self._event_id!r}: {_describe(exc)}")

    def _handler_lost(self, exc: BaseException) -> StoreError:
        """The database failed under the handler, not the handler: a retry, not its failure."""
        return StoreError(
            f"the database failed during the handler of event {self._event_id!r}: {_describe(exc)}"
        )

    async def __aenter__(self) -> Transaction:
        context = ThreadSensitiveContext()
        await context.__aenter__()  # type: ignore[no-untyped-call]
        opening = asyncio.ensure_future(sync_to_async(self._open, thread_sensitive=True)())
        try:
            claim, connection = await asyncio.shield(opening)
        except asyncio.CancelledError:
            await self._abandon(opening, context)
            raise
        except BaseException as exc:
            await context.__aexit__(None, None, None)  # type: ignore[no-untyped-call]
            if isinstance(exc, DatabaseError):
                raise self._opening_failed(exc) from exc
            raise
        if connection is None:
            await context.__aexit__(None, None, None)  # type: ignore[no-untyped-call]
            if claim is Claim.DUPLICATE:
                self._store._remember_done(self._event_id)
            return Transaction(claim)
        self._context = context
        return DjangoTransaction(claim, connection)

    async def _abandon(self, opening: asyncio.Future[tuple[Claim, Any]], context: Any) -> None:
        """The push was cancelled (its client went away) while its transaction opened on its
        thread: let it open, then roll it back there, so that it leaves no lock behind."""
        try:
            _, connection = await opening
            if connection is not None:
                await sync_to_async(self._close, thread_sensitive=True)(asyncio.CancelledError())
        except BaseException:  # noqa: S110 - cancelled already; what is left is the rollback's
            pass
        finally:
            await context.__aexit__(None, None, None)

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> None:
        context, self._context = self._context, None
        if context is None:
            return
        try:
            await sync_to_async(self._close, thread_sensitive=True)(exc)
        except DatabaseError as failure:
            doing = "committing" if exc is None else "rolling back"
            raise StoreError(f"{doing} event {self._event_id!r}: {_describe(failure)}") from failure
        finally:
            await context.__aexit__(None, None, None)  # type: ignore[no-untyped-call]
        if exc is None:
            self._store._remember_done(self._event_id)
        elif _lost(exc):
            raise self._handler_lost(exc) from exc


class DjangoQuarantineStore(QuarantineStore):
    """Quarantined envelopes in ``homing_quarantine`` on Django's database ``using``."""

    def __init__(self, using: str = "default") -> None:
        self.using = using

    async def _run(self, doing: str, work: Callable[[], T]) -> T:
        def run() -> T:
            connection = connections[self.using]
            if not connection.in_atomic_block:
                connection.close_if_unusable_or_obsolete()
            return work()

        try:
            return await sync_to_async(run, thread_sensitive=True)()
        except DatabaseError as exc:
            raise StoreError(f"{doing}: {_describe(exc)}") from exc

    async def add(self, message: QuarantinedMessage) -> bool:
        from homing.django.models import QuarantineEntry

        def add() -> bool:
            _, created = QuarantineEntry.objects.using(self.using).get_or_create(
                id=message.id,
                defaults={
                    "reason": message.reason,
                    "body": message.body,
                    "received_at": message.received_at,
                    "event_type": message.event_type,
                    "event_id": message.event_id,
                },
            )
            return bool(created)

        return await self._run(f"quarantining {message.id!r}", add)

    async def get(self, entry_id: str) -> QuarantinedMessage | None:
        from homing.django.models import QuarantineEntry

        def get() -> QuarantinedMessage | None:
            row = QuarantineEntry.objects.using(self.using).filter(id=entry_id).first()
            return None if row is None else _entry(row)

        return await self._run(f"reading quarantined {entry_id!r}", get)

    async def list(self, *, limit: int = 100) -> list[QuarantinedMessage]:
        from homing.django.models import QuarantineEntry

        def newest() -> list[QuarantinedMessage]:
            rows = QuarantineEntry.objects.using(self.using).order_by("-received_at")[:limit]
            return [_entry(row) for row in rows]

        return await self._run("listing the quarantine", newest)

    async def delete(self, entry_id: str) -> bool:
        from homing.django.models import QuarantineEntry

        def delete() -> bool:
            deleted, _ = QuarantineEntry.objects.using(self.using).filter(id=entry_id).delete()
            return bool(deleted)

        return await self._run(f"deleting quarantined {entry_id!r}", delete)


def _entry(row: Any) -> QuarantinedMessage:
    received = row.received_at
    if received.tzinfo is None:
        received = received.replace(tzinfo=UTC)
    return QuarantinedMessage(
        id=row.id,
        reason=row.reason,
        body=bytes(row.body),
        received_at=received,
        event_type=row.event_type,
        event_id=row.event_id,
    )
