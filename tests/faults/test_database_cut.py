"""The service's database connections cut and refused for 5 s mid-load (through a proxy; the
PostgreSQL server stays up): nothing lost or doubled, no committed rename answered with an
error, and the outbox empty soon after the load without anyone flushing it."""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import (
    Database,
    PushSetup,
    RenameLoad,
    Services,
    create_users,
    pubsub_env,
    service_env,
    settle,
)
from tests.support.ports import free_port
from tests.support.proxy import cuttable_proxy
from tests.support.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

USERS = 10
CUT = 5.0


@pytest.mark.timeout(180)
def test_database_connections_cut_and_refused_mid_load(
    pubsub_emulator: str,
    postgres_database: Database,
    services: Services,
    pubsub: PushSetup,
) -> None:
    db = postgres_database
    with cuttable_proxy(("127.0.0.1", 5432)) as proxy:
        port = free_port()
        topic = pubsub.subscribe(pubsub_emulator, f"http://127.0.0.1:{port}/events")
        env = service_env(db, **pubsub_env(pubsub_emulator, topic))
        env["DATABASE_URL"] = db.url.replace(":5432/", f":{proxy.port}/")
        service = services.start(env, port=port)
        users = create_users(service, USERS)
        load = RenameLoad(service.url, users).start()
        try:
            eventually(lambda: load.count(200) >= 30, timeout=30, interval=0.05)
            proxy.cut()
            time.sleep(CUT)
            proxy.restore()
            answered_before = load.count(200)
            eventually(lambda: load.count(200) >= answered_before + 30, timeout=60, interval=0.05)
        finally:
            results = load.stop()
        settled = settle(db, results)
    refused = settled.refused
    slowest = max((r.seconds for r in refused), default=0.0)
    waited = [r for r in results if r.status == 200 and r.seconds >= CUT * 0.8]
    print(
        f"\n[database cut {CUT:.0f}s] {settled.tally.line()} renames={len(results)} "
        f"answered 200={len(settled.ok)} refused={len(refused)} "
        f"(statuses {sorted({r.status or 0 for r in refused})}, slowest {slowest:.2f}s) "
        f"unanswered={len(settled.unanswered)} "
        f"committed but refused={len(settled.committed_but_refused)} "
        f"answered 200 after waiting out the cut={len(waited)} "
        f"outbox empty {settled.drained:.1f}s after the load"
    )
    # A rename in flight when the connections went is refused, or — caught in its COMMIT —
    # waits until the database can say whether it committed.
    assert refused or waited, "the cut should have refused or held some renames"
    assert {r.status for r in refused} <= {503}
    assert settled.committed_but_refused == []
    assert settled.unanswered == []
    log = service.output()  # every failure was an answer, with its reason: no traceback
    assert "Traceback" not in log, log[log.find("Traceback") - 500 :][:6000]
    assert settled.tally.lost == 0
    assert settled.tally.doubled == 0
