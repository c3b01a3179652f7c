"""The loopback publisher's journal: what it holds survives a restart, a journal an earlier
version left is read, and the publishers need nothing from the broker."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson

from homing.publishers.journal import Entry, Journal

# The file as versions before the journal had a module of its own wrote it: the broker's storage.
EARLIER_FORMAT = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE topics (name TEXT PRIMARY KEY, proto BLOB NOT NULL);
CREATE TABLE subscriptions (name TEXT PRIMARY KEY, topic TEXT NOT NULL, proto BLOB NOT NULL);
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    data BLOB NOT NULL,
    attributes BLOB NOT NULL,
    ordering_key TEXT NOT NULL,
    publish_time REAL NOT NULL
);
CREATE TABLE deliveries (
    subscription TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL,
    dead INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (subscription, seq)
) WITHOUT ROWID;
CREATE INDEX deliveries_by_seq ON deliveries (seq);
"""


async def test_entries_survive_a_restart_in_order_until_forgotten(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal" / "loopback.sqlite3")
    first = await journal.append(b"one", event_type="order.placed", event_id="e1")
    second = await journal.append(b"two", event_type="order.paid", event_id="e2")
    journal.forget(first)
    journal.close()

    reopened = Journal(tmp_path / "journal" / "loopback.sqlite3")
    assert await reopened.load() == [Entry(second, b"two", "order.paid", "e2")]
    reopened.forget(second)
    assert await reopened.load() == []
    reopened.close()


async def test_a_journal_an_earlier_version_left_is_delivered_from(tmp_path: Path) -> None:
    path = tmp_path / "loopback.sqlite3"
    earlier = sqlite3.connect(path)
    earlier.executescript(EARLIER_FORMAT)
    attributes = orjson.dumps({"event-type": "order.placed", "event-id": "e-old"})
    earlier.execute(
        "INSERT INTO messages (topic, data, attributes, ordering_key, publish_time) "
        "VALUES ('loopback', ?, ?, '', 1.0)",
        (b"{}", attributes),
    )
    earlier.execute("INSERT INTO deliveries (subscription, seq, due) VALUES ('loopback', 1, 1.0)")
    earlier.commit()
    earlier.close()

    journal = Journal(path)
    assert await journal.load() == [Entry(1, b"{}", "order.placed", "e-old")]
    later = await journal.append(b"new", event_type="order.placed", event_id="e-new")
    assert later == 2
    journal.forget(1)
    journal.forget(later)
    assert await journal.load() == []
    journal.close()
    after = sqlite3.connect(path)
    assert after.execute("SELECT count(*) FROM messages").fetchone() == (0,)
    after.close()


def test_the_publishers_import_nothing_from_the_broker() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, homing.publishers, homing.publishers.pubsub; "
            "print(sorted(m for m in sys.modules if m.startswith('homing.broker')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert loaded.strip() == "[]"


async def test_the_journal_is_readable_by_its_owner_alone(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "loopback.sqlite3")
    await journal.append(b"signed", event_type="order.placed", event_id="e1")
    modes = _modes(tmp_path)
    journal.close()
    assert "loopback.sqlite3-wal" in modes
    assert set(modes.values()) == {0o600}, modes


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
