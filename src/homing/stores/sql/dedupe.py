"""Dedupe in SQL: handled event ids in ``homing_handled_events``, claimed with a lease and
marked done; and the transaction that commits a handler's effect with its done mark."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.util.concurrency import await_only, greenlet_spawn

from homing.errors import StoreError
from homing.stores.base import Claim, DedupeStore, Transaction
from homing.stores.sql.engine import (
    DRIVER_ERRORS,
    CompiledStatement,
    InlineStatement,
    describe,
    dialect_module,
    driver_cursor,
    insert_ignoring_conflicts,
    lost_connection,
    translate_errors,
)
from homing.stores.sql.schema import handled_events

logger = logging.getLogger("homing.stores")

_T = TypeVar("_T")

_DONE = "done"
_CLAIMED = "claimed"


def _mark_done(engine: AsyncEngine, *, unless_claimed: bool) -> Any:
    """Insert a done mark, or turn the event's row into one.

    ``unless_claimed``: only an *expired* claim is taken over; a live claim or a done mark
    leaves the statement affecting no row (the race is lost).
    """
    row = handled_events.c
    values = {"event_id": bindparam("event_id"), "state": _DONE, "lease_until": 0.0}
    expired = (row.state == _CLAIMED) & (row.lease_until <= bindparam("now"))
    name = engine.dialect.name
    if name in ("sqlite", "postgresql"):
        return (
            dialect_module(engine)
            .insert(handled_events)
            .values(values)
            .on_conflict_do_update(
                index_elements=[row.event_id],
                set_={"state": _DONE, "lease_until": 0.0},
                where=expired if unless_claimed else None,
            )
        )
    statement = dialect_module(engine).insert(handled_events).values(values)  # MySQL, MariaDB
    if unless_claimed:  # a lost race and an expired claim look alike here: no takeover
        return statement.prefix_with("IGNORE")
    return statement.on_duplicate_key_update(state=_DONE, lease_until=0.0)


class SQLDedupeStore(DedupeStore):
    """Handled event ids in ``homing_handled_events``.

    "Done" is final, so the ids this process saw done are also kept in a bounded in-process
    set (``done_cache_size``, oldest forgotten first): a redelivery of one of them is answered
    without a database round trip. A miss falls back to the database, so instances that share
    it agree.

    Every driver or connection error leaves it as :class:`~homing.errors.StoreError`.
    """

    transactional = True

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        done_cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock=clock)
        self.engine = engine
        row = handled_events.c
        claimed = {"event_id": bindparam("event_id"), "state": _CLAIMED, "lease_until": 0.0}
        self._claim_new = CompiledStatement(
            engine,
            insert_ignoring_conflicts(engine, handled_events).values(
                claimed | {"lease_until": bindparam("until")}
            ),
        )
        self._take_expired = CompiledStatement(
            engine,
            update(handled_events)
            .where(
                row.event_id == bindparam("event_id"),
                row.state == _CLAIMED,
                row.lease_until <= bindparam("now"),
            )
            .values(lease_until=bindparam("until")),
        )
        self._state = CompiledStatement(
            engine, select(row.state).where(row.event_id == bindparam("event_id"))
        )
        self._done = CompiledStatement(engine, _mark_done(engine, unless_claimed=False))
        self._renew = CompiledStatement(
            engine,
            update(handled_events)
            .where(row.event_id == bindparam("event_id"), row.state == _CLAIMED)
            .values(lease_until=bindparam("until")),
        )
        self._release = CompiledStatement(
            engine,
            delete(handled_events).where(
                row.event_id == bindparam("event_id"), row.state == _CLAIMED
            ),
        )
        self._done_first = CompiledStatement(engine, _mark_done(engine, unless_claimed=True))
        #: On PostgreSQL through asyncpg, a handler's transaction opens with its done mark in
        #: the same round trip as BEGIN (:meth:`_open_with_begin`): three round trips for a
        #: new event rather than four.
        self._inline: dict[CompiledStatement, InlineStatement] | None = None
        if engine.dialect.name == "postgresql" and engine.dialect.driver == "asyncpg":
            self._inline = {
                mark: InlineStatement(engine, mark) for mark in (self._done_first, self._done)
            }
        self._done_cache: dict[str, None] = {}
        self._done_cache_size = done_cache_size

    def _remember_done(self, event_id: str) -> None:
        if self._done_cache_size <= 0:
            return
        self._done_cache[event_id] = None
        if len(self._done_cache) > self._done_cache_size:
            del self._done_cache[next(iter(self._done_cache))]

    def known_done(self, event_id: str) -> bool:
        return event_id in self._done_cache

    async def _write(self, doing: str, work: Callable[[Any], _T]) -> _T:
        """``work(cursor)`` in a transaction of its own, committed; all in one greenlet."""

        def run() -> _T:
            with self.engine.sync_engine.begin() as connection, driver_cursor(connection) as cursor:
                return work(cursor)

        async with translate_errors(doing, self.engine):
            return await greenlet_spawn(run)

    async def _claim(self, event_id: str, now: float, lease: float) -> Claim:
        if event_id in self._done_cache:
            return Claim.DUPLICATE

        # Insert first: a new event (the common case) costs one statement. The transaction
        # starts with a write, so SQLite waits for its lock up front instead of failing to
        # upgrade a read transaction.
        def claim(cursor: Any) -> Claim | str | None:
            until = now + lease
            if self._claim_new(cursor, event_id=event_id, until=until).rowcount == 1:
                return Claim.CLAIMED
            taken = self._take_expired(cursor, event_id=event_id, now=now, until=until)
            if taken.rowcount == 1:
                return Claim.CLAIMED
            row = self._state(cursor, event_id=event_id).fetchone()
            return None if row is None else str(row[0])

        state = await self._write(f"claiming event {event_id!r}", claim)
        if state is Claim.CLAIMED:
            return Claim.CLAIMED
        if state == _DONE:
            self._remember_done(event_id)
            return Claim.DUPLICATE
        return Claim.IN_PROGRESS

    async def _renew_claim(self, event_id: str, until: float) -> bool:
        renewed = await self._write(
            f"renewing the claim on {event_id!r}",
            lambda cursor: self._renew(cursor, event_id=event_id, until=until).rowcount,
        )
        return bool(renewed == 1)

    async def done(self, event_id: str) -> None:
        await self._write(
            f"marking event {event_id!r} done", lambda cursor: self._done(cursor, event_id=event_id)
        )
        self._remember_done(event_id)

    async def done_in(self, transaction: AsyncConnection | AsyncSession, event_id: str) -> None:
        """Mark ``event_id`` done in the caller's transaction, beside the handler's effect."""
        connection = (
            await transaction.connection() if isinstance(transaction, AsyncSession) else transaction
        )
        await connection.exec_driver_sql(self._done.sql, self._done.parameters(event_id=event_id))

    def note_done(self, event_id: str) -> None:
        self._remember_done(event_id)

    async def release(self, event_id: str) -> None:
        await self._write(
            f"releasing the claim on {event_id!r}",
            lambda cursor: self._release(cursor, event_id=event_id),
        )

    def transaction(self, event_id: str, *, force: bool = False) -> _EventTransaction:
        # The done mark is the transaction's first statement: of two deliveries racing, the
        # second waits on the first's row (PostgreSQL) or lock (SQLite) and then finds it.
        # Nothing is committed unless the body finishes: effect and mark go together.
        return _EventTransaction(self, event_id, force)

    def _open(
        self, mark: CompiledStatement, event_id: str
    ) -> tuple[Claim, Connection | None, bool]:
        """Begin the event's transaction with its done mark; the claim, the connection when
        it was claimed, and whether homing itself commits it (``_open_with_begin``)."""
        if self._inline is not None:
            opened = self._open_with_begin(self._inline[mark], event_id)
            if opened is not None:
                return opened
        connection = self.engine.sync_engine.connect()
        try:
            connection.begin()
            with driver_cursor(connection) as cursor:
                if mark(cursor, event_id=event_id, now=self.clock()).rowcount == 1:
                    return Claim.CLAIMED, connection, False
                row = self._state(cursor, event_id=event_id).fetchone()
        except BaseException:
            connection.close()
            raise
        connection.close()  # rolled back: the race was lost
        state = None if row is None else row[0]
        return (Claim.DUPLICATE if state == _DONE else Claim.IN_PROGRESS), None, False

    def _open_with_begin(
        self, mark: InlineStatement, event_id: str
    ) -> tuple[Claim, Connection | None, bool] | None:
        """PostgreSQL: ``BEGIN`` and the done mark in one round trip (the simple query
        protocol carries both); ``None`` when the server quotes strings the old way.

        SQLAlchemy is told the connection autocommits, so it begins nothing of its own; the
        handler's statements run inside homing's transaction, and homing commits it
        (:func:`_commit_raw`) or rolls it back. A failure invalidates the connection: one in an
        unknown state never goes back to the pool.
        """
        connection = self.engine.sync_engine.connect()
        try:
            raw = _driver(connection)
            if raw.get_settings().standard_conforming_strings != "on":
                connection.close()
                return None
            connection.execution_options(isolation_level="AUTOCOMMIT")
            status = await_only(raw.execute("BEGIN;" + mark(event_id=event_id, now=self.clock())))
            if status.endswith(" 1"):  # INSERT 0 1: the mark is this transaction's
                return Claim.CLAIMED, connection, True
            state = await_only(raw.fetchval(self._state.sql, event_id))
            await_only(raw.execute("ROLLBACK"))  # the race was lost
        except BaseException as exc:
            _fail(connection, f"opening the transaction of event {event_id!r}", exc)
        connection.close()
        return (Claim.DUPLICATE if state == _DONE else Claim.IN_PROGRESS), None, False


class _EventTransaction:
    """``SQLDedupeStore.transaction()``: homing's part runs in two greenlets (open + mark, then
    commit + close) rather than one per call, since most of a short transaction's cost is
    SQLAlchemy's asyncio bridge; and in a class, not a generator, for the same reason."""

    __slots__ = ("_connection", "_event_id", "_force", "_raw", "_store", "_transaction")

    def __init__(self, store: SQLDedupeStore, event_id: str, force: bool) -> None:
        self._store, self._event_id, self._force = store, event_id, force
        self._raw = False  # homing's own BEGIN: homing's own COMMIT
        self._connection: Connection | None = None
        self._transaction: _SQLTransaction | None = None

    async def __aenter__(self) -> Transaction:
        store, event_id = self._store, self._event_id
        mark = store._done if self._force else store._done_first
        with translate_errors(f"opening the transaction of event {event_id!r}", store.engine):
            claim, connection, self._raw = await greenlet_spawn(store._open, mark, event_id)
        if connection is None:
            if claim is Claim.DUPLICATE:
                store._remember_done(event_id)
            return Transaction(claim)
        self._connection = connection
        self._transaction = _SQLTransaction(claim, AsyncConnection(store.engine, connection))
        return self._transaction

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> None:
        connection, transaction = self._connection, self._transaction
        if connection is None or transaction is None:
            return
        self._connection = self._transaction = None
        if exc is not None:
            discard = _discard_raw if self._raw else _discard
            await greenlet_spawn(discard, connection, transaction._session)
            if isinstance(exc, DBAPIError | OSError | TimeoutError) and lost_connection(exc):
                raise StoreError(
                    f"the database failed during the handler of event {self._event_id!r}: "
                    f"{describe(exc)}"
                ) from exc
            return  # the handler's own mistake (a constraint, bad SQL): its failure, raised on
        commit, discard = (_commit_raw, _discard_raw) if self._raw else (_commit, _discard)
        try:
            with translate_errors(f"committing event {self._event_id!r}", self._store.engine):
                await greenlet_spawn(commit, connection, transaction._session)
        except BaseException:
            await greenlet_spawn(discard, connection, transaction._session)
            raise
        self._store._remember_done(self._event_id)


class _SQLTransaction(Transaction):
    __slots__ = ()

    def _open_session(self) -> AsyncSession:
        # Bound to a connection already in a transaction, the session joins it: its flushes
        # go into it, and homing commits it (flushing the session first).
        return AsyncSession(bind=self.connection, expire_on_commit=False)


def _commit(connection: Connection, session: AsyncSession | None) -> None:
    if session is not None:
        session.sync_session.flush()
    connection.commit()
    if session is not None:
        session.sync_session.close()
    connection.close()


def _discard(connection: Connection, session: AsyncSession | None) -> None:
    try:
        if session is not None:
            session.sync_session.close()
        connection.close()  # rolls back
    except DRIVER_ERRORS as exc:  # the connection is gone already; nothing more to undo
        logger.warning("could not roll back cleanly: %s", describe(exc))


def _commit_raw(connection: Connection, session: AsyncSession | None) -> None:
    """Commit a transaction homing began itself (PostgreSQL): the session's writes, then
    ``COMMIT``, which must answer so (an aborted transaction answers ``ROLLBACK``)."""
    if session is not None:
        session.sync_session.flush()
    connection.commit()  # SQLAlchemy's own bookkeeping: nothing reaches the server
    try:
        status = await_only(_driver(connection).execute("COMMIT"))
    except BaseException as exc:
        _fail(connection, "committing", exc)
    if status != "COMMIT":  # a statement failed inside it, and the handler carried on
        raise StoreError(
            f"the database rolled the transaction back at COMMIT ({status}): a statement in it "
            "had failed"
        )
    if session is not None:
        session.sync_session.close()
    connection.close()


def _discard_raw(connection: Connection, session: AsyncSession | None) -> None:
    if connection.closed or connection.invalidated:  # dropped already
        connection.close()
        return
    try:
        if session is not None:
            session.sync_session.close()
        await_only(_driver(connection).execute("ROLLBACK"))
    except BaseException as exc:
        logger.warning("could not roll back cleanly: %s", describe(exc))
        _invalidate(connection, exc)
        return
    connection.close()


def _invalidate(connection: Connection, exc: BaseException) -> None:
    """Drop a connection whose transaction is in an unknown state (never pooled again)."""
    try:
        if not (connection.closed or connection.invalidated):
            connection.invalidate(exc if isinstance(exc, Exception) else None)
    finally:
        connection.close()


def _fail(connection: Connection, doing: str, exc: BaseException) -> NoReturn:
    """Invalidate ``connection`` and raise: a driver's error as :class:`StoreError`,
    cancellation and the like as they are."""
    _invalidate(connection, exc)
    if isinstance(exc, Exception) and not isinstance(exc, StoreError):
        raise StoreError(f"the database failed while {doing}: {describe(exc)}") from exc
    raise exc


def _driver(connection: Connection) -> Any:
    """The driver's own connection (asyncpg's) under a SQLAlchemy connection."""
    raw = connection.connection.driver_connection
    if raw is None:  # pragma: no cover - a checked-out connection always has one
        raise StoreError("the database connection is closed")
    return raw
