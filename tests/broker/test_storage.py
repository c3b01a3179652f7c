"""The broker's SQLite storage, on a file (what a restart reads back is the point)."""

from __future__ import annotations

from pathlib import Path

from homing.broker.storage import Storage

TOPIC = "projects/local/topics/events"
SUBSCRIPTION = "projects/local/subscriptions/events-push"


async def test_a_publish_numbers_its_messages_in_order_and_a_restart_reads_them_back(
    tmp_path: Path,
) -> None:
    storage = Storage(tmp_path / "broker.sqlite3")
    first = await storage.run(
        Storage.publish(TOPIC, [(b"a", {"k": "1"}, ""), (b"b", {}, "key")], [SUBSCRIPTION], 1.0)
    )
    second = await storage.run(Storage.publish(TOPIC, [(b"c", {}, "")], [SUBSCRIPTION], 2.0))
    await storage.run(Storage.acks(SUBSCRIPTION, [first[0].seq]))
    storage.close()

    assert [m.seq for m in first + second] == [1, 2, 3]
    reopened = Storage(tmp_path / "broker.sqlite3")
    _, _, pending = await reopened.run(Storage.load())
    reopened.close()
    assert [(p.message.seq, p.message.data, p.message.attributes) for p in pending] == [
        (2, b"b", {}),
        (3, b"c", {}),
    ]
    assert pending[0].message.ordering_key == "key"


async def test_messages_published_with_no_subscription_are_not_kept(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "broker.sqlite3")
    lost = await storage.run(Storage.publish(TOPIC, [(b"a", {}, "")], [], 1.0))
    kept = await storage.run(Storage.publish(TOPIC, [(b"b", {}, "")], [SUBSCRIPTION], 1.0))
    _, _, pending = await storage.run(Storage.load())
    storage.close()
    assert kept[0].seq == lost[0].seq + 1  # the lost message's id stays used
    assert [p.message.data for p in pending] == [b"b"]


async def test_the_files_are_readable_by_their_owner_alone(tmp_path: Path) -> None:
    # They hold the dev OIDC signing key and every signed message.
    path = tmp_path / "broker.sqlite3"
    storage = Storage(path)
    await storage.run(Storage.publish(TOPIC, [(b"a", {}, "")], [SUBSCRIPTION], 1.0))
    modes = _modes(tmp_path)
    storage.close()
    assert {"broker.sqlite3", "broker.sqlite3-wal"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes


async def test_a_world_readable_file_an_older_version_left_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "broker.sqlite3"
    Storage(path).close()
    path.chmod(0o644)
    Storage(path).close()
    assert path.stat().st_mode & 0o777 == 0o600


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
