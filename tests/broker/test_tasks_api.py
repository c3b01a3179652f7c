"""The broker's Cloud Tasks API, driven by google-cloud-tasks itself: each documented behaviour
it implements, one test each (schedule time, backoff, max attempts, dispatch deadline, OIDC
tokens, task-name dedupe, durability)."""

from __future__ import annotations

import asyncio
import email.utils
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from google.api_core import exceptions as api
from google.auth import jwt
from google.cloud import tasks_v2
from google.protobuf import field_mask_pb2
from starlette.applications import Starlette

from homing import Delivery, Homing, KeyRing, Signer
from homing.broker import Broker
from homing.broker.server import Addresses, serving
from homing.publishers.cloudtasks import CloudTasksPublisher, emulator_client, task_id
from homing.starlette import push_route
from tests.broker.conftest import Receiver
from tests.conftest import OrderPlaced
from tests.support.waiting import eventually_async

PARENT = "projects/homing-local/locations/here"
QUEUE = f"{PARENT}/queues/events"
URL = "http://receiver.test/events"
ACCOUNT = "tasks@homing-local.iam.gserviceaccount.com"


@dataclass
class Served:
    broker: Broker
    addresses: Addresses
    client: tasks_v2.CloudTasksAsyncClient


async def _serve(
    path: Path, client: httpx.AsyncClient, push_timeout: float | None = None
) -> AsyncIterator[Served]:
    broker = Broker(path, client=client, push_timeout=push_timeout)
    async with serving(broker, port=0, http_port=0) as addresses:
        tasks = emulator_client(addresses.grpc)
        try:
            yield Served(broker, addresses, tasks)
        finally:
            await tasks.transport.close()  # type: ignore[no-untyped-call]


@pytest.fixture
async def served(tmp_path: Path, receiver: Receiver) -> AsyncIterator[Served]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as client:
        async for s in _serve(tmp_path / "broker.sqlite3", client):
            yield s


def _drained(served: Served) -> bool:
    return _owed(served) == 0


def _owed(served: Served) -> int:
    assert served.broker.cloud_tasks is not None
    return len(served.broker.cloud_tasks.tasks)


async def _queue(served: Served, **retry: object) -> tasks_v2.Queue:
    queue = tasks_v2.Queue(name=QUEUE, retry_config=tasks_v2.RetryConfig(**retry))
    return await served.client.create_queue(parent=PARENT, queue=queue)


def _task(name: str | None = None, *, at: datetime | None = None, **more: object) -> tasks_v2.Task:
    task = tasks_v2.Task(
        http_request=tasks_v2.HttpRequest(
            url=URL,
            http_method=tasks_v2.HttpMethod.POST,
            headers={"Content-Type": "application/json"},
            body=b'{"hello": 1}',
            oidc_token=tasks_v2.OidcToken(service_account_email=ACCOUNT, audience="https://aud"),
        ),
        **more,
    )
    if name:
        task.name = f"{QUEUE}/tasks/{name}"
    if at:
        task.schedule_time = at
    return task


async def test_queues_create_get_update_list_and_status_codes(served: Served) -> None:
    client = served.client
    created = await _queue(served, max_attempts=7)
    assert created.retry_config.max_attempts == 7
    assert created.retry_config.min_backoff == timedelta(seconds=0.1)  # Cloud Tasks' default
    assert created.state == tasks_v2.Queue.State.RUNNING
    with pytest.raises(api.AlreadyExists, match="exists already"):
        await _queue(served)
    assert (await client.get_queue(name=QUEUE)).name == QUEUE
    with pytest.raises(api.NotFound, match="does not exist"):
        await client.get_queue(name=f"{PARENT}/queues/nope")
    with pytest.raises(api.InvalidArgument, match="must be projects/P/locations/L/queues/Q"):
        await client.create_queue(
            parent=PARENT, queue=tasks_v2.Queue(name=f"{PARENT}/queues/bad_name")
        )
    changed = tasks_v2.Queue(
        name=QUEUE, rate_limits=tasks_v2.RateLimits(max_concurrent_dispatches=3)
    )
    mask = field_mask_pb2.FieldMask(paths=["rate_limits.max_concurrent_dispatches"])
    updated = await client.update_queue(queue=changed, update_mask=mask)
    assert updated.rate_limits.max_concurrent_dispatches == 3
    assert updated.retry_config.max_attempts == 7  # not in the mask: kept
    listed = [q.name async for q in await client.list_queues(parent=PARENT)]
    assert listed == [QUEUE]
    upserted = await client.update_queue(queue=tasks_v2.Queue(name=f"{PARENT}/queues/other"))
    assert upserted.name.endswith("/other")  # UpdateQueue creates a missing queue


async def test_a_task_runs_at_its_time_with_the_headers_and_an_oidc_token(
    served: Served, receiver: Receiver
) -> None:
    await _queue(served)
    at = datetime.now(UTC) + timedelta(seconds=1.5)
    created = await served.client.create_task(parent=QUEUE, task=_task("t-1", at=at))
    assert created.name == f"{QUEUE}/tasks/t-1"
    assert created.schedule_time == at
    assert created.dispatch_deadline == timedelta(minutes=10)  # the default
    [request] = await receiver.wait_for(1)
    arrived = time.time()
    assert arrived >= at.timestamp()
    assert arrived <= at.timestamp() + 1.0
    assert request.content == b'{"hello": 1}'
    assert request.headers["x-cloudtasks-queuename"] == "events"
    assert request.headers["x-cloudtasks-taskname"] == "t-1"
    assert request.headers["x-cloudtasks-taskretrycount"] == "0"
    assert request.headers["x-cloudtasks-taskexecutioncount"] == "0"
    assert float(request.headers["x-cloudtasks-tasketa"]) == pytest.approx(at.timestamp())
    assert "x-cloudtasks-taskpreviousresponse" not in request.headers
    token = request.headers["authorization"].removeprefix("Bearer ")
    claims = jwt.decode(  # type: ignore[no-untyped-call]
        token, certs=served.broker.issuer.certs(), audience="https://aud"
    )
    assert (claims["email"], claims["email_verified"]) == (ACCOUNT, True)
    await eventually_async(lambda: _owed(served) == 0)  # done: gone from the queue
    with pytest.raises(api.NotFound, match="does not exist"):
        await served.client.get_task(name=created.name)


async def test_task_names_deduplicate_before_and_after_the_task_ran(
    served: Served, receiver: Receiver
) -> None:
    await _queue(served)
    await served.client.create_task(parent=QUEUE, task=_task("once"))
    with pytest.raises(api.AlreadyExists, match="exists, or ran or was deleted lately"):
        await served.client.create_task(parent=QUEUE, task=_task("once"))
    await receiver.wait_for(1)
    with pytest.raises(api.AlreadyExists, match="exists, or ran or was deleted lately"):
        await served.client.create_task(parent=QUEUE, task=_task("once"))
    unnamed = await served.client.create_task(parent=QUEUE, task=_task())
    assert unnamed.name.startswith(f"{QUEUE}/tasks/")
    await receiver.wait_for(2)
    await eventually_async(lambda: _owed(served) == 0)
    assert len(receiver.requests) == 2


async def test_get_list_delete_and_the_views(served: Served, receiver: Receiver) -> None:
    await _queue(served)
    later = datetime.now(UTC) + timedelta(hours=1)
    for n in (2, 1):
        await served.client.create_task(
            parent=QUEUE, task=_task(f"t-{n}", at=later + timedelta(seconds=n))
        )
    basic = await served.client.get_task(name=f"{QUEUE}/tasks/t-1")
    assert basic.http_request.body == b""
    full = await served.client.get_task(
        request=tasks_v2.GetTaskRequest(
            name=f"{QUEUE}/tasks/t-1", response_view=tasks_v2.Task.View.FULL
        )
    )
    assert full.http_request.body == b'{"hello": 1}'
    listed = [t.name.rsplit("/", 1)[1] async for t in await served.client.list_tasks(parent=QUEUE)]
    assert listed == ["t-1", "t-2"]  # by schedule time
    await served.client.delete_task(name=f"{QUEUE}/tasks/t-1")
    with pytest.raises(api.NotFound, match="does not exist"):
        await served.client.delete_task(name=f"{QUEUE}/tasks/t-1")
    with pytest.raises(api.AlreadyExists, match="deleted lately"):
        await served.client.create_task(parent=QUEUE, task=_task("t-1"))
    assert receiver.requests == []


@pytest.mark.parametrize(
    ("task", "match"),
    [
        (_task(at=datetime.now(UTC) + timedelta(days=31)), "more than 30 days ahead"),
        (_task(dispatch_deadline=timedelta(seconds=14)), "15 s to 30 min"),
        (_task(dispatch_deadline=timedelta(minutes=31)), "15 s to 30 min"),
        (_task("has/slash"), "must be"),
        (tasks_v2.Task(name=f"{QUEUE}/tasks/x"), "HTTP tasks only"),
    ],
)
async def test_bad_tasks_are_refused(served: Served, task: tasks_v2.Task, match: str) -> None:
    await _queue(served)
    with pytest.raises(api.InvalidArgument, match=match):
        await served.client.create_task(parent=QUEUE, task=task)


async def test_a_task_in_no_queue_is_not_found(served: Served) -> None:
    with pytest.raises(api.NotFound, match="does not exist"):
        await served.client.create_task(parent=QUEUE, task=_task())


async def test_failures_are_retried_with_the_queues_backoff(
    served: Served, receiver: Receiver
) -> None:
    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500 if len(receiver.requests) <= 2 else 200)

    receiver.answer = answer
    await _queue(
        served, max_attempts=5, min_backoff=timedelta(seconds=0.2), max_backoff=timedelta(10)
    )
    await served.client.create_task(parent=QUEUE, task=_task("flaky"))
    requests = await receiver.wait_for(3)
    counts = [r.headers["x-cloudtasks-taskretrycount"] for r in requests]
    assert counts == ["0", "1", "2"]
    assert [r.headers["x-cloudtasks-taskexecutioncount"] for r in requests] == ["0", "1", "2"]
    assert requests[1].headers["x-cloudtasks-taskpreviousresponse"] == "500"
    assert requests[1].headers["x-cloudtasks-taskretryreason"] == "HTTP status 500"


async def test_a_task_is_deleted_after_max_attempts(served: Served, receiver: Receiver) -> None:
    async def fail(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    receiver.answer = fail
    await _queue(served, max_attempts=3, min_backoff=timedelta(seconds=0.05))
    await served.client.create_task(parent=QUEUE, task=_task("doomed"))
    await receiver.wait_for(3)
    await eventually_async(lambda: _owed(served) == 0)  # deleted after its last attempt
    assert len(receiver.requests) == 3
    with pytest.raises(api.NotFound, match="does not exist"):
        await served.client.get_task(name=f"{QUEUE}/tasks/doomed")


async def test_no_answer_within_the_dispatch_deadline_is_a_failure(
    tmp_path: Path, receiver: Receiver
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        if len(receiver.requests) == 1:
            await asyncio.sleep(5)
        return httpx.Response(200)

    receiver.answer = slow
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as client:
        async for served in _serve(tmp_path / "b.sqlite3", client, push_timeout=0.3):
            await _queue(served, min_backoff=timedelta(seconds=0.05))
            await served.client.create_task(parent=QUEUE, task=_task("slow"))
            requests = await receiver.wait_for(2)
            assert requests[1].headers["x-cloudtasks-taskretrycount"] == "1"
            assert requests[1].headers["x-cloudtasks-taskexecutioncount"] == "0"  # no answer


async def test_scheduled_tasks_survive_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    path = tmp_path / "broker.sqlite3"
    at = datetime.now(UTC) + timedelta(seconds=1)
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as client:
        async for served in _serve(path, client):
            await _queue(served)
            for n in range(20):
                await served.client.create_task(parent=QUEUE, task=_task(f"t-{n}", at=at))
        assert receiver.requests == []
        async for served in _serve(path, client):
            requests = await receiver.wait_for(20)
            assert sorted(r.headers["x-cloudtasks-taskname"] for r in requests) == sorted(
                f"t-{n}" for n in range(20)
            )
            assert (await served.client.get_queue(name=QUEUE)).name == QUEUE


async def test_the_publisher_and_the_push_endpoint_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """publish(delay=...) -> the broker's queue -> POST /events -> the handler, once."""
    seen: list[tuple[OrderPlaced, Delivery, float]] = []
    handled = asyncio.Event()
    homing = Homing(signer=Signer(KeyRing({"k": "a-secret-of-enough-length"})))
    homing.event("order.placed", transport="tasks")(OrderPlaced)

    @homing.handler(OrderPlaced)
    async def handle(event: OrderPlaced, delivery: Delivery) -> None:
        seen.append((event, delivery, time.time()))
        handled.set()

    app = Starlette(routes=[push_route(homing, "/events")])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        async for served in _serve(tmp_path / "b.sqlite3", client):
            await _queue(served)
            monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", served.addresses.grpc)
            publisher = CloudTasksPublisher(QUEUE, url=URL, service_account=ACCOUNT)
            homing.transports.named["tasks"] = publisher
            started = time.time()
            event_id = await homing.publish(
                OrderPlaced(order_id=1, total_cents=2), delay=timedelta(seconds=1)
            )
            # Published again (an outbox drain, a retried request): one task, one effect.
            again = homing.sign(OrderPlaced(order_id=1, total_cents=2), event_id=event_id)
            assert await publisher.publish(again) == f"{QUEUE}/tasks/{task_id(event_id)}"
            async with asyncio.timeout(10):
                await handled.wait()
            await eventually_async(functools.partial(_drained, served))
            assert served.broker.cloud_tasks is not None
            assert served.broker.cloud_tasks.dispatched == 1
            await publisher.aclose()
    [(event, delivery, ran)] = seen
    assert ran - started >= 1.0
    assert event.order_id == 1
    assert delivery.event_id == event_id
    assert delivery.subscription == QUEUE


async def test_a_503_with_retry_after_holds_the_queue_and_the_task(
    served: Served, receiver: Receiver
) -> None:
    await _queue(served)  # Cloud Tasks' default backoff: 0.1 s
    times: list[tuple[str, float]] = []

    async def busy_once(request: httpx.Request) -> httpx.Response:
        times.append((request.headers["x-cloudtasks-taskname"], time.time()))
        if len(times) == 1:
            return httpx.Response(503, headers={"Retry-After": "2"})
        return httpx.Response(200)

    receiver.answer = busy_once
    await served.client.create_task(parent=QUEUE, task=_task("first"))
    await receiver.wait_for(1)
    cloud_tasks = served.broker.cloud_tasks
    assert cloud_tasks is not None
    await eventually_async(lambda: QUEUE in cloud_tasks.held_until)
    await served.client.create_task(parent=QUEUE, task=_task("second"))  # due at once

    requests = await receiver.wait_for(3)

    refused_at = times[0][1]
    assert sorted(name for name, _ in times[1:]) == ["first", "second"]
    for _, at in times[1:]:
        assert at >= refused_at + 2 - 0.05  # the whole queue waited, not only the task
    retry = next(r for r in requests[1:] if r.headers["x-cloudtasks-taskname"] == "first")
    assert retry.headers["x-cloudtasks-taskpreviousresponse"] == "503"
    assert retry.headers["x-cloudtasks-taskretryreason"] == "HTTP status 503, Retry-After 2 s"
    await eventually_async(lambda: _owed(served) == 0)


async def test_a_503_without_retry_after_is_retried_by_the_backoff_alone(
    served: Served, receiver: Receiver
) -> None:
    await _queue(served, min_backoff=timedelta(seconds=0.2))
    times: list[float] = []

    async def unavailable_once(_request: httpx.Request) -> httpx.Response:
        times.append(time.time())
        return httpx.Response(503 if len(times) == 1 else 200)

    receiver.answer = unavailable_once
    await served.client.create_task(parent=QUEUE, task=_task("t"))
    await receiver.wait_for(2)
    assert served.broker.cloud_tasks is not None
    assert served.broker.cloud_tasks.held_until == {}
    assert 0.2 - 0.05 <= times[1] - times[0] < 1.5


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    from homing.broker.tasks import retry_after

    now = 1_700_000_000.0
    assert retry_after("7", now) == 7.0
    assert retry_after(" 0 ", now) == 0.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after(date, now) == pytest.approx(30.0)
    assert retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    for unreadable in (None, "", "soon", "-3", "1.5", "Tue, 99 Foo 2023 00:00:00 -0000"):
        assert retry_after(unreadable, now) is None


async def test_the_web_page_shows_queues_and_their_tasks_escaped(served: Served) -> None:
    from homing.broker.web import render_page

    await _queue(served, max_attempts=4)
    later = datetime.now(UTC) + timedelta(hours=1)
    hostile = _task("t-1", at=later)
    hostile.http_request.body = b"<script>alert(1)</script>"
    await served.client.create_task(parent=QUEUE, task=hostile)

    page = render_page(served.broker)

    assert "<h2>Cloud Tasks queues</h2>" in page
    assert f"<td>{QUEUE}</td>" in page
    assert "<td>4</td>" in page  # max attempts
    assert "<td>0.1-3600 s, 16 doublings</td>" in page
    assert "<td>t-1</td>" in page
    assert "<td>in 3599." in page or "<td>in 3600.0 s</td>" in page
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
