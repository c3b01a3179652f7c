"""SIGKILL the reference service while Pub/Sub pushes are being handled, restart it on the same
port, and every event answered 200 still has exactly one notification: users_api, and
django_api (the same API on homing.django: the outbox in Django's transaction, the handler's
effect and done mark in one atomic() block)."""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import (
    Database,
    PushSetup,
    RenameLoad,
    Services,
    Tally,
    create_users,
    kill_9,
    notifications_seen,
    pubsub_env,
    service_env,
)
from tests.support.ports import free_port
from tests.support.services import REFERENCE_SERVICES
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

USERS = 20
#: Renames answered 200 before the kill, at least.
ANSWERED = 30


@pytest.mark.postgres
@pytest.mark.timeout(120)
@pytest.mark.parametrize("reference_service", REFERENCE_SERVICES)
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

    # Renames go on until the kill, so pushes are owed at that moment (a fixed batch could be
    # handled to its end in the instant between the last look and the kill: Django's view
    # handles a push in milliseconds).
    load = RenameLoad(first.url, users, workers=8).start()

    def time_to_kill() -> bool:
        """Enough renames answered, pushes handled, and answered events still owed."""
        answered = load.event_ids()
        handled = set(db.notifications_by_event())
        return len(answered) >= ANSWERED and bool(handled) and bool(answered - handled)

    try:
        eventually(time_to_kill, timeout=30, interval=0.01)
        kill_9(first)
        handled_at_kill = set(db.notifications_by_event())
    finally:
        load.stop()
    sent = load.event_ids()
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
