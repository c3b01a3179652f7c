"""SQL stores on SQLAlchemy 2 (async): SQLite by default, PostgreSQL in production.

The tables live in :data:`metadata`; include it in your migrations, or call
``await create_tables(engine)`` for a database homing may set up itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

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
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

from homing.stores.base import Claim, DedupeStore, QuarantinedMessage, QuarantineStore

metadata = MetaData()

_DONE = "done"
_CLAIMED = "claimed"

handled_events = Table(
    "homing_handled_events",
    metadata,
    Column("event_id", String(255), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("lease_until", Double, nullable=False),
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


def create_engine(url: str, **options: Any) -> AsyncEngine:
    """An async engine. PostgreSQL keeps up to 15 connections; SQLite gets WAL, a busy timeout,
    and one pooled connection.

    PostgreSQL: SQLAlchemy's default pool (5 kept, 10 more opened under load and closed when
    returned) opens and closes a connection for most requests once more than five run at once;
    the handshake and the close then cost more than the statements (measured: new events per
    second doubled at 16 concurrent requests). The same 15 at most are kept open instead.

    SQLite takes one writer at a time, and a writer that finds the database locked sleeps in
    growing steps (up to 100 ms) before it tries again. Under concurrent requests that turns
    into most of the time spent. With one connection per process, this process's requests
    queue for it in order instead (other processes, such as the CLI, still wait on the lock).
    """
    if url.startswith("postgresql"):
        options.setdefault("pool_size", 15)
        options.setdefault("max_overflow", 0)
    if url.startswith("sqlite"):
        options.setdefault("connect_args", {}).setdefault("timeout", 30)
        options.setdefault("pool_size", 1)
        options.setdefault("max_overflow", 0)
        options.setdefault("pool_timeout", 60)
    engine = create_async_engine(url, **options)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    return engine


async def create_tables(engine: AsyncEngine) -> None:
    """Create homing's tables where they are missing."""
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)


def _insert_ignoring_conflicts(engine: AsyncEngine, table: Table) -> Insert:
    name = engine.dialect.name
    if name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    if name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return insert(table).prefix_with("IGNORE")  # MySQL and MariaDB


class SQLDedupeStore(DedupeStore):
    """Handled event ids in ``homing_handled_events``.

    "Done" is final, so the ids this process saw done are also kept in a bounded in-process
    set (``done_cache_size``, oldest forgotten first): a redelivery of one of them is answered
    without a database round trip. A miss falls back to the database, so instances that share
    it agree.
    """

    def __init__(self, engine: AsyncEngine, *, done_cache_size: int = 10_000) -> None:
        self.engine = engine
        self._insert = _insert_ignoring_conflicts(engine, handled_events)
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

    async def _claim(self, event_id: str, now: float, lease: float) -> Claim:
        if event_id in self._done_cache:
            return Claim.DUPLICATE
        row = handled_events.c
        # Insert first: a new event (the common case) costs one statement. The transaction
        # starts with a write, so SQLite waits for its lock up front instead of failing to
        # upgrade a read transaction.
        async with self.engine.begin() as connection:
            inserted = await connection.execute(
                self._insert.values(event_id=event_id, state=_CLAIMED, lease_until=now + lease)
            )
            if inserted.rowcount == 1:
                return Claim.CLAIMED
            taken = await connection.execute(
                update(handled_events)
                .where(row.event_id == event_id, row.state == _CLAIMED, row.lease_until <= now)
                .values(lease_until=now + lease)
            )
            if taken.rowcount == 1:
                return Claim.CLAIMED
            state = await connection.scalar(select(row.state).where(row.event_id == event_id))
        if state == _DONE:
            self._remember_done(event_id)
            return Claim.DUPLICATE
        return Claim.IN_PROGRESS

    async def done(self, event_id: str) -> None:
        async with self.engine.begin() as connection:
            await self.done_in(connection, event_id)
        self._remember_done(event_id)

    async def done_in(self, transaction: AsyncConnection | AsyncSession, event_id: str) -> None:
        """Mark ``event_id`` done in the caller's transaction, beside the handler's effect."""
        await transaction.execute(
            update(handled_events).where(handled_events.c.event_id == event_id).values(state=_DONE)
        )

    def note_done(self, event_id: str) -> None:
        self._remember_done(event_id)

    async def release(self, event_id: str) -> None:
        row = handled_events.c
        async with self.engine.begin() as connection:
            await connection.execute(
                delete(handled_events).where(row.event_id == event_id, row.state == _CLAIMED)
            )


class SQLQuarantineStore(QuarantineStore):
    """Quarantined envelopes in ``homing_quarantine``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert = _insert_ignoring_conflicts(engine, quarantine)

    async def add(self, message: QuarantinedMessage) -> bool:
        async with self.engine.begin() as connection:
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
        async with self.engine.connect() as connection:
            result = await connection.execute(select(quarantine).where(quarantine.c.id == entry_id))
            row = result.mappings().first()
        return None if row is None else _entry(row)

    async def list(self, *, limit: int = 100) -> list[QuarantinedMessage]:
        query = select(quarantine).order_by(quarantine.c.received_at.desc()).limit(limit)
        async with self.engine.connect() as connection:
            result = await connection.execute(query)
            return [_entry(row) for row in result.mappings()]

    async def delete(self, entry_id: str) -> bool:
        async with self.engine.begin() as connection:
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
