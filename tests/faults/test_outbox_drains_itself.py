"""The reference service killed with -9 three times under load and restarted: nothing lost or
doubled, no committed rename answered with an error, and what the killed processes left in the
outbox is published by their successors within 30 s, with no flush by hand or scheduler."""

from __future__ import annotations

from functools import partial

import pytest

from tests.faults.conftest import (
    Database,
    PushSetup,
    RenameLoad,
    Services,
    create_users,
    kill_9,
    outbox_rows,
    pubsub_env,
    service_env,
    settle,
)
from tests.support.ports import free_port
from tests.support.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

USERS = 20
KILLS = 3


@pytest.mark.timeout(240)
def test_killed_three_times_and_the_outbox_drains_itself(
    pubsub_emulator: str,
    postgres_database: Database,
    services: Services,
    pubsub: PushSetup,
) -> None:
    db = postgres_database
    port = free_port()
    # No retry policy on the subscription: the emulator then retries every second (with one,
    # 0.8.20 may never push again a message whose push failed while the service was down).
    topic = pubsub.subscribe(pubsub_emulator, f"http://127.0.0.1:{port}/events")
    env = service_env(db, **pubsub_env(pubsub_emulator, topic))
    service = services.start(env, port=port)
    users = create_users(service, USERS)
    left_behind: list[int] = []
    load = RenameLoad(service.url, users, workers=8).start()
    try:
        for kill in range(1, KILLS + 1):
            eventually(partial(load.answered, 20 * kill), timeout=60, interval=0.02)
            kill_9(service)
            left_behind.append(outbox_rows(db))
            service = services.start(env, port=port)
        eventually(partial(load.answered, load.count(200) + 20), timeout=60, interval=0.05)
    finally:
        results = load.stop()
    settled = settle(db, results)
    in_db = db.notifications_by_event()
    print(
        f"\n[kill -9 x{KILLS}] {settled.tally.line()} renames={len(results)} "
        f"answered 200={len(settled.ok)} refused={len(settled.refused)} "
        f"unanswered={len(settled.unanswered)} "
        f"committed but refused={len(settled.committed_but_refused)} outbox rows right after "
        f"each kill={left_behind}, outbox empty {settled.drained:.1f}s after the load"
    )
    # Each kill left committed events in the outbox for a successor to publish: the fault this
    # test is about happened (counts, not differences: a successor drains them after a while).
    assert all(left_behind), f"outbox rows right after each kill: {left_behind}"
    assert settled.committed_but_refused == []
    assert max(in_db.values()) == 1  # also the events of renames that died with a process
    assert settled.tally.lost == 0
    assert settled.tally.doubled == 0
