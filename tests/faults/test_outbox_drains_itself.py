"""The reference service killed with -9 three times under load and restarted: nothing lost or
doubled, no committed rename answered with an error, and what the killed processes left in the
outbox is published by their successors within 30 s, with no flush by hand or scheduler."""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import free_port, poll
from tests.faults.conftest import (
    Database,
    PushSetup,
    RenameLoad,
    Services,
    Tally,
    create_users,
    kill_9,
    outbox_rows,
    pubsub_env,
    renamed_to,
    service_env,
)

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
        for kill in range(KILLS):
            poll(lambda k=kill: load.count(200) >= 20 * (k + 1), deadline=60, interval=0.02)
            kill_9(service)
            left_behind.append(outbox_rows(db))
            service = services.start(env, port=port)
        answered = load.count(200)
        poll(lambda: load.count(200) >= answered + 20, deadline=60, interval=0.05)
    finally:
        results = load.stop()
    ended = time.monotonic()
    poll(lambda: outbox_rows(db) == 0, deadline=30, interval=0.25)
    drained = time.monotonic() - ended

    ok = {r.event_id for r in results if r.status == 200 and r.event_id}
    poll(
        lambda: all(db.notifications_by_event().get(e, 0) == 1 for e in ok),
        deadline=60,
        interval=0.25,
    )
    refused = [r for r in results if r.status is not None and r.status != 200]
    committed_but_refused = [r for r in refused if r.name in renamed_to(db)]
    in_db = db.notifications_by_event()
    tally = Tally.of(ok, in_db)
    print(
        f"\n[kill -9 x{KILLS}] {tally.line()} renames={len(results)} answered 200={len(ok)} "
        f"refused={len(refused)} unanswered={sum(r.status is None for r in results)} "
        f"committed but refused={len(committed_but_refused)} outbox rows right after each "
        f"kill={left_behind}, outbox empty {drained:.1f}s after the load"
    )
    assert committed_but_refused == []
    assert max(in_db.values()) == 1  # also the events of renames that died with a process
    assert tally.lost == 0
    assert tally.doubled == 0
