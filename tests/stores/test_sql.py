"""``homing.stores.sql``: its public names, and ``create_tables`` making every table homing owns."""

from __future__ import annotations

import types
from pathlib import Path

from sqlalchemy import inspect

import homing.stores.sql
from homing.stores.sql import create_engine, create_tables

TABLES = ["homing_handled_events", "homing_outbox", "homing_quarantine"]


def test_the_package_exports_exactly_all() -> None:
    exported = {
        name
        for name, value in vars(homing.stores.sql).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert exported == set(homing.stores.sql.__all__)
    assert len(homing.stores.sql.__all__) == len(exported)


async def test_create_tables_makes_the_stores_and_the_outboxs_tables(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'homing.db'}")
    try:
        await create_tables(engine)
        await create_tables(engine)  # where they are missing only
        async with engine.connect() as connection:
            names = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    finally:
        await engine.dispose()
    assert sorted(names) == TABLES
    assert sorted(homing.stores.sql.metadata.tables) == TABLES
