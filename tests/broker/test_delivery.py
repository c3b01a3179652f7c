"""Push semantics of the broker's delivery loop, against an httpx.MockTransport receiver."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from google.pubsub_v1 import types as pubsub

from homing.broker import Broker
from homing.broker.delivery import SlowStart
from homing.broker.storage import Pending, StoredMessage
from homing.ingress.wrapped import parse_push
from tests.broker.conftest import DEAD_TOPIC, SUBSCRIPTION, TOPIC, Receiver, subscription
from tests.support.waiting import eventually_async


async def test_pushes_the_wrapped_body_as_production(
    broker: Broker, topic: str, receiver: Receiver
) -> None:
    await broker.create_subscription(subscription())
    [message_id] = await broker.publish(topic, [(b"\x00\xffdata", {"event-type": "x"}, "")])
    [request] = await receiver.wait_for(1)
    body = orjson.loads(request.content)
    assert body["subscription"] == SUBSCRIPTION
    assert "deliveryAttempt" not in body  # no dead-letter policy
    message = body["message"]
    assert base64.b64decode(message["data"]) == b"\x00\xffdata"
    assert message["messageId"] == message["message_id"] == message_id
    assert message["publishTime"] == message["publish_time"]
    assert message["attributes"] == {"event-type": "x"}
    assert "orderingKey" not in message
    assert request.headers["content-type"] == "application/json"
    parsed = parse_push(request.content)
    assert parsed.message_id == message_id


@pytest.mark.parametrize("status", [102, 200, 201, 202, 204])
async def test_ack_statuses_end_the_delivery(
    broker: Broker, topic: str, receiver: Receiver, status: int
) -> None:
    async def answer(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(status)

    receiver.answer = answer
    await broker.create_subscription(subscription())
    await broker.publish(topic, [(b"x", {}, "")])
    worker = broker.worker(SUBSCRIPTION)
    await eventually_async(lambda: worker.acked == 1)
    assert (len(receiver.requests), worker.nacked, worker.backlog) == (1, 0, 0)


@pytest.mark.parametrize("status", [203, 400, 404, 409, 429, 500, 503])
async def test_other_statuses_are_retried(
    broker: Broker, topic: str, receiver: Receiver, status: int
) -> None:
    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200 if len(receiver.requests) >= 3 else status)

    receiver.answer = answer
    await broker.create_subscription(subscription())
    await broker.publish(topic, [(b"x", {}, "")])
    requests = await receiver.wait_for(3)
    ids = {orjson.loads(r.content)["message"]["messageId"] for r in requests}
    assert len(ids) == 1
    worker = broker.worker(SUBSCRIPTION)
    await eventually_async(lambda: worker.acked)
    assert (worker.acked, worker.nacked) == (1, 2)


async def test_refused_connections_and_garbage_are_retried(
    broker: Broker, topic: str, receiver: Receiver
) -> None:
    async def answer(request: httpx.Request) -> httpx.Response:
        if len(receiver.requests) == 1:
            raise httpx.ConnectError("refused", request=request)
        if len(receiver.requests) == 2:
            raise httpx.RemoteProtocolError("garbage", request=request)
        return httpx.Response(204)

    receiver.answer = answer
    await broker.create_subscription(subscription())
    await broker.publish(topic, [(b"x", {}, "")])
    await receiver.wait_for(3)
    assert broker.worker(SUBSCRIPTION).last_failure == "RemoteProtocolError: garbage"


async def test_a_late_answer_is_a_nack(tmp_path: Path, receiver: Receiver) -> None:
    never = asyncio.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        if len(receiver.requests) == 1:
            await never.wait()  # no answer at all: late however long the deadline
        return httpx.Response(200)

    receiver.answer = answer
    client = httpx.AsyncClient(transport=httpx.MockTransport(receiver))
    # A short push timeout stands for the ack deadline (at least 10 s on a subscription).
    async with client, Broker(tmp_path / "late.sqlite3", client=client, push_timeout=0.5) as broker:
        await broker.create_topic(pubsub.Topic(name=TOPIC))
        await broker.create_subscription(subscription())
        await broker.publish(TOPIC, [(b"x", {}, "")])
        await receiver.wait_for(2)
        worker = broker.worker(SUBSCRIPTION)
        assert worker.nacked == 1
        assert worker.last_failure is not None
        assert "ack deadline" in worker.last_failure


async def test_dead_letters_after_max_attempts_with_the_attributes(
    broker: Broker, topic: str, receiver: Receiver
) -> None:
    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500 if request.url.path == "/events" else 200)

    receiver.answer = answer
    await broker.create_topic(pubsub.Topic(name=DEAD_TOPIC))
    await broker.create_subscription(subscription(dead_letter=5))
    await broker.create_subscription(
        subscription(
            name="projects/local/subscriptions/dead-push",
            topic=DEAD_TOPIC,
            endpoint="http://receiver.test/dead",
        )
    )
    [message_id] = await broker.publish(topic, [(b"payload", {"a": "1"}, "")])
    requests = await receiver.wait_for(6)
    pushes = [orjson.loads(r.content) for r in requests if r.url.path == "/events"]
    assert [p["deliveryAttempt"] for p in pushes] == [1, 2, 3, 4, 5]
    [dead] = [orjson.loads(r.content) for r in requests if r.url.path == "/dead"]
    message = dead["message"]
    assert message["messageId"] != message_id
    assert base64.b64decode(message["data"]) == b"payload"
    attributes = message["attributes"]
    assert attributes["a"] == "1"
    assert attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert attributes["CloudPubSubDeadLetterSourceSubscription"] == "events-push"
    assert attributes["CloudPubSubDeadLetterSourceSubscriptionProject"] == "local"
    assert attributes["CloudPubSubDeadLetterSourceTopicPublishTime"].endswith("Z")
    assert list(broker.worker(SUBSCRIPTION).dead) == [int(message_id)]


async def test_replay_delivers_a_dead_lettered_message_again(
    broker: Broker, topic: str, receiver: Receiver
) -> None:
    failing = True

    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500 if failing else 200)

    receiver.answer = answer
    await broker.create_subscription(subscription(dead_letter=5))
    [message_id] = await broker.publish(topic, [(b"x", {}, "")])
    await receiver.wait_for(5)
    worker = broker.worker(SUBSCRIPTION)
    await eventually_async(lambda: worker.dead)
    failing = False
    await broker.replay(SUBSCRIPTION, message_id)
    [*_, replayed] = await receiver.wait_for(6)
    assert orjson.loads(replayed.content)["deliveryAttempt"] == 1
    assert not worker.dead


async def test_one_message_in_flight_per_ordering_key(
    broker: Broker, topic: str, receiver: Receiver
) -> None:
    in_flight: dict[str, int] = {}
    most: dict[str, int] = {}
    order: list[str] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        message = orjson.loads(request.content)["message"]
        key = message["orderingKey"]
        in_flight[key] = in_flight.get(key, 0) + 1
        most[key] = max(most.get(key, 0), in_flight[key])
        await asyncio.sleep(0.01)
        in_flight[key] -= 1
        order.append(base64.b64decode(message["data"]).decode())
        return httpx.Response(200)

    receiver.answer = answer
    await broker.create_subscription(subscription(ordering=True))
    for i in range(5):
        await broker.publish(topic, [(f"a{i}".encode(), {}, "a")])
        await broker.publish(topic, [(f"b{i}".encode(), {}, "b")])
    await eventually_async(lambda: len(order) == 10)  # every answer given, not only received
    assert most == {"a": 1, "b": 1}
    assert [x for x in order if x[0] == "a"] == [f"a{i}" for i in range(5)]
    assert [x for x in order if x[0] == "b"] == [f"b{i}" for i in range(5)]


async def test_a_nacked_message_holds_back_its_key_only(
    broker: Broker, topic: str, receiver: Receiver
) -> None:
    b0_pushed = asyncio.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        data = base64.b64decode(orjson.loads(request.content)["message"]["data"])
        seen = [
            base64.b64decode(orjson.loads(r.content)["message"]["data"]) for r in receiver.requests
        ]
        if data == b"b0":
            b0_pushed.set()
        if data == b"a0" and seen.count(b"a0") == 1:
            return httpx.Response(500)
        if data == b"a0":
            # a0 stays unacked until b0 was pushed: were key "b" held back behind a0's
            # failure, b0 never would be, and this would wait for ever.
            await b0_pushed.wait()
        return httpx.Response(200)

    receiver.answer = answer
    await broker.create_subscription(subscription(ordering=True))
    await broker.publish(topic, [(b"a0", {}, "a"), (b"a1", {}, "a")])
    await broker.publish(topic, [(b"b0", {}, "b")])
    requests = await receiver.wait_for(4)
    data = [base64.b64decode(orjson.loads(r.content)["message"]["data"]) for r in requests]
    # b0 went while a0 was failing and retried; a1 only after a0 was acked.
    assert data.count(b"a0") == 2
    assert data[-1] == b"a1"


async def test_one_bad_endpoint_does_not_stall_another(
    broker: Broker, topic: str, receiver: Receiver
) -> None:
    async def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "hangs.test":
            await asyncio.sleep(10)
        return httpx.Response(200)

    receiver.answer = answer
    await broker.create_subscription(
        subscription(name="projects/local/subscriptions/bad", endpoint="http://hangs.test/")
    )
    await broker.create_subscription(subscription())
    await broker.publish(topic, [(f"{i}".encode(), {}, "") for i in range(50)])
    await eventually_async(lambda: broker.worker(SUBSCRIPTION).acked == 50, timeout=5)
    assert broker.worker("projects/local/subscriptions/bad").acked == 0


def test_slow_start_grows_on_success_and_halves_on_failure() -> None:
    window = SlowStart(initial=4, limit=100)
    for _ in range(4):
        window.success()
    assert window.allowed == 8
    window.failure()
    assert window.allowed == 4
    for _ in range(5):
        window.success()
    assert window.allowed == 5  # after a failure it grows by about one per round (of ~4)
    for _ in range(10):
        window.failure()
    assert window.allowed == 1
    for _ in range(10_000):
        window.success()
    assert window.allowed == 100


async def test_unwrapped_push_with_metadata(broker: Broker, topic: str, receiver: Receiver) -> None:
    await broker.create_subscription(
        subscription(no_wrapper=pubsub.PushConfig.NoWrapper(write_metadata=True))
    )
    [message_id] = await broker.publish(
        topic, [(b"\x00raw", {"event-type": "x", "Content-Type": "text/plain"}, "")]
    )
    [request] = await receiver.wait_for(1)
    assert request.content == b"\x00raw"
    assert request.headers["event-type"] == "x"
    assert request.headers["content-type"] == "text/plain"
    assert request.headers["x-goog-pubsub-message-id"] == message_id
    assert request.headers["x-goog-pubsub-subscription-name"] == SUBSCRIPTION
    assert TOPIC not in request.headers.values()


async def test_attributes_never_frame_an_unwrapped_push(
    broker: Broker, topic: str, receiver: Receiver
) -> None:
    await broker.create_subscription(
        subscription(no_wrapper=pubsub.PushConfig.NoWrapper(write_metadata=True))
    )
    framing = {
        "Host": "elsewhere.example",
        "content-length": "1",
        "Transfer-Encoding": "chunked",
        "connection": "close",
        "tenant": "a",
    }
    await broker.publish(topic, [(b"0123456789", framing, "")])
    [request] = await receiver.wait_for(1)
    assert request.content == b"0123456789"
    assert request.headers["content-length"] == "10"
    assert request.headers["host"] != "elsewhere.example"
    assert "transfer-encoding" not in request.headers
    assert request.headers.get("connection") != "close"
    assert request.headers["tenant"] == "a"


async def test_a_message_to_a_topic_without_subscriptions_is_not_kept(
    broker: Broker, topic: str
) -> None:
    [first] = await broker.publish(topic, [(b"x", {}, "")])
    count = await broker.storage.run(
        lambda connection: connection.execute("SELECT count(*) FROM messages").fetchone()[0]
    )
    assert count == 0
    [second] = await broker.publish(topic, [(b"y", {}, "")])
    assert int(second) > int(first)  # ids are never reused


async def test_cloudevents_binary_mode_as_eventarc_sends_it(
    broker: Broker, topic: str, receiver: Receiver
) -> None:
    await broker.create_subscription(subscription(attributes={"x-homing-format": "cloudevents"}))
    [message_id] = await broker.publish(topic, [(b"x", {"kind": "k"}, "")])
    [request] = await receiver.wait_for(1)
    assert request.headers["ce-id"] == message_id
    assert request.headers["ce-source"] == f"//pubsub.googleapis.com/{TOPIC}"
    assert request.headers["ce-specversion"] == "1.0"
    assert request.headers["ce-type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert request.headers["ce-time"].endswith("Z")
    body = orjson.loads(request.content)
    assert body["message"]["messageId"] == message_id
    assert body["subscription"] == SUBSCRIPTION


async def test_a_message_older_than_the_retention_is_deleted_undelivered(
    broker: Broker, topic: str, receiver: Receiver
) -> None:
    made = subscription()
    made.message_retention_duration = timedelta(minutes=10)
    await broker.create_subscription(made)
    worker = broker.worker(SUBSCRIPTION)
    old = StoredMessage(10**9, TOPIC, b"old", {}, "", time.time() - 601)
    worker.add(Pending(SUBSCRIPTION, old))
    await broker.publish(topic, [(b"new", {}, "")])
    [request] = await receiver.wait_for(1)
    assert base64.b64decode(orjson.loads(request.content)["message"]["data"]) == b"new"
    await eventually_async(lambda: worker.backlog == 0 and worker.acked == 1)
    assert len(receiver.requests) == 1  # the old message was deleted, never pushed
