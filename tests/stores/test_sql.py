"""``homing.stores.sql``: its public names, and ``create_tables`` making every table homing owns."""

from __future__ import annotations

import subprocess
import sys
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


def test_a_sqlite_service_never_imports_another_databases_dialect(tmp_path: Path) -> None:
    """Each dialect package costs tens of milliseconds of a cold start: the stores and the
    outbox use the one their engine loaded, so a service on SQLite loads none other."""
    script = (
        "import asyncio, sys\n"
        "from homing.outbox import SQLOutbox\n"
        "from homing.stores.sql import SQLDedupeStore, SQLQuarantineStore, create_engine, "
        "create_tables\n"
        f"engine = create_engine('sqlite+aiosqlite:///{tmp_path}/d.db')\n"
        "async def main():\n"
        "    await create_tables(engine)\n"
        "    store = SQLDedupeStore(engine)\n"
        "    SQLQuarantineStore(engine)\n"
        "    print(await store.claim('e1', lease=5))\n"
        "    await engine.dispose()\n"
        "asyncio.run(main())\n"
        "print(sorted({m.split('.')[2] for m in sys.modules "
        "if m.startswith('sqlalchemy.dialects.') and m.count('.') >= 2}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert out.split("\n")[:2] == ["Claim.CLAIMED", "['_typing', 'sqlite']"]
