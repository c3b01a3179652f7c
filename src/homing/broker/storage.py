"""Durable storage in SQLite: topics, subscriptions, messages and their deliveries.

One connection, owned by one writer thread. Operations queue up and the thread runs each batch
in one transaction (group commit): a publish is acknowledged only after the transaction holding
it has committed, in WAL mode with ``synchronous=FULL``, so a broker killed with -9 loses
nothing it acknowledged. Acks and retry bookkeeping ride along in the same batches; if one of
those is lost in a crash, the message is delivered again, which at-least-once allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, proto BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions (
    name TEXT PRIMARY KEY, topic TEXT NOT NULL, proto BLOB NOT NULL
);
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


@dataclass(slots=True)
class StoredMessage:
    """A published message as stored; ``message_id`` is its sequence number as a string."""

    seq: int
    topic: str
    data: bytes = field(repr=False)
    attributes: dict[str, str]
    ordering_key: str
    publish_time: float

    @property
    def message_id(self) -> str:
        return str(self.seq)


@dataclass(slots=True)
class Pending:
    """One message owed to one subscription."""

    subscription: str
    message: StoredMessage
    attempts: int = 0
    due: float = 0.0
    dead: bool = False
    last_error: str | None = None


class _Stop:
    pass


class Storage:
    """The broker's SQLite file (``":memory:"`` for a broker that forgets on exit)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=FULL")
        self._connection.executescript(_SCHEMA)
        self._queue: queue.SimpleQueue[
            tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any] | None] | _Stop
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_loop, name="homing-broker-storage")
        self._thread.start()

    # The writer thread -------------------------------------------------------------------

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

    # Operations (each runs in the writer thread) ------------------------------------------

    @staticmethod
    def publish(
        topic: str,
        messages: Sequence[tuple[bytes, Mapping[str, str], str]],
        subscriptions: Iterable[str],
        now: float,
    ) -> Callable[[sqlite3.Connection], list[StoredMessage]]:
        names = list(subscriptions)

        def operation(connection: sqlite3.Connection) -> list[StoredMessage]:
            rows = [
                (topic, data, orjson.dumps(attributes), ordering_key, now)
                for data, attributes, ordering_key in messages
            ]
            connection.executemany(
                "INSERT INTO messages (topic, data, attributes, ordering_key, publish_time) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            # One statement in a write transaction of the only writer: AUTOINCREMENT gave the
            # rows consecutive sequence numbers, ending at the last one inserted.
            (last,) = connection.execute("SELECT last_insert_rowid()").fetchone()
            first = last - len(rows) + 1
            stored = [
                StoredMessage(first + index, topic, data, dict(attributes), ordering_key, now)
                for index, (data, attributes, ordering_key) in enumerate(messages)
            ]
            if names:
                connection.executemany(
                    "INSERT INTO deliveries (subscription, seq, due) VALUES (?, ?, ?)",
                    [(name, message.seq, now) for message in stored for name in names],
                )
            else:  # no subscription: as in Pub/Sub, the message is lost (its id stays used)
                connection.executemany(
                    "DELETE FROM messages WHERE seq = ?", [(m.seq,) for m in stored]
                )
            return stored

        return operation

    @staticmethod
    def ack(subscription: str, seq: int) -> Callable[[sqlite3.Connection], None]:
        return Storage.acks(subscription, [seq])

    @staticmethod
    def acks(subscription: str, seqs: Sequence[int]) -> Callable[[sqlite3.Connection], None]:
        """Delete the deliveries ``seqs`` of ``subscription``, and the messages nobody owes."""

        def operation(connection: sqlite3.Connection) -> None:
            connection.executemany(
                "DELETE FROM deliveries WHERE subscription = ? AND seq = ?",
                [(subscription, seq) for seq in seqs],
            )
            connection.executemany(
                "DELETE FROM messages WHERE seq = ? AND NOT EXISTS "
                "(SELECT 1 FROM deliveries WHERE seq = ?)",
                [(seq, seq) for seq in seqs],
            )

        return operation

    @staticmethod
    def nack(pending: Pending) -> Callable[[sqlite3.Connection], None]:
        values = (
            pending.attempts,
            pending.due,
            int(pending.dead),
            pending.last_error,
            pending.subscription,
            pending.message.seq,
        )

        def operation(connection: sqlite3.Connection) -> None:
            connection.execute(
                "UPDATE deliveries SET attempts = ?, due = ?, dead = ?, last_error = ? "
                "WHERE subscription = ? AND seq = ?",
                values,
            )

        return operation

    @staticmethod
    def put(
        table: str, name: str, proto: bytes, topic: str | None = None
    ) -> Callable[[sqlite3.Connection], None]:
        def operation(connection: sqlite3.Connection) -> None:
            if table == "topics":
                connection.execute(
                    "INSERT OR REPLACE INTO topics (name, proto) VALUES (?, ?)", (name, proto)
                )
            else:
                connection.execute(
                    "INSERT OR REPLACE INTO subscriptions (name, topic, proto) VALUES (?, ?, ?)",
                    (name, topic, proto),
                )

        return operation

    @staticmethod
    def delete_topic(name: str) -> Callable[[sqlite3.Connection], None]:
        def operation(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM topics WHERE name = ?", (name,))

        return operation

    @staticmethod
    def delete_subscription(name: str) -> Callable[[sqlite3.Connection], None]:
        def operation(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM subscriptions WHERE name = ?", (name,))
            connection.execute("DELETE FROM deliveries WHERE subscription = ?", (name,))
            connection.execute("DELETE FROM messages WHERE seq NOT IN (SELECT seq FROM deliveries)")

        return operation

    @staticmethod
    def meta(key: str, make: Callable[[], bytes]) -> Callable[[sqlite3.Connection], bytes]:
        """The value stored under ``key``, storing ``make()`` first if there is none."""

        def operation(connection: sqlite3.Connection) -> bytes:
            row = connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is not None:
                return bytes(row[0])
            value = make()
            connection.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
            return value

        return operation

    @staticmethod
    def load() -> Callable[[sqlite3.Connection], tuple[list[bytes], list[bytes], list[Pending]]]:
        """Everything, at start-up: topic protos, subscription protos, deliveries owed."""

        def operation(
            connection: sqlite3.Connection,
        ) -> tuple[list[bytes], list[bytes], list[Pending]]:
            topics = [bytes(r[0]) for r in connection.execute("SELECT proto FROM topics")]
            subscriptions = [
                bytes(r[0]) for r in connection.execute("SELECT proto FROM subscriptions")
            ]
            rows = connection.execute(
                "SELECT d.subscription, d.attempts, d.due, d.dead, d.last_error, m.seq, m.topic, "
                "m.data, m.attributes, m.ordering_key, m.publish_time "
                "FROM deliveries d JOIN messages m ON m.seq = d.seq ORDER BY m.seq"
            )
            pending = [
                Pending(
                    subscription=row[0],
                    attempts=row[1],
                    due=row[2],
                    dead=bool(row[3]),
                    last_error=row[4],
                    message=StoredMessage(
                        row[5], row[6], bytes(row[7]), orjson.loads(row[8]), row[9], row[10]
                    ),
                )
                for row in rows
            ]
            return topics, subscriptions, pending

        return operation


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def now() -> float:
    """Wall-clock seconds: stored times survive a restart, unlike the monotonic clock."""
    return time.time()
