"""The statements the outbox runs on its table, ``homing_outbox``.

The table is declared in :mod:`homing.stores.sql.schema` beside the stores' tables, so that one
``metadata`` and :func:`~homing.stores.sql.create_tables` hold every table homing owns (a
declaration up here would be missing from both unless the stores imported the outbox); the
outbox reads and writes it only through this module.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Delete, Select, Update, bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from homing.stores.sql.engine import CompiledStatement
from homing.stores.sql.schema import outbox as table

# Built once and executed with parameters, they are compiled once too. The statements of
# stage() and send() are compiled for the dialect up front and run on the driver's cursor: they
# never change, and SQLAlchemy's per-statement work cost more than the database's own (measured
# on POST /change-name).


def select_event_id() -> Select[str]:
    """The row of ``:event_id``, if it is there."""
    return select(table.c.event_id).where(table.c.event_id == bindparam("event_id"))


def delete_events() -> Delete:
    """Delete the rows of the event ids ``:ids`` (a list)."""
    return delete(table).where(table.c.event_id.in_(bindparam("ids", expanding=True)))


def insert_row(engine: AsyncEngine) -> CompiledStatement:
    """Insert one row, every column a parameter of its own name."""
    return CompiledStatement(
        engine, table.insert().values({column.name: bindparam(column.name) for column in table.c})
    )


def delete_row(engine: AsyncEngine) -> CompiledStatement:
    """Delete the row of ``:event_id``."""
    return CompiledStatement(engine, delete(table).where(table.c.event_id == bindparam("event_id")))


def find_row(engine: AsyncEngine) -> CompiledStatement:
    """:func:`select_event_id`, compiled."""
    return CompiledStatement(engine, select_event_id())


def select_waiting(
    *, older_than: float, excluding: list[str], now: datetime
) -> Select[*tuple[Any, ...]]:
    """Rows oldest first: staged ``older_than`` seconds before ``now`` or earlier, not in
    ``excluding``."""
    query = select(table).order_by(table.c.created_at)
    if older_than > 0:
        query = query.where(table.c.created_at <= now - timedelta(seconds=older_than))
    if excluding:
        query = query.where(table.c.event_id.not_in(excluding))
    return query


def count_waiting(*, excluding: list[str]) -> Select[int]:
    """How many rows, not counting those in ``excluding``."""
    query = select(func.count()).select_from(table)
    if excluding:
        query = query.where(table.c.event_id.not_in(excluding))
    return query


def add_failed_attempt(event_id: str, error: str) -> Update:
    """One more failed attempt on the row of ``event_id``, and its error."""
    return (
        update(table)
        .where(table.c.event_id == event_id)
        .values(attempts=table.c.attempts + 1, last_error=error[:2000])
    )
