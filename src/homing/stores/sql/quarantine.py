"""The quarantine in SQL: envelopes kept for a person to inspect and replay, in
``homing_quarantine``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from homing.stores.base import QuarantinedMessage, QuarantineStore
from homing.stores.sql.engine import insert_ignoring_conflicts, translate_errors
from homing.stores.sql.schema import quarantine


class SQLQuarantineStore(QuarantineStore):
    """Quarantined envelopes in ``homing_quarantine``; driver errors leave it as ``StoreError``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert = insert_ignoring_conflicts(engine, quarantine)

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
