"""A handler slower than the ack deadline: the emulator redelivers while the first run still
works; homing answers those deliveries 409 and the effect happens exactly once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from homing import KeyRing, Signer
from homing.signing import EVENT_ID
from tests.faults.conftest import KEYS, Database, PushSetup, Tally
from tests.support.services import serve_test_app
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

ACK_DEADLINE = 10
SLOW_SECONDS = 13  # past the deadline, with room for a few redeliveries before it ends


@dataclass(frozen=True)
class SlowApp:
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def answers(self) -> list[int]:
        """The status of every push answered, from uvicorn's access log."""
        marker = '"POST /events HTTP/1.1" '
        return [
            int(line.split(marker, 1)[1][:3])
            for line in self.output().splitlines()
            if marker in line
        ]


@pytest.fixture
def slow_app(sqlite_database: Database, tmp_path: Path) -> Iterator[SlowApp]:
    log = tmp_path / "slow.log"
    env = {
        "HOMING_SIGNING_KEYS": KEYS,
        "DATABASE_URL": sqlite_database.url,
        "SLOW_SECONDS": str(SLOW_SECONDS),
    }
    # The access log is kept: it is how the test sees each delivery's answer.
    with serve_test_app("slow_effect", env, log, access_log=True) as url:
        yield SlowApp(url, log)


def test_handler_slower_than_the_ack_deadline(
    pubsub_emulator: str, slow_app: SlowApp, sqlite_database: Database, pubsub: PushSetup
) -> None:
    started = time.monotonic()
    topic = pubsub.subscribe(pubsub_emulator, f"{slow_app.url}/events", ack_deadline=ACK_DEADLINE)
    data = orjson.dumps({"n": 1})
    attributes = Signer(KeyRing.from_string(KEYS)).sign(data, "test.slow")
    event_id = attributes[EVENT_ID]
    pubsub.publish(topic, data, attributes)

    def acked_after_the_run() -> bool:
        # The first run's own 204 comes after the deadline and does not count; the delivery
        # after it is a duplicate, answered 204, which the emulator takes.
        return slow_app.answers().count(204) >= 2

    eventually(acked_after_the_run, timeout=SLOW_SECONDS + 25, interval=0.25)
    answers = slow_app.answers()
    effects = {
        str(e): int(n)
        for e, n in sqlite_database.rows("SELECT event_id, count(*) FROM effects GROUP BY event_id")
    }
    tally = Tally.of([event_id], effects)
    print(
        f"\n[slow handler] {tally.line()} (deliveries answered: {answers}, runs: "
        f"{slow_app.output().count('run started')}, {time.monotonic() - started:.1f}s)"
    )
    assert slow_app.output().count("run started") == 1
    assert answers.count(409) >= 1, "the emulator redelivered while the first run worked"
    assert len(answers) >= 2
    assert tally.lost == 0
    assert tally.doubled == 0
