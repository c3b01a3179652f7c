"""SIGKILL the reference service while Pub/Sub pushes are being handled, restart it on the same
port, and every event answered 200 still has exactly one notification."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.faults.conftest import (
    Database,
    PushSetup,
    Services,
    Tally,
    create_users,
    kill_9,
    notifications_seen,
    pubsub_env,
    service_env,
)
from tests.support.ports import free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

USERS = 20
CHANGES = 40


def _change_name(url: str, user_id: int, name: str) -> str | None:
    """The event id when the service answered 200, else ``None`` (an error or a dead process)."""
    try:
        answer = httpx.post(
            f"{url}/change-name", json={"user_id": user_id, "name": name}, timeout=15
        )
    except httpx.TransportError:
        return None
    return answer.headers["x-event-id"] if answer.status_code == 200 else None


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_kill_9_while_handlers_run(
    pubsub_emulator: str,
    postgres_database: Database,
    services: Services,
    pubsub: PushSetup,
) -> None:
    started = time.monotonic()
    port = free_port()
    topic = pubsub.subscribe(pubsub_emulator, f"http://127.0.0.1:{port}/events")
    env = service_env(postgres_database, **pubsub_env(pubsub_emulator, topic))
    first = services.start(env, port=port)
    users = create_users(first, USERS)
    db = postgres_database

    with ThreadPoolExecutor(8) as pool:
        answers = [
            pool.submit(_change_name, first.url, users[n % USERS], f"name-{n}")
            for n in range(CHANGES)
        ]

        def time_to_kill() -> bool:
            """Pushes handled, others owed, and the last requests still under way."""
            done = [future.result() for future in answers if future.done()]
            answered = {event_id for event_id in done if event_id is not None}
            handled = set(db.notifications_by_event())
            return len(done) >= CHANGES * 3 // 4 and bool(handled) and bool(answered - handled)

        eventually(time_to_kill, timeout=30, interval=0.01)
        kill_9(first)
        handled_at_kill = set(db.notifications_by_event())
        sent = {event_id for future in answers if (event_id := future.result()) is not None}
    assert len(sent) >= USERS, "most change-name requests should have been answered"
    # Events answered 200 and still unhandled when the process died: its successor (Pub/Sub
    # pushing to the same port) must handle them. None would mean the kill tested nothing.
    owed = sent - handled_at_kill
    assert owed, "every answered event was handled before the kill"

    # The reference service's handler has effects="database": its done mark commits with its
    # effect and it takes no leased claim, so a process killed mid-handler leaves none behind
    # (one would hold its event back for a whole lease, the ack deadline).
    stuck = db.rows("SELECT event_id FROM homing_handled_events WHERE state = 'claimed'")
    second = services.start(env, port=port)  # same port: Pub/Sub keeps pushing there

    def every_event_once() -> bool:
        counts = db.notifications_by_event()
        return all(counts.get(event_id, 0) == 1 for event_id in sent)

    eventually(every_event_once, timeout=60, interval=0.25)
    tally = Tally.of(sent, notifications_seen(second, users))
    print(
        f"\n[kill -9] {tally.line()} (handled before the kill: {len(handled_at_kill)}, "
        f"owed to the successor: {len(owed)}, claims the killed process left: {len(stuck)}, "
        f"{time.monotonic() - started:.1f}s)"
    )
    assert stuck == []
    in_db = db.notifications_by_event()
    assert Tally.of(sent, in_db) == tally
    assert max(in_db.values()) == 1  # also for events whose request died with the process
    assert tally.lost == 0
    assert tally.doubled == 0
