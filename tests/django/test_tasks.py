"""homing's django.tasks backend: enqueue -> signed event -> push -> result (django.md's task
backend block)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.db import transaction
from django.test import override_settings
from google.cloud import tasks_v2

from homing import MemoryPublisher
from homing.broker import Broker
from homing.broker.server import serving as serving_broker
from homing.django import config, push_view
from homing.django.models import OutboxEntry, TaskRecord
from homing.django.tasks import DEFERRED_TASK_EVENT, TASK_EVENT, HomingTaskBackend
from homing.publishers.cloudtasks import EMULATOR_HOST, emulator_client
from tests.django import jobs
from tests.django.service import TASKS_QUEUE, PubSubOnly
from tests.django.tasks_api import (
    InvalidTaskError,
    TaskResultDoesNotExist,
    TaskResultStatus,
    default_task_backend,
    task_backends,
)
from tests.support.djangoproject import serving
from tests.support.waiting import eventually_async

SERVICE = {"APP": "tests.django.service:create", "PUBLISHER": "memory"}


@pytest.fixture(autouse=True)
def _service() -> Iterator[None]:
    config.forget()
    with override_settings(HOMING=SERVICE):
        yield
    config.forget()
    TaskRecord.objects.all().delete()
    OutboxEntry.objects.all().delete()
    jobs.attempts_seen.clear()


def _published() -> MemoryPublisher:
    publisher = config.service().publisher
    assert isinstance(publisher, MemoryPublisher)
    return publisher


async def _deliver(now: datetime | None = None) -> list[int]:
    """Push every published message due by ``now`` to the push view; the statuses."""
    publisher = _published()
    with serving(push_view()):
        transport = httpx.ASGITransport(app=ASGIHandler())
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return [response.status_code for response in await publisher.deliver(c, now=now)]


def test_the_backend_is_homings_and_says_what_it_supports() -> None:
    backend = task_backends["default"]
    assert isinstance(backend, HomingTaskBackend)
    assert backend.supports_async_task
    assert backend.supports_get_result
    assert backend.supports_defer  # run_after: Cloud Tasks
    assert not backend.supports_priority
    assert list(backend.check()) == []


async def test_an_enqueued_task_is_a_signed_event_run_by_push() -> None:
    result = await sync_to_async(jobs.add.enqueue)(2, 3)
    assert result.status == TaskResultStatus.READY
    [(_, message)] = _published().messages
    assert message.event_type == TASK_EVENT
    assert message.event_id == result.id
    assert message.attributes["homing-signature"]  # signed like any homing event

    assert await _deliver() == [204]
    await result.arefresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.attempts == 1
    assert result.started_at is not None
    assert result.finished_at is not None


async def test_an_async_task_runs_too() -> None:
    result = await jobs.add_later.aenqueue(a=1, b=1)
    assert await _deliver() == [204]
    fetched = await default_task_backend.aget_result(result.id)
    assert (fetched.status, fetched.return_value) == (TaskResultStatus.SUCCESSFUL, 2)


async def test_a_task_that_raises_fails_with_its_error_recorded() -> None:
    result = await sync_to_async(jobs.fails.enqueue)("no such user")
    assert await _deliver() == [204]  # acknowledged: a failed task is finished
    await result.arefresh()
    assert result.status == TaskResultStatus.FAILED
    [error] = result.errors
    assert error.exception_class_path == "builtins.ValueError"
    assert "no such user" in error.traceback


async def test_a_task_that_asks_for_a_retry_is_redelivered_and_counts_its_attempts() -> None:
    result = await sync_to_async(jobs.flaky.enqueue)(succeed_on=2)
    publisher = _published()
    kept = list(publisher.messages)
    assert await _deliver() == [503]
    await result.arefresh()
    assert result.status == TaskResultStatus.READY
    assert len(result.errors) == 1
    publisher.messages = kept  # Pub/Sub redelivers the same message
    assert await _deliver() == [204]
    await result.arefresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == {"attempt": 2}
    assert jobs.attempts_seen == [1, 2]
    assert result.attempts == 2


def test_arguments_that_are_not_json_are_refused_at_enqueue_with_djangos_error() -> None:
    with pytest.raises(TypeError, match="Unsupported type"):
        jobs.add.enqueue(datetime.now(UTC), 1)  # type: ignore[arg-type]
    assert not TaskRecord.objects.exists()
    assert not OutboxEntry.objects.exists()
    assert _published().messages == []


def test_priorities_and_unknown_queues_are_refused_clearly() -> None:
    with pytest.raises(InvalidTaskError, match="cannot honour a priority"):
        jobs.add.using(priority=10)
    with pytest.raises(InvalidTaskError, match="Queue 'reports' is not valid"):
        jobs.add.using(queue_name="reports")
    with pytest.raises(InvalidTaskError, match="run_after must be an aware datetime"):
        jobs.add.using(run_after=datetime.now() + timedelta(minutes=5))


async def test_a_task_with_run_after_is_a_delayed_event_run_no_earlier() -> None:
    run_after = datetime.now(UTC) + timedelta(minutes=10)
    deferred = jobs.add.using(run_after=run_after)
    result = await sync_to_async(deferred.enqueue)(4, 5)
    [(_, message)] = _published().messages
    assert message.event_type == DEFERRED_TASK_EVENT
    assert message.event_id == result.id
    assert message.deliver_at == run_after
    assert message.attributes["homing-signature"]

    assert await _deliver(now=run_after - timedelta(seconds=1)) == []  # not yet due
    await result.arefresh()
    assert result.status == TaskResultStatus.READY
    assert result.task.run_after == run_after
    assert await _deliver(now=run_after) == [204]
    await result.arefresh()
    assert (result.status, result.return_value) == (TaskResultStatus.SUCCESSFUL, 9)


def test_a_run_after_already_past_runs_at_once() -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    result = jobs.add.using(run_after=past).enqueue(1, 1)
    [(_, message)] = _published().messages
    assert message.event_type == DEFERRED_TASK_EVENT
    assert message.deliver_at is not None
    assert message.deliver_at > past  # not scheduled in the past: delivered now
    assert default_task_backend.get_result(result.id).task.run_after == past


def test_run_after_is_refused_where_no_transport_can_delay() -> None:
    config.forget()
    with override_settings(HOMING={**SERVICE, "APP": "tests.django.service:pubsub_only"}):
        with pytest.raises(
            InvalidTaskError,
            match=r"(?s)task 'add' cannot be deferred \(run_after\): .*bound to transport "
            r"'tasks'.*Homing\(transports=\{'tasks': CloudTasksPublisher",
        ):
            jobs.add.using(run_after=datetime.now(UTC) + timedelta(minutes=5))
        jobs.add.enqueue(1, 2)  # without run_after: Pub/Sub, as ever
        publisher = config.service().publisher
        assert isinstance(publisher, PubSubOnly)
        assert [m.event_type for m in publisher.sent] == [TASK_EVENT]
    assert TaskRecord.objects.count() == 1


def test_run_after_beyond_what_cloud_tasks_keeps_is_refused() -> None:
    with pytest.raises(InvalidTaskError, match="at most 30 days ahead"):
        jobs.add.using(run_after=datetime.now(UTC) + timedelta(days=31))
    assert not TaskRecord.objects.exists()
    assert _published().messages == []


async def test_a_deferred_task_runs_through_the_local_brokers_cloud_tasks_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """enqueue(run_after) -> the outbox -> Cloud Tasks (the broker) -> POST /events -> run."""
    with serving(push_view()):
        django = httpx.ASGITransport(app=ASGIHandler())
        async with httpx.AsyncClient(transport=django) as client:
            broker = Broker(tmp_path / "broker.sqlite3", client=client)
            async with serving_broker(broker, port=0, http_port=0) as addresses:
                admin = emulator_client(addresses.grpc)
                await admin.create_queue(
                    parent=TASKS_QUEUE.rsplit("/queues/", 1)[0],
                    queue=tasks_v2.Queue(name=TASKS_QUEUE),
                )
                await admin.transport.close()  # type: ignore[no-untyped-call]
                monkeypatch.setenv(EMULATOR_HOST, addresses.grpc)
                config.forget()
                with override_settings(
                    HOMING={**SERVICE, "APP": "tests.django.service:with_cloud_tasks"}
                ):
                    run_after = datetime.now(UTC) + timedelta(seconds=1.5)
                    deferred = jobs.add.using(run_after=run_after)
                    result = await sync_to_async(deferred.enqueue)(20, 22)
                    assert result.status == TaskResultStatus.READY
                    assert not await sync_to_async(OutboxEntry.objects.exists)()  # published

                    async def finished() -> bool:
                        await result.arefresh()
                        return result.status == TaskResultStatus.SUCCESSFUL

                    await eventually_async(finished, 15)
                    queue = broker.cloud_tasks
                    assert queue is not None

                    async def completed() -> bool:  # the task is done: deleted by the queue
                        return not queue.tasks

                    await eventually_async(completed, 10)
                    assert queue.dispatched == 1
    assert result.return_value == 42
    assert result.started_at is not None
    assert result.started_at >= run_after


def test_a_task_enqueued_in_a_rolled_back_transaction_never_runs() -> None:
    def enqueue_then_fail() -> None:
        with transaction.atomic():
            jobs.add.enqueue(1, 2)
            raise RuntimeError("the view failed")

    with pytest.raises(RuntimeError, match="the view failed"):
        enqueue_then_fail()
    assert _published().messages == []
    assert not TaskRecord.objects.exists()


def test_a_result_that_does_not_exist_is_djangos_error() -> None:
    with pytest.raises(TaskResultDoesNotExist, match="nope"):
        default_task_backend.get_result("nope")
