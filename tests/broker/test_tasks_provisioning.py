"""``homing provision`` and ``check`` for the Cloud Tasks queue, against the local broker's Cloud
Tasks API (``CLOUD_TASKS_EMULATOR_HOST``), as for Pub/Sub against its Pub/Sub API."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from google.cloud import tasks_v2

from homing import provisioning
from homing.broker import Broker
from homing.broker.server import serving
from homing.broker.tasks import CloudTasks
from homing.provisioning import Plan
from homing.settings import Settings
from tests.broker.conftest import Receiver

T = TypeVar("T")
PROJECT = "homing-local"
QUEUE = f"projects/{PROJECT}/locations/europe-west1/queues/delayed"


@pytest.fixture
async def broker(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Broker]:
    client = httpx.AsyncClient(transport=httpx.MockTransport(receiver))
    broker = Broker(tmp_path / "broker.sqlite3", client=client)
    async with client, serving(broker, port=0, http_port=0) as addresses:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", addresses.grpc)
        monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", addresses.grpc)
        yield broker


def queues(broker: Broker) -> CloudTasks:
    assert broker.cloud_tasks is not None
    return broker.cloud_tasks


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        project=PROJECT,
        topic="events",
        subscription="events-push",
        push_endpoint="http://127.0.0.1:8080/events",
        push_service_account="push@homing-local.iam.gserviceaccount.com",
        tasks_queue="delayed",
        tasks_location="europe-west1",
        tasks_enqueuer="api@homing-local.iam.gserviceaccount.com",
        tasks_max_dispatches_per_second=20.0,
        tasks_max_concurrent_dispatches=7,
        tasks_min_backoff=2.0,
        tasks_max_backoff=90.0,
        tasks_max_doublings=3,
        max_delivery_attempts=9,
    )
    return dataclasses.replace(Settings(), **(values | overrides))


async def call(function: Callable[..., T], *args: Any) -> T:
    """A blocking client call, off the event loop the broker runs on."""
    return await asyncio.to_thread(function, *args)


def provision(plan: Plan) -> list[str]:
    return [str(o) for o in provisioning.provision(plan, apply_iam_bindings=False)]


async def test_provision_creates_the_queue_then_changes_nothing_and_check_is_clean(
    broker: Broker,
) -> None:
    plan = provisioning.plan(settings())

    first = await call(provision, plan)

    assert first[-1] == f"queue {QUEUE}: created"
    queue = queues(broker).get_queue(QUEUE)
    assert queue.rate_limits.max_dispatches_per_second == 20
    assert queue.rate_limits.max_concurrent_dispatches == 7
    assert queue.retry_config.max_attempts == 9
    assert queue.retry_config.min_backoff == timedelta(seconds=2)
    assert queue.retry_config.max_backoff == timedelta(seconds=90)
    assert queue.retry_config.max_doublings == 3
    assert await call(provisioning.check, plan) == []
    again = await call(provision, plan)
    assert again[-1] == f"queue {QUEUE}: unchanged"


async def test_check_names_a_missing_queue(broker: Broker) -> None:
    plan = provisioning.plan(settings())
    await call(provision, dataclasses.replace(plan, queue=None))  # Pub/Sub only

    differences = await call(provisioning.check, plan)

    assert [str(d) for d in differences] == [f"queue {QUEUE} is missing"]


async def test_drift_in_the_queue_is_reported_then_provisioned_away(broker: Broker) -> None:
    plan = provisioning.plan(settings())
    await call(provision, plan)
    # Changed by hand (a console, gcloud): another rate and retry config.
    changed = tasks_v2.Queue(
        name=QUEUE,
        rate_limits=tasks_v2.RateLimits(max_dispatches_per_second=3),
        retry_config=tasks_v2.RetryConfig(max_attempts=50, min_backoff=timedelta(seconds=1)),
    )
    await queues(broker).update_queue(
        changed,
        [
            "rate_limits.max_dispatches_per_second",
            "retry_config.max_attempts",
            "retry_config.min_backoff",
        ],
    )

    differences = [str(d) for d in await call(provisioning.check, plan)]

    assert differences == [
        f"queue {QUEUE}: rate_limits.max_dispatches_per_second is 3, plan says 20",
        f"queue {QUEUE}: retry_config.max_attempts is 50, plan says 9",
        f"queue {QUEUE}: retry_config.min_backoff is 1s, plan says 2s",
    ]
    outcomes = await call(provision, plan)
    assert outcomes[-1] == f"queue {QUEUE}: updated (rate_limits, retry_config)"
    assert await call(provisioning.check, plan) == []
    assert queues(broker).get_queue(QUEUE).retry_config.max_attempts == 9


async def test_a_changed_plan_updates_the_queue_in_place(broker: Broker) -> None:
    await call(provision, provisioning.plan(settings()))
    faster = provisioning.plan(settings(tasks_max_concurrent_dispatches=70))

    [difference] = await call(provisioning.check, faster)
    assert str(difference) == (
        f"queue {QUEUE}: rate_limits.max_concurrent_dispatches is 7, plan says 70"
    )
    assert (await call(provision, faster))[-1] == f"queue {QUEUE}: updated (rate_limits)"
    assert queues(broker).get_queue(QUEUE).rate_limits.max_concurrent_dispatches == 70


async def test_the_provision_command_creates_the_queue_and_skips_iam(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from homing.cli import main

    flags = [
        "--project",
        PROJECT,
        "--topic",
        "events",
        "--subscription",
        "events-push",
        "--push-endpoint",
        "http://127.0.0.1:8080/events",
        "--tasks-queue",
        "delayed",
        "--tasks-location",
        "europe-west1",
        "--tasks-enqueuer",
        "api@homing-local.iam.gserviceaccount.com",
        "--tasks-max-concurrent-dispatches",
        "12",
    ]
    for name in ("HOMING_AUTH", "HOMING_PUSH_SERVICE_ACCOUNT", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)

    assert await call(main, ["provision", *flags]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"queue {QUEUE}: created" in out
    assert out[-1].startswith("iam: skipped, the emulator at ")
    assert queues(broker).get_queue(QUEUE).rate_limits.max_concurrent_dispatches == 12
    assert await call(main, ["check", *flags]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "no drift"


async def test_an_unreachable_cloud_tasks_endpoint_fails_in_one_line(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.ports import free_port

    monkeypatch.setattr(provisioning.clients, "RETRY_DEADLINE", 1.0)
    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    plan = provisioning.plan(settings())

    with pytest.raises(
        provisioning.ProvisioningFailed, match=r"^(reading|connecting to) .*cannot reach"
    ) as failed:
        await call(provision, plan)

    message = str(failed.value)
    assert "\n" not in message
    assert "CLOUD_TASKS_EMULATOR_HOST" in message
