"""SQL stores on SQLAlchemy 2 (async): SQLite by default, PostgreSQL in production.

The tables live in :data:`metadata`; include it in your migrations, or call
``await create_tables(engine)`` for a database homing may set up itself.

One module per concern: ``schema`` (the tables, :func:`create_tables`), ``engine``
(:func:`create_engine`, driver errors as :class:`~homing.errors.StoreError`, driver cursors),
``dedupe`` (:class:`SQLDedupeStore`) and ``quarantine`` (:class:`SQLQuarantineStore`).
"""

from homing.stores.sql.dedupe import SQLDedupeStore
from homing.stores.sql.engine import (
    DRIVER_ERRORS,
    CompiledStatement,
    create_engine,
    driver_cursor,
    translate_errors,
)
from homing.stores.sql.quarantine import SQLQuarantineStore
from homing.stores.sql.schema import create_tables, handled_events, metadata, outbox, quarantine

__all__ = [
    "DRIVER_ERRORS",
    "CompiledStatement",
    "SQLDedupeStore",
    "SQLQuarantineStore",
    "create_engine",
    "create_tables",
    "driver_cursor",
    "handled_events",
    "metadata",
    "outbox",
    "quarantine",
    "translate_errors",
]
