"""``Homing.from_env``: a whole service from the environment — signer, publisher, push token,
SQL stores, outbox and telemetry — with one-line errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import func, select

from homing import ConfigurationError, Homing, LoopbackPublisher, MemoryPublisher, Settings
from homing.outbox import SQLOutbox
from homing.stores.sql import SQLDedupeStore, SQLQuarantineStore
from homing.stores.sql.schema import outbox as outbox_table
from homing.telemetry import Telemetry
from homing.testing import assert_handled, push
from tests.conftest import OrderPlaced
from tests.support.waiting import eventually_async

KEYS = "k1:a-test-secret-long-enough-to-sign"


def _service(environ: dict[str, str], **overrides: object) -> Homing:
    homing = Homing.from_env(environ, **overrides)  # type: ignore[arg-type]
    homing.events.register("order.placed", OrderPlaced)
    return homing


async def test_memory_by_default_with_a_development_key_said_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="homing"):
        homing = _service({"HOMING_PUBLISHER": "memory"})
    assert "HOMING_SIGNING_KEYS is not set: signing with a development key" in caplog.text
    assert isinstance(homing.publisher, MemoryPublisher)
    assert homing.wired is not None
    assert homing.wired.engine is None
    assert homing.wired.outbox is None
    assert [type(hook) for hook in homing.hooks] == [Telemetry]


async def test_telemetry_counts_and_logs_a_push_and_can_be_turned_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    homing = _service({"HOMING_PUBLISHER": "memory", "HOMING_SIGNING_KEYS": KEYS})

    @homing.handler
    async def handle(event: OrderPlaced) -> None: ...

    assert homing.wired is not None
    metrics = homing.wired.metrics
    assert metrics is not None
    with caplog.at_level(logging.INFO, logger="homing.push"):
        assert_handled(await push(homing, OrderPlaced(order_id=1, total_cents=2)))
    [line] = [r.getMessage() for r in caplog.records if r.name == "homing.push"]
    assert line.startswith("push done: order.placed ")
    sample = metrics.registry.get_sample_value(
        "homing_pushes_total", {"event_type": "order.placed", "outcome": "done"}
    )
    assert sample == 1.0

    quiet = _service(
        {"HOMING_PUBLISHER": "memory", "HOMING_SIGNING_KEYS": KEYS, "HOMING_TELEMETRY": "false"}
    )
    assert list(quiet.hooks) == []
    assert quiet.wired is not None
    assert quiet.wired.metrics is None


async def test_database_url_brings_sql_stores_an_outbox_and_a_journal_beside_it(
    tmp_path: Path,
) -> None:
    database = tmp_path / "service.db"
    environ = {
        "HOMING_SIGNING_KEYS": KEYS,
        "DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "PORT": "8123",
    }
    # A predecessor staged an event and was killed before it published it.
    first = _service(environ, publisher=MemoryPublisher())
    async with first:
        assert first.wired is not None
        outbox = first.wired.outbox
        assert isinstance(outbox, SQLOutbox)
        assert isinstance(first.dedupe, SQLDedupeStore)
        assert isinstance(first.quarantine, SQLQuarantineStore)
        staged = first.sign(OrderPlaced(order_id=5, total_cents=1))
        async with outbox.engine.begin() as connection:
            await outbox.stage(connection, staged)
        outbox.drain_age = 0.0
        outbox._published.clear()  # as a killed process: it never learnt the row was sent
    publisher = MemoryPublisher()
    second = _service(environ, publisher=publisher)
    second.wired.outbox.drain_age = 0.0  # type: ignore[union-attr]
    async with second:  # start-up drains what the first left, in the background
        await eventually_async(lambda: publisher.messages)
    assert [message.event_id for _, message in publisher.messages] == [staged.event_id]
    engine = second.wired.engine  # type: ignore[union-attr]
    assert engine is not None
    async with engine.connect() as connection:
        left = await connection.scalar(select(func.count()).select_from(outbox_table))
    await engine.dispose()  # (closed by the service's shutdown, opened again just now)
    assert left == 0

    loopback = _service(environ)  # the default publisher: back to this service, durably
    assert isinstance(loopback.publisher, LoopbackPublisher)
    assert loopback.publisher.endpoint == "http://127.0.0.1:8123/events"
    assert loopback.publisher.journal == str(tmp_path / "service.loopback.sqlite3")
    await loopback.aclose()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"HOMING_AUTH": "oidc"}, r"^HOMING_AUTH=oidc needs HOMING_PUSH_ENDPOINT or"),
        ({"HOMING_PUBLISHER": "carrier-pigeon"}, r"^HOMING_PUBLISHER: must be one of"),
        ({"DATABASE_URL": "postgresql://db/x"}, r"^DATABASE_URL: the database URL's scheme"),
        ({"PORT": "eighty"}, r"^PORT must be a port number, not 'eighty'$"),
        (
            {"HOMING_TASKS_QUEUE": "delayed"},
            r"^HOMING_TASKS_QUEUE needs HOMING_PUSH_ENDPOINT: the URL each task POSTs to$",
        ),
        (
            {"HOMING_TASKS_QUEUE": "delayed", "HOMING_PUSH_ENDPOINT": "https://x.example/events"},
            r"^HOMING_TASKS_QUEUE: queue 'delayed' is not a full path, and no project",
        ),
        (
            {"HOMING_SIGNIG_KEYS": KEYS},
            r"HOMING_SIGNIG_KEYS \(did you mean HOMING_SIGNING_KEYS\?\)",
        ),
    ],
)
def test_a_mistake_is_one_line_naming_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        Homing.from_env(environ)
    assert "\n" not in str(caught.value)
    assert "a-test-secret" not in str(caught.value)


def test_settings_may_be_given_instead_of_the_homing_variables() -> None:
    homing = Homing.from_env(
        {"HOMING_AUTH": "not-read"},
        settings=Settings(publisher="memory", telemetry=False),
    )
    assert isinstance(homing.publisher, MemoryPublisher)
    assert list(homing.hooks) == []


TASKS = {
    "HOMING_SIGNING_KEYS": KEYS,
    "HOMING_PUBLISHER": "memory",
    "GOOGLE_CLOUD_PROJECT": "acme-prod",
    "HOMING_PUSH_ENDPOINT": "https://api.example.com/events",
    "HOMING_PUSH_SERVICE_ACCOUNT": "push@acme-prod.iam.gserviceaccount.com",
    "HOMING_TASKS_QUEUE": "delayed",
    "HOMING_REGION": "europe-west1",
    "HOMING_MAX_DELIVERY_ATTEMPTS": "7",
}


def test_the_tasks_settings_give_a_cloud_tasks_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from homing.publishers.cloudtasks import CloudTasksPublisher

    monkeypatch.delenv("CLOUD_TASKS_EMULATOR_HOST", raising=False)
    homing = Homing.from_env(
        TASKS | {"HOMING_TASKS_SERVICE_ACCOUNT": "tasks@acme-prod.iam.gserviceaccount.com"}
    )

    tasks = homing.transports.named["tasks"]
    assert isinstance(tasks, CloudTasksPublisher)
    assert tasks.queue == "projects/acme-prod/locations/europe-west1/queues/delayed"
    assert tasks.url == tasks.audience == "https://api.example.com/events"
    assert tasks.service_account == "tasks@acme-prod.iam.gserviceaccount.com"
    assert tasks._emulator is None  # Google's endpoint, with the default credentials
    # The queue's max_attempts, so that a task's last attempt is known.
    assert homing.max_delivery_attempts == 7


def test_the_tasks_transport_honours_the_emulator_and_carries_the_push_account_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from homing.publishers.cloudtasks import CloudTasksPublisher

    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", "127.0.0.1:8085")
    homing = Homing.from_env(TASKS | {"HOMING_TASKS_LOCATION": "us-central1"})

    tasks = homing.transports.named["tasks"]
    assert isinstance(tasks, CloudTasksPublisher)
    assert tasks.queue == "projects/acme-prod/locations/us-central1/queues/delayed"
    assert tasks.service_account == "push@acme-prod.iam.gserviceaccount.com"
    assert tasks._emulator == "127.0.0.1:8085"


async def test_without_the_tasks_settings_the_local_default_carries_delayed_events() -> None:
    from datetime import timedelta

    homing = Homing.from_env({"HOMING_PUBLISHER": "memory", "HOMING_SIGNING_KEYS": KEYS})
    homing.event("order.later", transport="tasks")(OrderPlaced)

    assert homing.transports.named == {}
    assert homing.max_delivery_attempts is None
    await homing.publish(OrderPlaced(order_id=1, total_cents=2), delay=timedelta(seconds=5))
    assert isinstance(homing.publisher, MemoryPublisher)
    [(_, message)] = homing.publisher.messages
    assert message.event_type == "order.later"
    assert message.deliver_at is not None
    assert homing.publisher.due() == []  # kept until its time
