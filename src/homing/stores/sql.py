"""SQL stores on SQLAlchemy 2 (async): SQLite by default, PostgreSQL in production.

The tables live in :data:`metadata`; include it in your migrations, or call
``await create_tables(engine)`` for a database homing may set up itself.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    Column,
    DateTime,
    Double,
    Insert,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.util.concurrency import greenlet_spawn

from homing.errors import StoreError
from homing.stores._sqlite_inline import DBAPI as inline_sqlite_dbapi
from homing.stores.base import (
    Claim,
    DedupeStore,
    QuarantinedMessage,
    QuarantineStore,
    Transaction,
)


def _lost_connection(exc: BaseException) -> bool:
    """Whether a handler's statement failed because the database went away, not the handler.

    Then it is answered 503 (store unavailable) like any other store error.
    """
    if isinstance(exc, OSError | TimeoutError | OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


logger = logging.getLogger("homing.stores")

_T = TypeVar("_T")

metadata = MetaData()

_DONE = "done"
_CLAIMED = "claimed"

handled_events = Table(
    "homing_handled_events",
    metadata,
    Column("event_id", String(255), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("lease_until", Double, nullable=False),
    # On SQLite, one b-tree keyed by the event id rather than a rowid table beside an index of
    # its key: a mark writes one page, not two (a table created before keeps its layout).
    sqlite_with_rowid=False,
)

quarantine = Table(
    "homing_quarantine",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, index=True),
    Column("event_type", String(255)),
    Column("event_id", String(255)),
)

outbox = Table(
    "homing_outbox",
    metadata,
    Column("event_id", String(255), primary_key=True),
    Column("event_type", String(255), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("attributes", Text, nullable=False),  # JSON object of the signed attributes
    Column("ordering_key", String(1024)),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
)


def create_engine(url: str, *, inline_sqlite: bool = True, **options: Any) -> AsyncEngine:
    """An async engine for homing's stores and the service's own tables.

    **SQLite** (``sqlite+aiosqlite:///...``): WAL with ``synchronous=NORMAL`` (a commit survives
    the process being killed; the last commits before a power cut or an OS crash may be lost, as
    with any WAL database at that setting), one pooled connection per process, and statements
    run inline in the event loop rather than on aiosqlite's thread (``inline_sqlite=False``
    keeps aiosqlite's thread): a short statement costs tens of microseconds, the thread hop
    around it well over a hundred. A statement that finds the database locked by another
    process waits for it on a worker thread, never in the event loop (up to 30 s, or
    ``connect_args={"timeout": ...}``). With one connection, this process's requests queue for
    it in order instead of sleeping on SQLite's lock.

    **PostgreSQL**: up to 15 connections, kept open (SQLAlchemy's default opens and closes ten
    of them again and again under load, and the handshakes cost more than the statements).

    For both, a refused or failed *connect* — which asyncpg reports as a bare ``OSError`` —
    surfaces as SQLAlchemy's ``OperationalError`` like every other database error, so an
    application needs to handle only ``SQLAlchemyError`` (homing's stores turn it into
    :class:`~homing.errors.StoreError`).
    """
    database = make_url(url)
    if database.get_backend_name() == "postgresql":
        options.setdefault("pool_size", 15)
        options.setdefault("max_overflow", 0)
    sqlite_db = database.get_backend_name() == "sqlite"
    if sqlite_db:
        connect_args = options.setdefault("connect_args", {})
        connect_args.setdefault("timeout", 30)
        options.setdefault("pool_size", 1)
        options.setdefault("max_overflow", 0)
        options.setdefault("pool_timeout", 60)
        if inline_sqlite and database.get_driver_name() == "aiosqlite":
            options.setdefault("module", inline_sqlite_dbapi)
    engine = create_async_engine(url, **options)

    @event.listens_for(engine.sync_engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except (OSError, TimeoutError) as exc:
            # Raised as the driver's own error class, SQLAlchemy wraps it and says "connect".
            raise dialect.loaded_dbapi.OperationalError(f"could not connect: {exc}") from exc

    if sqlite_db:

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    return engine


async def create_tables(engine: AsyncEngine) -> None:
    """Create homing's tables where they are missing."""
    async with translate_errors("creating homing's tables"), engine.begin() as connection:
        await connection.run_sync(metadata.create_all)


#: What a database or its driver raises when it is down, unreachable or failing.
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    SQLAlchemyError,
    OSError,
    TimeoutError,
    sqlite3.Error,
)


class translate_errors:
    """Turn driver and connection errors into :class:`StoreError`, saying what was being done.

    Every store method runs its database work inside it (``with`` or ``async with``), so
    callers handle one error. A class rather than a generator: it is on every event's path.
    """

    __slots__ = ("doing", "engine")

    def __init__(self, doing: str, engine: AsyncEngine | None = None) -> None:
        self.doing = doing
        self.engine = engine  # for the driver's own errors, where a store calls the driver

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> None:
        if exc is None:
            return
        errors = DRIVER_ERRORS
        if self.engine is not None:
            errors = (*errors, self.engine.dialect.loaded_dbapi.Error)
        if isinstance(exc, errors):
            raise StoreError(f"the database failed while {self.doing}: {_describe(exc)}") from exc

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> None:
        self.__exit__(exc_type, exc, traceback)


def _describe(exc: BaseException) -> str:
    # SQLAlchemy's message carries the statement and its parameters; the first line does not.
    text = str(getattr(exc, "orig", None) or exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}"


class CompiledStatement:
    """A statement compiled once for its engine's dialect and run on a DBAPI cursor.

    Homing's own hot-path statements never change, so they skip SQLAlchemy's per-call
    compilation, caching and result set-up: measured here, most of the cost of a
    one-statement transaction apart from the database's own work.
    """

    __slots__ = ("_constants", "_order", "sql")

    def __init__(self, engine: AsyncEngine, statement: Any) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        self.sql = str(compiled)
        self._order = tuple(compiled.positiontup or ())
        self._constants = compiled.params  # the values written into the statement itself

    def parameters(self, **values: Any) -> tuple[Any, ...]:
        given = self._constants | values
        return tuple(given[name] for name in self._order)

    def __call__(self, cursor: Any, **values: Any) -> Any:
        cursor.execute(self.sql, self.parameters(**values))
        return cursor


class driver_cursor:
    """The driver's own cursor on ``connection``, inside its SQLAlchemy transaction.

    SQLAlchemy does not see what fails on it, so a failure other than a constraint's
    invalidates the connection here, as SQLAlchemy would after a lost connection: the pool then
    opens a new one instead of lending the dead one out again (a restarted server).
    """

    __slots__ = ("_connection", "_cursor")

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._cursor: Any = None

    def __enter__(self) -> Any:
        pooled = self._connection.connection
        # homing's inline SQLite gives a cursor that skips the await SQLAlchemy's own
        # statements must make (homing's run in greenlets that do not check for one).
        quiet = getattr(pooled.dbapi_connection, "quiet_cursor", None)
        self._cursor = quiet() if quiet is not None else pooled.cursor()
        return self._cursor

    def __exit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> None:
        cursor, connection = self._cursor, self._connection
        try:
            if isinstance(exc, Exception):
                dbapi = connection.dialect.loaded_dbapi
                if not isinstance(exc, dbapi.IntegrityError):
                    dbapi_connection = connection.connection.dbapi_connection
                    lost = isinstance(exc, OSError) or (
                        isinstance(exc, dbapi.Error)
                        and connection.dialect.is_disconnect(exc, dbapi_connection, cursor)
                    )
                    connection.invalidate(exc)
                    if lost:  # the server went away: its other pooled connections are as dead
                        connection.engine.dispose(close=False)
        finally:
            with contextlib.suppress(Exception):
                cursor.close()


def _insert_ignoring_conflicts(engine: AsyncEngine, table: Table) -> Insert:
    name = engine.dialect.name
    if name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    if name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return insert(table).prefix_with("IGNORE")  # MySQL and MariaDB


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
        dialect_insert = sqlite.insert if name == "sqlite" else postgresql.insert
        return (
            dialect_insert(handled_events)
            .values(values)
            .on_conflict_do_update(
                index_elements=[row.event_id],
                set_={"state": _DONE, "lease_until": 0.0},
                where=expired if unless_claimed else None,
            )
        )
    statement = mysql.insert(handled_events).values(values)  # MySQL and MariaDB
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

    def __init__(self, engine: AsyncEngine, *, done_cache_size: int = 10_000) -> None:
        self.engine = engine
        row = handled_events.c
        claimed = {"event_id": bindparam("event_id"), "state": _CLAIMED, "lease_until": 0.0}
        self._claim_new = CompiledStatement(
            engine,
            _insert_ignoring_conflicts(engine, handled_events).values(
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

    def _open(self, mark: CompiledStatement, event_id: str) -> tuple[Claim, Connection | None]:
        connection = self.engine.sync_engine.connect()
        try:
            connection.begin()
            with driver_cursor(connection) as cursor:
                if mark(cursor, event_id=event_id, now=time.time()).rowcount == 1:
                    return Claim.CLAIMED, connection
                row = self._state(cursor, event_id=event_id).fetchone()
        except BaseException:
            connection.close()
            raise
        connection.close()  # rolled back: the race was lost
        state = None if row is None else row[0]
        return (Claim.DUPLICATE if state == _DONE else Claim.IN_PROGRESS), None


class _EventTransaction:
    """``SQLDedupeStore.transaction()``: homing's part runs in two greenlets (open + mark, then
    commit + close) rather than one per call, since most of a short transaction's cost is
    SQLAlchemy's asyncio bridge; and in a class, not a generator, for the same reason."""

    __slots__ = ("_connection", "_event_id", "_force", "_store", "_transaction")

    def __init__(self, store: SQLDedupeStore, event_id: str, force: bool) -> None:
        self._store, self._event_id, self._force = store, event_id, force
        self._connection: Connection | None = None
        self._transaction: _SQLTransaction | None = None

    async def __aenter__(self) -> Transaction:
        store, event_id = self._store, self._event_id
        mark = store._done if self._force else store._done_first
        with translate_errors(f"opening the transaction of event {event_id!r}", store.engine):
            claim, connection = await greenlet_spawn(store._open, mark, event_id)
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
            await greenlet_spawn(_discard, connection, transaction._session)
            if isinstance(exc, DBAPIError | OSError | TimeoutError) and _lost_connection(exc):
                raise StoreError(
                    f"the database failed during the handler of event {self._event_id!r}: "
                    f"{_describe(exc)}"
                ) from exc
            return  # the handler's own mistake (a constraint, bad SQL): its failure, raised on
        try:
            with translate_errors(f"committing event {self._event_id!r}", self._store.engine):
                await greenlet_spawn(_commit, connection, transaction._session)
        except BaseException:
            await greenlet_spawn(_discard, connection, transaction._session)
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
        logger.warning("could not roll back cleanly: %s", _describe(exc))


class SQLQuarantineStore(QuarantineStore):
    """Quarantined envelopes in ``homing_quarantine``; driver errors leave it as ``StoreError``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert = _insert_ignoring_conflicts(engine, quarantine)

    async def add(self, message: QuarantinedMessage) -> bool:
        async with (
            translate_errors(f"quarantining {message.id!r}"),
            self.engine.begin() as connection,
        ):
            result = await connection.execute(
                self._insert.values(
                    id=message.id,
                    reason=message.reason,
                    body=message.body,
                    received_at=message.received_at,
                    event_type=message.event_type,
                    event_id=message.event_id,
                )
            )
        return result.rowcount == 1

    async def get(self, entry_id: str) -> QuarantinedMessage | None:
        async with translate_errors("reading the quarantine"), self.engine.connect() as connection:
            result = await connection.execute(select(quarantine).where(quarantine.c.id == entry_id))
            row = result.mappings().first()
        return None if row is None else _entry(row)

    async def list(self, *, limit: int = 100) -> list[QuarantinedMessage]:
        query = select(quarantine).order_by(quarantine.c.received_at.desc()).limit(limit)
        async with translate_errors("listing the quarantine"), self.engine.connect() as connection:
            result = await connection.execute(query)
            return [_entry(row) for row in result.mappings()]

    async def delete(self, entry_id: str) -> bool:
        async with translate_errors(f"deleting {entry_id!r}"), self.engine.begin() as connection:
            result = await connection.execute(delete(quarantine).where(quarantine.c.id == entry_id))
        return result.rowcount == 1


def _entry(row: Any) -> QuarantinedMessage:
    received: datetime = row["received_at"]
    if received.tzinfo is None:  # SQLite keeps no zone; homing writes UTC
        received = received.replace(tzinfo=UTC)
    return QuarantinedMessage(
        id=row["id"],
        reason=row["reason"],
        body=bytes(row["body"]),
        received_at=received,
        event_type=row["event_type"],
        event_id=row["event_id"],
    )
