"""The loopback publisher's journal: a SQLite file holding each message until it is delivered.

A message is appended before :meth:`~homing.publishers.LoopbackPublisher.publish` returns, and
forgotten once delivered (or kept elsewhere); whatever a killed process left is loaded again at
the next start. The standard library's ``sqlite3`` only.

:class:`SQLiteWriter` (one connection, one writer thread, group commit) is the journal's
writer; the local push broker's storage is built on it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

T = TypeVar("T")


class _Stop:
    pass


def _owner_only(path: Path) -> None:
    """Make ``path`` (and any WAL files beside it) readable by its owner alone.

    The files hold signed messages and, for the broker, its OIDC signing key. SQLite creates
    the ``-wal`` and ``-shm`` files with the database file's mode, so creating that one
    ``0600`` covers them; files left by an older version are narrowed too.
    """
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            if file.stat().st_mode & 0o077:
                file.chmod(0o600)


class SQLiteWriter:
    """A SQLite file written by one thread: operations queue up and the thread runs each batch in
    one transaction (group commit).

    In WAL mode with ``synchronous=FULL``: an operation awaited with :meth:`run` has returned
    only once the transaction holding it has committed, so a process killed with -9 loses
    nothing it was told is written. ``":memory:"`` keeps nothing.
    """

    def __init__(self, path: str | Path, *, schema: str, thread_name: str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            _owner_only(Path(self.path))
        self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=FULL")
        self._connection.executescript(schema)
        self._queue: queue.SimpleQueue[
            tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any] | None] | _Stop
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_loop, name=thread_name)
        self._thread.start()

    def _write_loop(self) -> None:
        connection = self._connection
        while True:
            batch = [self._queue.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 2000:
                    batch.append(self._queue.get_nowait())
            stop = any(isinstance(item, _Stop) for item in batch)
            work = [item for item in batch if not isinstance(item, _Stop)]
            results: list[tuple[asyncio.Future[Any] | None, bool, Any]] = []
            if work:
                connection.execute("BEGIN IMMEDIATE")
                for operation, future in work:
                    connection.execute("SAVEPOINT op")
                    try:
                        value = operation(connection)
                    except Exception as exc:  # one failed operation fails only its caller
                        connection.execute("ROLLBACK TO op")
                        results.append((future, False, exc))
                    else:
                        results.append((future, True, value))
                    connection.execute("RELEASE op")
                try:
                    connection.execute("COMMIT")
                except sqlite3.Error as exc:
                    results = [(future, False, exc) for future, _, _ in results]
                for future, ok, value in results:
                    if future is not None:
                        future.get_loop().call_soon_threadsafe(_settle, future, ok, value)
            if stop:
                connection.close()
                return

    async def run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation`` in the writer thread; return once its batch has committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put((operation, future))
        return await future

    def later(self, operation: Callable[[sqlite3.Connection], Any]) -> None:
        """Queue ``operation`` with the next batch, without waiting for it."""
        self._queue.put((operation, None))

    def close(self) -> None:
        """Commit what is queued and close the file."""
        if self._thread.is_alive():
            self._queue.put(_Stop())
            self._thread.join()


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


#: The message tables, shared with the broker's storage (journals were files of it before: a
#: journal an earlier version left is read, and an earlier version reads this one).
MESSAGE_TABLES = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    data BLOB NOT NULL,
    attributes BLOB NOT NULL,
    ordering_key TEXT NOT NULL,
    publish_time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    subscription TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL,
    dead INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (subscription, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_by_seq ON deliveries (seq);
"""
_QUEUE = "loopback"  # the topic and the subscription of every message


@dataclass(frozen=True, slots=True)
class Entry:
    """A message in the journal: the push body as it is posted, and what names its event."""

    seq: int
    body: bytes = field(repr=False)
    event_type: str
    event_id: str


class Journal:
    """The journal in the SQLite file at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._writer = SQLiteWriter(
            path, schema=MESSAGE_TABLES, thread_name="homing-loopback-journal"
        )

    async def append(self, body: bytes, *, event_type: str, event_id: str) -> int:
        """Write a push body; return its number once it is committed."""
        attributes = orjson.dumps({"event-type": event_type, "event-id": event_id})

        def operation(connection: sqlite3.Connection) -> int:
            now = time.time()
            cursor = connection.execute(
                "INSERT INTO messages (topic, data, attributes, ordering_key, publish_time) "
                "VALUES (?, ?, ?, '', ?)",
                (_QUEUE, body, attributes, now),
            )
            seq = cursor.lastrowid
            assert seq is not None
            connection.execute(
                "INSERT INTO deliveries (subscription, seq, due) VALUES (?, ?, ?)",
                (_QUEUE, seq, now),
            )
            return seq

        return await self._writer.run(operation)

    def forget(self, seq: int) -> None:
        """Remove message ``seq`` with the next batch (delivered, or kept elsewhere)."""

        def operation(connection: sqlite3.Connection) -> None:
            connection.execute(
                "DELETE FROM deliveries WHERE subscription = ? AND seq = ?", (_QUEUE, seq)
            )
            connection.execute(
                "DELETE FROM messages WHERE seq = ? AND NOT EXISTS "
                "(SELECT 1 FROM deliveries WHERE seq = ?)",
                (seq, seq),
            )

        self._writer.later(operation)

    async def load(self) -> list[Entry]:
        """Every message the journal holds, oldest first."""

        def operation(connection: sqlite3.Connection) -> list[Entry]:
            rows = connection.execute(
                "SELECT m.seq, m.data, m.attributes FROM deliveries d JOIN messages m "
                "ON m.seq = d.seq WHERE d.subscription = ? ORDER BY m.seq",
                (_QUEUE,),
            )
            entries = []
            for seq, data, raw in rows:
                attributes = orjson.loads(raw)
                entries.append(
                    Entry(
                        seq,
                        bytes(data),
                        attributes.get("event-type", "?"),
                        attributes.get("event-id", "?"),
                    )
                )
            return entries

        return await self._writer.run(operation)

    def close(self) -> None:
        """Commit what is queued and close the file."""
        self._writer.close()
