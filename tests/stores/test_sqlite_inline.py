"""SQLite inline in the event loop: another process's lock is waited for off the loop, WAL
checkpoints run on a thread of their own, and SQLAlchemy works on it as on aiosqlite."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

from sqlalchemy import text

from homing.stores import Claim
from homing.stores.sql import SQLDedupeStore, _sqlite_inline, create_engine, create_tables
from tests.support.waiting import eventually_async


def _checkpointers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "homing-sqlite-checkpoint"]


async def test_a_lock_held_elsewhere_is_waited_for_without_stopping_the_event_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "locked.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await create_tables(engine)
    store = SQLDedupeStore(engine)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # as another process would: the write lock, held
    released = asyncio.Event()

    async def release_after_some_turns_of_the_loop() -> None:
        for _ in range(20):
            await asyncio.sleep(0.01)
        other.execute("ROLLBACK")  # only an event loop that went on while claim() waited
        released.set()  # gets here: a blocked one would keep the lock held for ever

    releasing = asyncio.create_task(release_after_some_turns_of_the_loop())
    try:
        assert await store.claim("e1", lease=60) is Claim.CLAIMED
        assert released.is_set()  # it did wait for the lock
    finally:
        releasing.cancel()
        other.close()
        await engine.dispose()


async def test_sqlalchemy_features_work_inline(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/features.db")
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
            inserted = await connection.execute(text("INSERT INTO t (v) VALUES ('a')"))
            assert inserted.lastrowid == 1
            await connection.execute(
                text("INSERT INTO t (v) VALUES (:v)"), [{"v": "b"}, {"v": "c"}]
            )
        async with engine.connect() as connection:
            auto = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await auto.execute(text("INSERT INTO t (v) VALUES ('d')"))  # committed by itself
        async with engine.connect() as connection:
            rows = (await connection.execute(text("SELECT v FROM t ORDER BY id"))).all()
            mode = (await connection.execute(text("PRAGMA journal_mode"))).scalar()
            synchronous = (await connection.execute(text("PRAGMA synchronous"))).scalar()
            streamed = [row.v async for row in await connection.stream(text("SELECT v FROM t"))]
    finally:
        await engine.dispose()
    assert [row.v for row in rows] == ["a", "b", "c", "d"]
    assert streamed == ["a", "b", "c", "d"]
    assert (mode, synchronous) == ("wal", 1)  # WAL, synchronous=NORMAL


async def test_checkpoints_run_on_a_thread_while_the_database_is_open(tmp_path: Path) -> None:
    before = len(_checkpointers())
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/wal.db")
    await create_tables(engine)
    store = SQLDedupeStore(engine)
    for n in range(300):
        await store.done(f"e{n}")
    assert len(_checkpointers()) == before + 1
    [checkpointer] = [c for c in _sqlite_inline._checkpointers.values() if "wal.db" in c.path]
    after_the_writes = checkpointer.rounds + 1  # the round under way may have begun before
    await eventually_async(lambda: checkpointer.rounds > after_the_writes)
    assert checkpointer.last is not None
    busy, frames, copied = checkpointer.last  # the thread's own checkpoint, not a probe's
    assert busy == 0
    assert frames > 0  # the writes went to the log ...
    assert frames == copied  # ... and the thread copied all of it into the database file
    await engine.dispose()
    await eventually_async(lambda: len(_checkpointers()) == before)


async def test_the_done_marks_are_one_btree_and_an_older_table_still_works(tmp_path: Path) -> None:
    """New databases keep the marks WITHOUT ROWID (one page written per mark); a table made by
    an earlier version, with a rowid, is left as it is and works the same."""
    older = tmp_path / "older.db"
    with closing(sqlite3.connect(older)) as connection:
        connection.execute(
            "CREATE TABLE homing_handled_events (event_id VARCHAR(255) NOT NULL, "
            "state VARCHAR(16) NOT NULL, lease_until DOUBLE NOT NULL, PRIMARY KEY (event_id))"
        )
    for path, without_rowid in ((tmp_path / "new.db", True), (older, False)):
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        try:
            await create_tables(engine)
            store = SQLDedupeStore(engine)
            async with store.transaction("e-1") as transaction:
                assert transaction.claim is Claim.CLAIMED
            async with store.transaction("e-1") as transaction:
                assert transaction.claim is Claim.DUPLICATE
        finally:
            await engine.dispose()
        with closing(sqlite3.connect(path)) as connection:
            [[sql]] = connection.execute(
                "SELECT sql FROM sqlite_master WHERE name = 'homing_handled_events'"
            ).fetchall()
            assert ("WITHOUT ROWID" in sql) is without_rowid
            assert connection.execute("SELECT state FROM homing_handled_events").fetchall() == [
                ("done",)
            ]
