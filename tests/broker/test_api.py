"""The Pub/Sub gRPC API, driven by google-cloud-pubsub itself (PUBSUB_EMULATOR_HOST)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from google.api_core import exceptions as api
from google.cloud import pubsub_v1
from google.pubsub_v1 import types as pubsub

from homing import provisioning
from homing.broker import Broker
from homing.broker.server import Addresses, serving
from homing.settings import Settings
from tests.broker.conftest import Receiver

T = TypeVar("T")
PROJECT = "homing-local"
TOPIC = f"projects/{PROJECT}/topics/events"


@dataclasses.dataclass
class Served:
    broker: Broker
    addresses: Addresses
    publisher: Any
    subscriber: Any

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A blocking client call, off the event loop the broker runs on."""
        return await asyncio.to_thread(function, *args, **kwargs)


@pytest.fixture
async def served(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Served]:
    client = httpx.AsyncClient(transport=httpx.MockTransport(receiver))
    broker = Broker(tmp_path / "broker.sqlite3", client=client)
    async with client, serving(broker, port=0, http_port=0) as addresses:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", addresses.grpc)
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
        try:
            yield Served(broker, addresses, publisher, subscriber)
        finally:
            await asyncio.to_thread(subscriber.close)
            await asyncio.to_thread(publisher.stop)
            publisher.transport.close()


async def test_topics_lifecycle_and_status_codes(served: Served) -> None:
    publisher = served.publisher
    created = await served.call(publisher.create_topic, name=TOPIC)
    assert created.name == TOPIC
    with pytest.raises(api.AlreadyExists, match=f"Topic already exists: {TOPIC}"):
        await served.call(publisher.create_topic, name=TOPIC)
    assert (await served.call(publisher.get_topic, topic=TOPIC)).name == TOPIC
    listed = await served.call(lambda: list(publisher.list_topics(project=f"projects/{PROJECT}")))
    assert [t.name for t in listed] == [TOPIC]
    for bad, why in (
        ("projects/homing-local/topics/x", "an id is 3-255 characters"),
        ("projects/p/topics/1abc", "starts with a letter"),
        ("topics/abc", r"\(expected projects/PROJECT/topics/ID\)"),
        ("projects/homing-local/topics/goog-abc", "ids may not start with 'goog'"),
    ):
        with pytest.raises(api.InvalidArgument, match=why):
            await served.call(publisher.create_topic, name=bad)
    with pytest.raises(api.NotFound, match=f"Topic not found: {TOPIC}-missing"):
        await served.call(publisher.get_topic, topic=TOPIC + "-missing")
    await served.call(publisher.delete_topic, topic=TOPIC)
    with pytest.raises(api.NotFound, match=f"Topic not found: {TOPIC}"):
        await served.call(publisher.delete_topic, topic=TOPIC)


async def test_a_published_message_is_pushed(served: Served, receiver: Receiver) -> None:
    await served.call(served.publisher.create_topic, name=TOPIC)
    await served.call(
        served.subscriber.create_subscription,
        request={
            "name": f"projects/{PROJECT}/subscriptions/push",
            "topic": TOPIC,
            "push_config": {"push_endpoint": "http://receiver.test/events"},
        },
    )
    future = served.publisher.publish(TOPIC, b"hello", kind="greeting")
    message_id = await asyncio.wrap_future(future)
    [request] = await receiver.wait_for(1)
    message = orjson.loads(request.content)["message"]
    assert message["messageId"] == message_id
    assert base64.b64decode(message["data"]) == b"hello"
    assert message["attributes"] == {"kind": "greeting"}


@pytest.mark.parametrize(
    ("data", "attributes", "reason"),
    [
        (b"", {}, "needs data or at least one attribute"),
        (b"x" * (10_000_001), {}, "over the limit"),
        (b"x", {f"k{i}": "v" for i in range(101)}, "101 attributes"),
        (b"x", {"k" * 257: "v"}, "attribute key of 257 bytes"),
        (b"x", {"k": "v" * 1025}, "value of 1025 bytes"),
        (b"x", {"googkey": "v"}, "may not start with 'goog'"),
        (b"x", {"goog_client": "v"}, "may not start with 'goog'"),
    ],
)
async def test_publish_limits_are_productions(
    served: Served, data: bytes, attributes: dict[str, str], reason: str
) -> None:
    await served.call(served.publisher.create_topic, name=TOPIC)
    request = pubsub.PublishRequest(
        topic=TOPIC, messages=[pubsub.PubsubMessage(data=data, attributes=attributes)]
    )
    with pytest.raises(api.InvalidArgument, match=reason):
        await served.call(served.publisher._gapic_publish, request=request)
    assert served.broker.published == 0


async def test_publish_to_an_unknown_topic_is_not_found(served: Served) -> None:
    request = pubsub.PublishRequest(topic=TOPIC, messages=[pubsub.PubsubMessage(data=b"x")])
    with pytest.raises(api.NotFound, match=f"Topic not found: {TOPIC}"):
        await served.call(served.publisher._gapic_publish, request=request)


async def test_more_than_1000_messages_are_refused(served: Served) -> None:
    await served.call(served.publisher.create_topic, name=TOPIC)
    request = pubsub.PublishRequest(topic=TOPIC, messages=[pubsub.PubsubMessage(data=b"x")] * 1001)
    with pytest.raises(api.InvalidArgument, match="1001"):
        await served.call(served.publisher._gapic_publish, request=request)


async def test_subscription_settings_are_validated(served: Served) -> None:
    await served.call(served.publisher.create_topic, name=TOPIC)
    name = f"projects/{PROJECT}/subscriptions/push"
    bad: list[tuple[dict[str, Any], str]] = [
        ({"ack_deadline_seconds": 5}, "Invalid ack deadline 5s"),
        ({"ack_deadline_seconds": 601}, "Invalid ack deadline 601s"),
        ({"push_config": {"push_endpoint": "ftp://x"}}, "Invalid push endpoint given"),
        ({"retry_policy": {"minimum_backoff": {"seconds": 700}}}, "Invalid minimum backoff 700"),
        (
            {
                "retry_policy": {
                    "minimum_backoff": {"seconds": 60},
                    "maximum_backoff": {"seconds": 10},
                }
            },
            r"minimum backoff \(60(\.0)?s\) is greater than the maximum backoff",
        ),
        (
            {"dead_letter_policy": {"dead_letter_topic": TOPIC, "max_delivery_attempts": 4}},
            "Invalid max delivery attempts 4",
        ),
    ]
    for extra, why in bad:
        with pytest.raises(api.InvalidArgument, match=why):
            await served.call(
                served.subscriber.create_subscription,
                request={"name": name, "topic": TOPIC, **extra},
            )
    with pytest.raises(api.NotFound, match=f"Topic not found: {TOPIC}-missing"):
        await served.call(
            served.subscriber.create_subscription,
            request={"name": name, "topic": TOPIC + "-missing"},
        )
    with pytest.raises(api.NotFound, match=f"Subscription does not exist: {name}"):
        await served.call(served.subscriber.get_subscription, subscription=name)


async def test_pull_and_acknowledge(served: Served) -> None:
    await served.call(served.publisher.create_topic, name=TOPIC)
    name = f"projects/{PROJECT}/subscriptions/pull"
    await served.call(served.subscriber.create_subscription, name=name, topic=TOPIC)
    await asyncio.wrap_future(served.publisher.publish(TOPIC, b"one"))
    response = await served.call(served.subscriber.pull, subscription=name, max_messages=10)
    [received] = response.received_messages
    assert received.message.data == b"one"
    again = await served.call(served.subscriber.pull, subscription=name, max_messages=10)
    assert not again.received_messages  # leased until the ack deadline
    await served.call(served.subscriber.acknowledge, subscription=name, ack_ids=[received.ack_id])
    assert served.broker.worker(name).acked == 1


async def test_provision_and_check_work_against_the_broker(served: Served) -> None:
    settings = dataclasses.replace(
        Settings(),
        project=PROJECT,
        topic="events",
        subscription="events-push",
        push_endpoint="http://127.0.0.1:8080/events",
        dead_letter_topic="events-dead",
        push_service_account="push@homing-local.iam.gserviceaccount.com",
    )
    plan = provisioning.plan(settings)
    outcomes = await served.call(
        lambda: list(provisioning.provision(plan, apply_iam_bindings=False))
    )
    assert [o.action for o in outcomes] == ["created", "created", "created"]
    assert await served.call(provisioning.check, plan) == []
    again = await served.call(lambda: list(provisioning.provision(plan, apply_iam_bindings=False)))
    assert [o.action for o in again] == ["unchanged"] * 3
    changed = provisioning.plan(dataclasses.replace(settings, ack_deadline=30))
    [difference] = await served.call(provisioning.check, changed)
    assert "ack_deadline_seconds" in str(difference)
    updated = await served.call(
        lambda: list(provisioning.provision(changed, apply_iam_bindings=False))
    )
    assert updated[-1].action == "updated (ack_deadline_seconds)"
    assert await served.call(provisioning.check, changed) == []
    subscription = served.broker.get_subscription(f"projects/{PROJECT}/subscriptions/events-push")
    assert subscription.ack_deadline_seconds == 30
    assert subscription.push_config.oidc_token.service_account_email.startswith("push@")


async def test_the_client_librarys_own_attributes_are_accepted(served: Served) -> None:
    await served.call(served.publisher.create_topic, name=TOPIC)
    request = pubsub.PublishRequest(
        topic=TOPIC,
        messages=[pubsub.PubsubMessage(data=b"x", attributes={"googclient_traceparent": "00-1"})],
    )
    response = await served.call(served.publisher._gapic_publish, request=request)
    assert len(response.message_ids) == 1
