"""homing's tables, in one :data:`metadata`: include it in your migrations, or call
``await create_tables(engine)`` for a database homing may set up itself.

The outbox's table is declared here too, beside the stores' tables, so that :data:`metadata`
and :func:`create_tables` hold every table homing owns; only :mod:`homing.outbox` uses it.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Double,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    inspect,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from homing.stores.sql.engine import translate_errors

metadata = MetaData()

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
    # When a delayed event is to be delivered (UTC); NULL: at once. Added in 0.2: an older
    # table gains it in place at create_tables().
    Column("deliver_at", DateTime(timezone=True)),
)


async def create_tables(engine: AsyncEngine) -> None:
    """Create homing's tables where they are missing, and add the nullable columns a newer
    homing declares to a table an older one created (``ALTER TABLE ... ADD COLUMN``)."""
    async with translate_errors("creating homing's tables"), engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
        await connection.run_sync(_add_missing_columns)


def _add_missing_columns(connection: Connection) -> None:
    inspector = inspect(connection)
    preparer = connection.dialect.identifier_preparer
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present or not column.nullable:
                continue
            kind = column.type.compile(dialect=connection.dialect)
            connection.exec_driver_sql(
                f"ALTER TABLE {preparer.format_table(table)} "
                f"ADD COLUMN {preparer.format_column(column)} {kind}"
            )
