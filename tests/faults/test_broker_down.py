"""Pub/Sub is down while names change: every request still answers 200 (the event waits in the
outbox), and once the broker is up a flush delivers each event exactly once."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.faults.conftest import (
    Database,
    PushSetup,
    Services,
    Tally,
    create_users,
    notifications_seen,
    pubsub_env,
    service_env,
)
from tests.support.emulator import required_emulator, running_emulator
from tests.support.ports import free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

TOKEN = "a-flush-token-for-the-fault-tests"
CHANGES = 4
PUBLISH_TIMEOUT = 2.0


@pytest.mark.timeout(120)
def test_broker_down_during_change_name(
    database: Database, services: Services, pubsub: PushSetup, tmp_path: Path
) -> None:
    emulator = required_emulator()
    started = time.monotonic()
    port = free_port()  # nothing listens there yet
    broker = f"127.0.0.1:{port}"
    topic = "faults-broker-down"  # the emulator is ours alone: a fixed id is unique
    service = services.start(
        service_env(
            database,
            HOMING_PUBLISH_TIMEOUT=str(PUBLISH_TIMEOUT),
            HOMING_FLUSH_TOKEN=TOKEN,
            **pubsub_env(broker, topic),
        )
    )
    users = create_users(service, CHANGES)

    def change(user_id: int) -> tuple[httpx.Response, float]:
        begun = time.monotonic()
        answer = httpx.post(
            f"{service.url}/change-name", json={"user_id": user_id, "name": "Renamed"}, timeout=60
        )
        return answer, time.monotonic() - begun

    with ThreadPoolExecutor(CHANGES) as pool:
        answers, took = zip(*pool.map(change, users), strict=True)
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-event-status"] == "pending"
    for user_id in users:
        assert httpx.get(f"{service.url}/users/{user_id}").json()["name"] == "Renamed"
    sent = {answer.headers["x-event-id"] for answer in answers}
    assert len(sent) == CHANGES
    waiting = database.rows("SELECT event_id FROM homing_outbox")
    assert {str(event_id) for (event_id,) in waiting} == sent
    # Each publish was tried and ran into the publish timeout (not refused at once, not the
    # default timeout): the fault this test is about happened, for every event.
    timed_out = {
        event_id
        for event_id in sent
        for line in service.output().splitlines()
        if f"event {event_id} waits in the outbox: " in line
        and f"within {PUBLISH_TIMEOUT}s" in line
    }
    assert timed_out == sent, service.output()[-3000:]

    with running_emulator(emulator, tmp_path / "emulator.log", port=port):
        pubsub.subscribe(broker, f"{service.url}/events", topic=topic)
        flushes: list[dict[str, int]] = []

        def flush() -> bool:
            answer = httpx.post(
                f"{service.url}/outbox/flush",
                headers={"authorization": f"Bearer {TOKEN}"},
                timeout=30,
            )
            assert answer.status_code in (200, 503), answer.text
            flushes.append(answer.json())
            return answer.status_code == 200 and answer.json()["pending"] == 0

        # The client reconnects with a backoff after the refused attempts: flush until it took.
        eventually(flush, timeout=40, interval=0.5)

        def counts() -> dict[str, int]:
            return dict(notifications_seen(service, users))

        eventually(lambda: all(counts().get(e, 0) == 1 for e in sent), timeout=30, interval=0.25)
        time.sleep(1.5)  # one more redelivery tick of the emulator, had it not taken the acks
        tally = Tally.of(sent, notifications_seen(service, users))
        pubsub.remove_all()  # while this emulator still answers
    print(
        f"\n[broker down, {database.kind}] {tally.line()} (pending while down: {len(waiting)}, "
        f"change-name took {min(took):.1f}-{max(took):.1f}s with a {PUBLISH_TIMEOUT:.0f}s publish "
        "timeout, "
        f"flushes: {flushes}, {time.monotonic() - started:.1f}s)"
    )
    assert Tally.of(sent, database.notifications_by_event()) == tally
    assert tally.lost == 0
    assert tally.doubled == 0
