from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.applications import Starlette

from homing import (
    Homing,
    LoopbackPublisher,
    MemoryPublisher,
    MemoryQuarantineStore,
    OutgoingMessage,
    Publisher,
    PublishFailed,
)
from homing.ingress.wrapped import parse_push
from homing.starlette import push_route
from tests.conftest import OrderPlaced, Recorder

ORDER = OrderPlaced(order_id=1, total_cents=5)


def _asgi_client(homing: Homing) -> httpx.AsyncClient:
    app = Starlette(routes=[push_route(homing, "/events")])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


async def test_memory_publisher_keeps_messages_and_delivers_them(
    homing: Homing, publisher: MemoryPublisher, recorder: Recorder
) -> None:
    await homing.publish(ORDER)
    await homing.publish(OrderPlaced(order_id=2, total_cents=1))
    assert [m.event_type for _, m in publisher.messages] == ["order.placed"] * 2
    async with _asgi_client(homing) as client:
        responses = await publisher.deliver(client)
    assert [r.status_code for r in responses] == [204, 204]
    assert [e.order_id for e, _ in recorder.seen] == [1, 2]
    assert publisher.messages == []


async def test_publish_after_close_fails_with_the_event(homing: Homing) -> None:
    assert homing.publisher is not None
    await homing.publisher.aclose()
    with pytest.raises(PublishFailed, match="closed") as caught:
        await homing.publish(ORDER, event_id="e-closed")
    assert (caught.value.event_type, caught.value.event_id) == ("order.placed", "e-closed")


class Broken(Publisher):
    async def _send(self, message: OutgoingMessage) -> str:
        raise ConnectionError("broker unreachable")


async def test_backend_errors_become_publish_failed(homing: Homing) -> None:
    homing.publisher = Broken()
    with pytest.raises(PublishFailed, match="ConnectionError: broker unreachable") as caught:
        await homing.publish(ORDER, event_id="e-x")
    assert caught.value.event_id == "e-x"
    assert isinstance(caught.value.__cause__, ConnectionError)


async def test_loopback_delivers_the_real_push_envelope(homing: Homing, recorder: Recorder) -> None:
    async with _asgi_client(homing) as client:
        loopback = LoopbackPublisher("http://svc/events", client=client)
        homing.publisher = loopback
        event_id = await homing.publish(ORDER)
        await asyncio.wait_for(loopback.join(), 5)
    [(event, delivery)] = recorder.seen
    assert event == ORDER
    assert delivery.event_id == event_id
    assert delivery.subscription == "projects/local/subscriptions/homing-loopback"
    assert loopback.delivered == 1


class Flaky:
    """A push endpoint that answers the given statuses in turn, recording what it got."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(request.content)
        status = self.statuses.pop(0) if self.statuses else 204
        if status == 0:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(status)


def _flaky_publisher(flaky: Flaky, **options: object) -> LoopbackPublisher:
    client = httpx.AsyncClient(transport=httpx.MockTransport(flaky))
    return LoopbackPublisher(
        "http://svc/events",
        client=client,
        initial_backoff=0.001,
        max_backoff=0.004,
        **options,  # type: ignore[arg-type]
    )


async def test_loopback_retries_non_ack_statuses_and_refusals_until_acked(homing: Homing) -> None:
    flaky = Flaky(500, 0, 400, 203, 200)
    homing.publisher = loopback = _flaky_publisher(flaky)
    await homing.publish(ORDER)
    await asyncio.wait_for(loopback.join(), 5)
    assert len(flaky.bodies) == 5
    assert len(set(flaky.bodies)) == 1  # the same envelope, message id and all
    assert loopback.delivered == 1
    assert loopback.undelivered == []


@pytest.mark.parametrize("status", [102, 200, 201, 202, 204])
async def test_loopback_takes_pubsubs_ack_statuses(homing: Homing, status: int) -> None:
    flaky = Flaky(status)
    homing.publisher = loopback = _flaky_publisher(flaky)
    await homing.publish(ORDER)
    await asyncio.wait_for(loopback.join(), 5)
    assert len(flaky.bodies) == 1


async def test_loopback_keeps_what_it_gave_up_on(homing: Homing) -> None:
    keep = MemoryQuarantineStore()
    flaky = Flaky(503, 503, 503)
    homing.publisher = loopback = _flaky_publisher(flaky, max_attempts=3, keep=keep)
    event_id = await homing.publish(ORDER)
    await asyncio.wait_for(loopback.join(), 5)
    assert [m.event_id for m in loopback.undelivered] == [event_id]
    entry = await keep.get(event_id)
    assert entry is not None
    assert "gave up after 3 attempts (status 503)" in entry.reason
    assert parse_push(entry.body).attributes["homing-event-id"] == event_id


async def test_loopback_keeps_what_is_undelivered_at_shutdown(homing: Homing) -> None:
    keep = MemoryQuarantineStore()
    flaky = Flaky(*[503] * 1000)
    loopback = _flaky_publisher(flaky, keep=keep, shutdown_grace=0.05)
    homing.publisher = loopback
    event_id = await homing.publish(ORDER)
    await loopback.aclose()
    assert [m.event_id for m in loopback.undelivered] == [event_id]
    entry = await keep.get(event_id)
    assert entry is not None
    assert "still undelivered at shutdown" in entry.reason
    assert orjson.loads(entry.body)["message"]["attributes"]["event-type"] == "order.placed"


async def test_loopback_warns_with_the_url_when_deliveries_keep_failing(
    homing: Homing, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = Flaky(0, 0, 0, 0)
    homing.publisher = loopback = _flaky_publisher(flaky)
    await homing.publish(ORDER)
    await asyncio.wait_for(loopback.join(), 5)
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "http://svc/events" in warning.getMessage()
    assert "failed 3 time(s)" in warning.getMessage()


async def test_loopback_journal_keeps_what_a_stopped_process_had_not_delivered(
    homing: Homing, tmp_path: Path
) -> None:
    journal = tmp_path / "loopback.sqlite3"
    down = Flaky(*[503] * 1000)
    first = _flaky_publisher(down, journal=journal, shutdown_grace=0.01)
    homing.publisher = first
    event_id = await homing.publish(ORDER)  # committed to the journal before this returns
    while not down.bodies:  # noqa: ASYNC110 - polls what the endpoint received
        await asyncio.sleep(0.001)
    await first.aclose()  # as a killed process would, it leaves the event undelivered
    assert first.undelivered == []

    up = Flaky()
    second = _flaky_publisher(up, journal=journal)
    assert await second.resume() == 1
    await asyncio.wait_for(second.join(), 5)
    [body] = up.bodies
    assert parse_push(body).attributes["homing-event-id"] == event_id
    await second.aclose()
    third = _flaky_publisher(Flaky(), journal=journal)
    assert await third.resume() == 0  # delivered: gone from the journal
    await third.aclose()
