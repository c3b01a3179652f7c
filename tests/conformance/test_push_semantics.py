"""Push semantics, the same tests against the local broker and the official emulator."""

from __future__ import annotations

import base64
import itertools
import time

import orjson
import pytest
from google.api_core import exceptions as api
from google.pubsub_v1 import types as pubsub

from tests.conformance.conftest import Receiver, Target

pytestmark = pytest.mark.e2e

FAST_RETRY = {
    "retry_policy": {"minimum_backoff": {"seconds": 0}, "maximum_backoff": {"seconds": 1}}
}


def _publish(target: Target, topic: str, data: bytes, **attributes: str) -> str:
    return str(target.publisher.publish(topic, data, **attributes).result(timeout=10))


def test_the_wrapped_body_has_both_spellings_and_base64_data(
    target: Target, receiver: Receiver
) -> None:
    topic = target.topic()
    url = receiver.endpoint()
    subscription = target.subscription(topic, url)
    message_id = _publish(target, topic, b"\x00\x01binary", kind="k")
    [push] = receiver.wait(url, 1)
    body = orjson.loads(push.body)
    assert body["subscription"] == subscription
    message = body["message"]
    assert base64.b64decode(message["data"]) == b"\x00\x01binary"
    assert message["messageId"] == message["message_id"] == message_id
    assert message["publishTime"] == message["publish_time"]
    assert message["attributes"] == {"kind": "k"}
    assert "deliveryAttempt" not in body


def test_delivery_attempt_is_sent_with_a_dead_letter_policy(
    target: Target, receiver: Receiver
) -> None:
    topic, dead = target.topic(), target.topic()
    url = receiver.endpoint(lambda n: 500 if n == 1 else 204)
    target.subscription(
        topic,
        url,
        dead_letter_policy={"dead_letter_topic": dead, "max_delivery_attempts": 5},
        **FAST_RETRY,
    )
    _publish(target, topic, b"x")
    pushes = receiver.wait(url, 2, seconds=15)
    attempts = [orjson.loads(p.body).get("deliveryAttempt") for p in pushes[:2]]
    assert attempts == ([None, None] if target.emulator else [1, 2])  # the emulator sends none


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_ack_statuses(target: Target, receiver: Receiver, status: int) -> None:
    _assert_acks_or_redelivers(target, receiver, status)


@pytest.mark.parametrize("status", [203, 400, 429, 500])
def test_other_statuses_are_redelivered(target: Target, receiver: Receiver, status: int) -> None:
    _assert_acks_or_redelivers(target, receiver, status)


def _assert_acks_or_redelivers(target: Target, receiver: Receiver, status: int) -> None:
    """An ack is pushed once; a nack is pushed again, the same message. Which is which is
    :meth:`Target.acks` (the emulator acks 203 and nacks 202)."""
    topic = target.topic()
    url = receiver.endpoint(lambda n: status if n == 1 else 204)
    target.subscription(topic, url)
    _publish(target, topic, b"x")
    if target.acks(status):
        receiver.wait(url, 1)
        time.sleep(2.5)  # past the emulator's ~1 s redelivery tick: no second push came
        assert len(receiver.at(url)) == 1
    else:
        pushes = receiver.wait(url, 2, seconds=5)
        ids = {orjson.loads(p.body)["message"]["messageId"] for p in pushes}
        assert len(ids) == 1


def test_dead_letters_after_max_attempts_with_the_attributes(
    target: Target, receiver: Receiver
) -> None:
    topic, dead = target.topic(), target.topic()
    url, dead_url = receiver.endpoint(lambda _n: 500), receiver.endpoint()
    subscription = target.subscription(
        topic,
        url,
        dead_letter_policy={"dead_letter_topic": dead, "max_delivery_attempts": 5},
    )
    target.subscription(dead, dead_url)
    message_id = _publish(target, topic, b"payload", kind="k")
    [copy] = receiver.wait(dead_url, 1, seconds=30)
    assert len(receiver.at(url)) == 5
    message = orjson.loads(copy.body)["message"]
    assert message["messageId"] != message_id
    assert base64.b64decode(message["data"]) == b"payload"
    attributes = message["attributes"]
    assert attributes["kind"] == "k"
    assert attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert attributes["CloudPubSubDeadLetterSourceSubscription"] == subscription.rsplit("/")[-1]
    assert (
        attributes["CloudPubSubDeadLetterSourceSubscriptionProject"] == subscription.split("/")[1]
    )


def test_an_oidc_token_is_attached(target: Target, receiver: Receiver) -> None:
    topic = target.topic()
    url = receiver.endpoint()
    target.subscription(
        topic,
        url,
        push_config={
            "oidc_token": {"service_account_email": "push@example.iam.gserviceaccount.com"}
        },
    )
    _publish(target, topic, b"x")
    [push] = receiver.wait(url, 1)
    if target.emulator:
        assert "authorization" not in push.headers  # the emulator attaches no token
    else:
        assert push.headers["authorization"].startswith("Bearer ")


def test_the_ordering_key_is_in_the_wrapped_body(target: Target, receiver: Receiver) -> None:
    topic = target.topic()
    url = receiver.endpoint()
    target.subscription(topic, url, enable_message_ordering=True)
    target.publisher._gapic_publish(
        request=pubsub.PublishRequest(
            topic=topic, messages=[pubsub.PubsubMessage(data=b"x", ordering_key="key-1")]
        )
    )
    [push] = receiver.wait(url, 1)
    message = orjson.loads(push.body)["message"]
    if target.emulator:
        assert "orderingKey" not in message  # the emulator leaves it out
    else:
        assert message["orderingKey"] == "key-1"


def test_one_message_in_flight_per_ordering_key(target: Target, receiver: Receiver) -> None:
    topic = target.topic()
    url = receiver.endpoint(delay=0.1)
    target.subscription(topic, url, enable_message_ordering=True)
    for i in range(4):
        target.publisher._gapic_publish(
            request=pubsub.PublishRequest(
                topic=topic,
                messages=[pubsub.PubsubMessage(data=f"{i}".encode(), ordering_key="k")],
            )
        )
    pushes = receiver.wait(url, 4)
    data = [base64.b64decode(orjson.loads(p.body)["message"]["data"]) for p in pushes]
    assert data == [b"0", b"1", b"2", b"3"]
    gaps = [b.at - a.at for a, b in itertools.pairwise(pushes)]
    assert min(gaps) >= 0.09  # each waited for the one before to be answered


def test_raw_bytes_for_no_wrapper(target: Target, receiver: Receiver) -> None:
    topic = target.topic()
    url = receiver.endpoint()
    target.subscription(topic, url, push_config={"no_wrapper": {"write_metadata": True}})
    data = b"\xff\xfe\x00raw"
    _publish(target, topic, data, kind="k")
    [push] = receiver.wait(url, 1)
    if target.emulator:
        # The emulator decodes the body as UTF-8: each invalid byte becomes U+FFFD.
        assert push.body == data.decode("utf-8", "replace").encode()
    else:
        assert push.body == data
    assert push.headers["kind"] == "k"


def _publish_raw(target: Target, topic: str, *messages: pubsub.PubsubMessage) -> None:
    target.publisher._gapic_publish(request=pubsub.PublishRequest(topic=topic, messages=messages))


def test_an_empty_message_is_refused(target: Target) -> None:
    topic = target.topic()
    empty = "Some messages are empty" if target.emulator else "needs data or at least one attribute"
    with pytest.raises(api.InvalidArgument, match=empty):
        _publish_raw(target, topic, pubsub.PubsubMessage())


def test_more_than_1000_messages_are_refused(target: Target) -> None:
    topic = target.topic()
    too_many = (
        "Too many messages" if target.emulator else r"\(1001\) exceeds the maximum allowed \(1000\)"
    )
    with pytest.raises(api.InvalidArgument, match=too_many):
        _publish_raw(target, topic, *[pubsub.PubsubMessage(data=b"x")] * 1001)


def test_more_than_100_attributes_are_refused(target: Target) -> None:
    topic = target.topic()
    message = pubsub.PubsubMessage(data=b"x", attributes={f"k{i}": "v" for i in range(101)})
    if target.emulator:
        _publish_raw(target, topic, message)  # the emulator enforces no attribute limits
        return
    with pytest.raises(api.InvalidArgument, match="101 attributes, over the limit of 100"):
        _publish_raw(target, topic, message)


def test_unknown_and_existing_resources(target: Target) -> None:
    topic = target.topic()
    with pytest.raises(api.AlreadyExists, match="Topic already exists"):
        target.publisher.create_topic(name=topic)
    with pytest.raises(api.NotFound, match="Topic not found"):
        target.publisher.get_topic(topic=topic + "-missing")
    with pytest.raises(api.NotFound, match="Topic not found"):
        _publish_raw(target, topic + "-missing", pubsub.PubsubMessage(data=b"x"))
    no_topic = "Subscription topic does not exist" if target.emulator else "Topic not found"
    with pytest.raises(api.NotFound, match=no_topic):
        target.subscription(topic + "-missing", None)


def test_an_invalid_topic_name_is_refused(target: Target) -> None:
    name = f"projects/{target.kind}-x/topics/1-starts-with-digit"
    with pytest.raises(api.InvalidArgument, match=rf"(?i)invalid .*name.*\(name={name}\)"):
        target.publisher.create_topic(name=name)
