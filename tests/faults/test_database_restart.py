"""PostgreSQL restarts while names change and pushes are handled: requests may fail meanwhile,
but every event whose request answered 200 ends with exactly one notification. The server
restarted is a throwaway cluster of this test's own, never the one other tests share."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

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
from tests.support.ports import free_port
from tests.support.postgres import Cluster
from tests.support.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

USERS = 10
WORKERS = 4
TOKEN = "a-flush-token-for-the-fault-tests"


@pytest.mark.timeout(150)
def test_database_restarted_mid_run(
    pubsub_emulator: str,
    postgres_cluster: Cluster,
    cluster_database: Database,
    services: Services,
    pubsub: PushSetup,
) -> None:
    started = time.monotonic()
    db = cluster_database
    port = free_port()
    topic = pubsub.subscribe(pubsub_emulator, f"http://127.0.0.1:{port}/events")
    service = services.start(
        service_env(db, HOMING_FLUSH_TOKEN=TOKEN, **pubsub_env(pubsub_emulator, topic)), port=port
    )
    users = create_users(service, USERS)

    stop = threading.Event()
    restarting = threading.Event()
    restarted = threading.Event()
    sent: set[str] = set()
    # Outcomes by when they came: "before", "during" or "after" the restart.
    answers: Counter[str] = Counter()
    counting = threading.Lock()

    def count(outcome: str) -> None:
        with counting:
            answers[outcome] += 1

    def when() -> str:
        return "after" if restarted.is_set() else "during" if restarting.is_set() else "before"

    def traffic(worker: int) -> None:
        n = 0
        with httpx.Client(base_url=service.url, timeout=15) as client:
            while not stop.is_set():
                n += 1
                user_id = users[(worker + n * WORKERS) % USERS]
                try:
                    answer = client.post(
                        "/change-name", json={"user_id": user_id, "name": f"w{worker}-{n}"}
                    )
                except httpx.TransportError as exc:
                    count(f"{when()}: {type(exc).__name__}")
                    continue
                count(f"{when()}: {answer.status_code}")
                if answer.status_code == 200:
                    sent.add(answer.headers["x-event-id"])

    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            running = [pool.submit(traffic, worker) for worker in range(WORKERS)]
            eventually(lambda: len(db.notifications_by_event()) >= 5, timeout=30, interval=0.05)
            restarting.set()
            postgres_cluster.restart()  # returns once the server accepts connections again
            restarted.set()
            # Traffic after the restart: the service must have found working connections again.
            eventually(lambda: answers["after: 200"] >= 20, timeout=30, interval=0.05)
            stop.set()
            for worker in running:
                worker.result()
    finally:
        stop.set()

    # A scheduler's flush: events staged by requests that failed after their commit go out too.
    flushed = httpx.post(
        f"{service.url}/outbox/flush", headers={"authorization": f"Bearer {TOKEN}"}, timeout=30
    )
    assert flushed.status_code == 200, flushed.text

    # The reference service's handler has effects="database": its done mark commits with its
    # effect and it takes no leased claim, so the restart can leave none behind (one would
    # hold its event back for a whole lease, the ack deadline).
    stuck = db.rows("SELECT event_id FROM homing_handled_events WHERE state = 'claimed'")
    eventually(
        lambda: all(db.notifications_by_event().get(e, 0) == 1 for e in sent),
        timeout=60,
        interval=0.25,
    )
    tally = Tally.of(sent, notifications_seen(service, users))
    in_db = db.notifications_by_event()
    unanswered = len(set(in_db) - sent)
    print(
        f"\n[postgres restart] {tally.line()} (answers: {dict(sorted(answers.items()))}, "
        f"effects of requests that did not answer 200: {unanswered}, "
        f"claims left behind: {len(stuck)}, "
        f"{time.monotonic() - started:.1f}s)"
    )
    # The restart reached the service: requests answered once it began failed (their
    # connections were cut, or refused while the server was down). None would mean the
    # restart tested nothing.
    cut = sum(
        n
        for outcome, n in answers.items()
        if not outcome.startswith("before") and not outcome.endswith(": 200")
    )
    assert cut, f"no request failed once the restart began: {dict(answers)}"
    assert stuck == []
    assert Tally.of(sent, in_db) == tally
    assert max(in_db.values()) == 1
    assert tally.lost == 0
    assert tally.doubled == 0
