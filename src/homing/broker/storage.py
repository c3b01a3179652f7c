"""Durable storage in SQLite: topics, subscriptions, messages and their deliveries.

One connection, owned by one writer thread. Operations queue up and the thread runs each batch
in one transaction (group commit, :class:`~homing.publishers.journal.SQLiteWriter`): a publish
is acknowledged only after the transaction holding it has committed, in WAL mode with
``synchronous=FULL``, so a broker killed with -9 loses nothing it acknowledged. Acks and retry
bookkeeping ride along in the same batches; if one of those is lost in a crash, the message is
delivered again, which at-least-once allows.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from homing.publishers.journal import MESSAGE_TABLES, SQLiteWriter

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, proto BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions (
    name TEXT PRIMARY KEY, topic TEXT NOT NULL, proto BLOB NOT NULL
);
"""
    + MESSAGE_TABLES
)


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


class Storage(SQLiteWriter):
    """The broker's SQLite file (``":memory:"`` for a broker that forgets on exit)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, schema=_SCHEMA, thread_name="homing-broker-storage")

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


def now() -> float:
    """Wall-clock seconds: stored times survive a restart, unlike the monotonic clock."""
    return time.time()
