"""The push endpoint in-process: every outcome, and every kind of bad input."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Callable

import httpx
import orjson
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from homing import Homing, KeyRing, Signer, build_push
from homing.asgi import PushEndpoint
from homing.fastapi import push_router
from homing.signing import EVENT_ID, legacy_signature
from homing.stores import Claim
from homing.testing import push_body
from tests.conftest import OrderPlaced, Recorder

ORDER = OrderPlaced(order_id=1, total_cents=999)


async def _post(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post("/events", content=body, headers={"content-type": "application/json"})


async def test_a_signed_event_runs_its_handler_and_answers_204(
    client: httpx.AsyncClient, homing: Homing, recorder: Recorder
) -> None:
    response = await _post(client, push_body(homing, ORDER, event_id="e1", message_id="m1"))
    assert response.status_code == 204
    assert response.content == b""
    [(event, delivery)] = recorder.seen
    assert event == ORDER
    assert delivery.event_id == "e1"
    assert delivery.message_id == "m1"
    assert delivery.event_type == "order.placed"
    assert delivery.scheme == "v1"
    assert await homing.dedupe.claim("e1", lease=1) is Claim.DUPLICATE


async def test_a_redelivery_is_acked_and_runs_nothing(
    client: httpx.AsyncClient, homing: Homing, recorder: Recorder
) -> None:
    body = push_body(homing, ORDER, event_id="e1", message_id="m1")
    assert (await _post(client, body)).status_code == 204
    assert (await _post(client, body)).status_code == 204
    assert len(recorder.seen) == 1


async def test_the_same_event_under_a_new_message_id_runs_nothing(
    client: httpx.AsyncClient, homing: Homing, recorder: Recorder
) -> None:
    message = homing.sign(ORDER)
    for message_id in ("m1", "m2"):
        body = build_push(message.data, message.attributes, message_id=message_id, subscription="s")
        assert (await _post(client, body)).status_code == 204
    assert len(recorder.seen) == 1


async def test_retry_answers_non_2xx_and_a_redelivery_runs_again(
    client: httpx.AsyncClient, homing: Homing, recorder: Recorder
) -> None:
    body = push_body(homing, OrderPlaced(order_id=-1, total_cents=0), event_id="e-retry")
    response = await _post(client, body)
    assert response.status_code == 503
    assert response.json() == {"outcome": "retry", "detail": "asked to retry"}
    # The claim was released: the next delivery may run at once.
    assert await homing.dedupe.claim("e-retry", lease=1) is Claim.CLAIMED


async def test_a_crashing_handler_is_retried_and_logged(
    client: httpx.AsyncClient, homing: Homing, caplog: pytest.LogCaptureFixture
) -> None:
    body = push_body(homing, OrderPlaced(order_id=-3, total_cents=0), event_id="e-bug")
    response = await _post(client, body)
    assert response.status_code == 500
    assert response.json()["outcome"] == "handler_failed"
    assert "RuntimeError" in response.json()["detail"]
    assert "handler for order.placed (e-bug) failed" in caplog.text
    assert await homing.dedupe.claim("e-bug", lease=1) is Claim.CLAIMED


async def test_drop_acks_and_keeps_the_raw_envelope(
    client: httpx.AsyncClient, homing: Homing
) -> None:
    body = push_body(homing, OrderPlaced(order_id=-2, total_cents=0), event_id="e-drop")
    response = await _post(client, body)
    assert response.status_code == 200
    assert response.json()["outcome"] == "quarantined"
    entry = await homing.quarantine.get("e-drop")
    assert entry is not None
    assert entry.body == body
    assert entry.reason == "dropped by the handler: asked to drop"
    assert entry.event_type == "order.placed"
    # A redelivery of a dropped event drops again (it was not handled), into the same entry.
    again = await _post(client, body)
    assert (again.status_code, again.json()["outcome"]) == (200, "quarantined")
    assert [e.id for e in await homing.quarantine.list()] == ["e-drop"]


async def test_a_signed_payload_that_does_not_fit_the_model_is_quarantined(
    client: httpx.AsyncClient, homing: Homing, keys: KeyRing, recorder: Recorder
) -> None:
    data = b'{"order_id": "not a number"}'
    attributes = Signer(keys).sign(data, "order.placed", event_id="e-bad")
    body = build_push(data, attributes, message_id="m", subscription="s")
    response = await _post(client, body)
    assert response.status_code == 200
    # The failing fields by location and kind, never their values.
    assert response.json()["detail"] == (
        "the data does not fit OrderPlaced: 2 error(s): order_id: int_parsing; total_cents: missing"
    )
    assert "not a number" not in response.json()["detail"]
    assert recorder.seen == []
    entry = await homing.quarantine.get("e-bad")
    assert entry is not None
    assert entry.body == body


async def test_unknown_event_types_are_quarantined_by_default(
    client: httpx.AsyncClient, homing: Homing, keys: KeyRing, recorder: Recorder
) -> None:
    data = b"{}"
    attributes = Signer(keys).sign(data, "invoice.sent", event_id="e-unknown")
    response = await _post(client, build_push(data, attributes, message_id="m", subscription="s"))
    assert response.status_code == 200
    assert response.json()["outcome"] == "quarantined"
    assert "'invoice.sent' has no model" in response.json()["detail"]
    assert await homing.quarantine.get("e-unknown") is not None
    assert recorder.seen == []


async def test_unknown_event_types_can_ask_for_redelivery(keys: KeyRing) -> None:
    homing = Homing(signer=Signer(keys), unknown_events="retry")

    class Known(BaseModel):
        x: int

    homing.events.register("known", Known)  # a model without a handler counts as unknown
    data = b'{"x": 1}'
    body = build_push(data, Signer(keys).sign(data, "known"), message_id="m", subscription="s")
    result = await homing.handle_push(body)
    assert (result.status, result.outcome) == (503, "unknown_event")
    assert "has no handler" in (result.detail or "")
    assert await homing.quarantine.list() == []


async def test_a_delivery_while_another_runs_answers_409(
    client: httpx.AsyncClient, homing: Homing, recorder: Recorder
) -> None:
    assert await homing.dedupe.claim("e-busy", lease=60) is Claim.CLAIMED
    response = await _post(client, push_body(homing, ORDER, event_id="e-busy"))
    assert response.status_code == 409
    assert response.json()["outcome"] == "in_progress"
    assert recorder.seen == []


async def test_the_articles_legacy_format_is_accepted_when_configured(
    client: httpx.AsyncClient, recorder: Recorder
) -> None:
    data = orjson.dumps({"order_id": 5, "total_cents": 1})
    attributes = {
        "event-type": "order.placed",
        "signature": legacy_signature("the-article-shared-secret", data),
    }
    body = build_push(data, attributes, message_id="pubsub-77", subscription="api-events")
    assert (await _post(client, body)).status_code == 204
    assert (await _post(client, body)).status_code == 204  # the messageId stands as event id
    [(event, delivery)] = recorder.seen
    assert event.order_id == 5
    assert (delivery.event_id, delivery.scheme) == ("pubsub-77", "legacy")


def _signed(homing: Homing) -> dict[str, object]:
    return orjson.loads(push_body(homing, ORDER, event_id="e-bad-input"))  # type: ignore[no-any-return]


def _tamper(homing: Homing, **changes: str) -> bytes:
    envelope = _signed(homing)
    message = envelope["message"]
    assert isinstance(message, dict)
    for key, value in changes.items():
        if key == "data":
            message["data"] = base64.b64encode(value.encode()).decode()
        else:
            message["attributes"][key.replace("_", "-")] = value
    return orjson.dumps(envelope)


def _without_signature(homing: Homing) -> bytes:
    envelope = _signed(homing)
    message = envelope["message"]
    assert isinstance(message, dict)
    del message["attributes"]["homing-signature"]
    return orjson.dumps(envelope)


def _signed_by_removed_key(homing: Homing) -> bytes:
    stranger = Homing(signer=Signer(KeyRing({"k-gone": "a-key-that-was-rotated-out"})))
    stranger.events.register("order.placed", OrderPlaced)
    return push_body(stranger, ORDER, event_id="e-bad-input")


BAD_INPUT: dict[str, tuple[Callable[[Homing], bytes], int, str]] = {
    "not json": (lambda h: b"hello", 400, "malformed"),
    "invalid utf-8": (lambda h: b'{"message": "\xff\xfe"}', 400, "malformed"),
    "deep nesting": (lambda h: b"[" * 100_000 + b"]" * 100_000, 400, "malformed"),
    "not an object": (lambda h: b'"message"', 400, "malformed"),
    "no message": (lambda h: b'{"subscription": "s"}', 400, "malformed"),
    "mistyped attributes": (
        lambda h: b'{"message": {"messageId": "1", "attributes": "x"}}',
        400,
        "malformed",
    ),
    "non-base64 data": (
        lambda h: b'{"message": {"messageId": "1", "data": "%%%"}}',
        400,
        "malformed",
    ),
    "missing message id": (lambda h: b'{"message": {"data": ""}}', 400, "malformed"),
    "missing signature": (_without_signature, 401, "unauthenticated"),
    "altered data": (
        lambda h: _tamper(h, data='{"order_id":2,"total_cents":999}'),
        401,
        "unauthenticated",
    ),
    "altered event type": (
        lambda h: _tamper(h, event_type="order.cancelled"),
        401,
        "unauthenticated",
    ),
    "altered event id": (lambda h: _tamper(h, homing_event_id="other"), 401, "unauthenticated"),
    "added attribute": (lambda h: _tamper(h, tenant="x"), 401, "unauthenticated"),
    "wrong signature": (
        lambda h: _tamper(h, homing_signature="v1:" + "0" * 64),
        401,
        "unauthenticated",
    ),
    "key no longer in the ring": (_signed_by_removed_key, 401, "unauthenticated"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
async def test_bad_input_gets_a_clear_4xx_and_changes_nothing(
    client: httpx.AsyncClient,
    homing: Homing,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
    keys: KeyRing,
    case: str,
) -> None:
    make, status, outcome = BAD_INPUT[case]
    caplog.set_level(logging.DEBUG)
    response = await _post(client, make(homing))
    assert response.status_code == status
    assert response.json()["outcome"] == outcome
    assert response.json()["detail"]
    assert recorder.seen == []
    assert await homing.quarantine.list() == []
    # Not recorded as processed: the genuine event still runs afterwards.
    assert await homing.dedupe.claim("e-bad-input", lease=1) is Claim.CLAIMED
    for secret in ("a-secret-of-enough-length", "an-older-secret-still-valid"):
        assert secret not in caplog.text
        assert secret not in response.text


async def test_an_oversize_body_is_refused_with_413(keys: KeyRing, recorder: Recorder) -> None:
    homing = Homing(signer=Signer(keys), max_body_size=1024)
    homing.events.register("order.placed", OrderPlaced)
    homing.handler(OrderPlaced)(recorder)
    transport = httpx.ASGITransport(app=PushEndpoint(homing))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        big = b"{" + b" " * 2000 + b"}"
        response = await client.post("/", content=big)
        assert response.status_code == 413
        assert response.json()["outcome"] == "too_large"

        async def chunks() -> AsyncIterator[bytes]:  # no content-length: streamed
            for _ in range(4):
                yield b" " * 512

        response = await client.post("/", content=chunks())
        assert response.status_code == 413
    assert recorder.seen == []


async def test_a_body_in_several_pieces_is_read_whole(
    client: httpx.AsyncClient, homing: Homing, recorder: Recorder
) -> None:
    body = push_body(homing, ORDER, event_id="e-pieces", message_id="m-pieces")

    async def pieces() -> AsyncIterator[bytes]:  # no content-length: streamed in 3 pieces
        third = len(body) // 3
        for start in (0, third, 2 * third):
            yield body[start : start + third] if start < 2 * third else body[start:]

    response = await client.post("/events", content=pieces())
    assert response.status_code == 204
    [(event, delivery)] = recorder.seen
    assert event == ORDER
    assert delivery.event_id == "e-pieces"


async def test_the_default_body_limit_is_pubsubs_10_mb(keys: KeyRing) -> None:
    assert Homing(signer=Signer(keys)).max_body_size == 10 * 1024 * 1024


async def test_other_methods_get_405(client: httpx.AsyncClient) -> None:
    response = await client.get("/events")
    assert response.status_code == 405


async def test_unsigned_pushes_run_only_with_auth_none(
    caplog: pytest.LogCaptureFixture, recorder: Recorder
) -> None:
    homing = Homing(signer=None, auth="none")
    assert "authentication is OFF" in caplog.text
    homing.events.register("order.placed", OrderPlaced)
    homing.handler(OrderPlaced)(recorder)
    data = orjson.dumps(ORDER.model_dump())
    body = build_push(data, {"event-type": "order.placed"}, message_id="m9", subscription="s")
    result = await homing.handle_push(body)
    assert result.status == 204
    assert recorder.seen[0][1].scheme == "unsigned"
    assert recorder.seen[0][1].event_id == "m9"


async def test_the_fastapi_router_serves_the_endpoint(homing: Homing, recorder: Recorder) -> None:
    app = FastAPI()
    app.include_router(push_router(homing, "/pubsub/push"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/pubsub/push", content=push_body(homing, ORDER))
    assert response.status_code == 204
    assert len(recorder.seen) == 1


async def test_publish_signs_and_hands_to_the_publisher(homing: Homing) -> None:
    from homing import MemoryPublisher

    event_id = await homing.publish(ORDER, attributes={"tenant": "acme"})
    publisher = homing.publisher
    assert isinstance(publisher, MemoryPublisher)
    [(message_id, message)] = publisher.messages
    assert message.event_id == event_id == message.attributes[EVENT_ID]
    assert message.event_type == "order.placed"
    assert message.attributes["tenant"] == "acme"
    assert message_id == "1"


async def test_the_last_attempt_is_quarantined_before_pubsub_gives_up(
    client: httpx.AsyncClient, homing: Homing
) -> None:
    homing.max_delivery_attempts = 5
    failing = OrderPlaced(order_id=-1, total_cents=0)  # the recorder asks for a retry
    early = push_body(homing, failing, event_id="e-last", delivery_attempt=4)
    assert (await _post(client, early)).status_code == 503
    assert await homing.quarantine.get("e-last") is None
    last = push_body(homing, failing, event_id="e-last", delivery_attempt=5)
    response = await _post(client, last)
    assert response.status_code == 200
    assert response.json()["outcome"] == "quarantined"
    entry = await homing.quarantine.get("e-last")
    assert entry is not None
    assert entry.reason == "the last delivery attempt (5 of 5) failed: asked to retry"
    assert entry.body == last
    # Not marked done: a replay of the quarantined envelope can still run the handler.
    assert await homing.dedupe.claim("e-last", lease=1) is Claim.CLAIMED


async def test_a_crash_on_the_last_attempt_is_quarantined_too(
    client: httpx.AsyncClient, homing: Homing
) -> None:
    homing.max_delivery_attempts = 5
    body = push_body(
        homing, OrderPlaced(order_id=-3, total_cents=0), event_id="e-crash", delivery_attempt=7
    )
    assert (await _post(client, body)).status_code == 200
    entry = await homing.quarantine.get("e-crash")
    assert entry is not None
    assert "RuntimeError" in entry.reason


async def test_dead_letter_attributes_without_a_push_token_are_ignored(
    client: httpx.AsyncClient, homing: Homing, recorder: Recorder
) -> None:
    # Unsigned, they vouch for nothing unless the push token does (tests/test_hostile.py).
    message = homing.sign(ORDER, event_id="e-dead")
    attributes = {**message.attributes, "CloudPubSubDeadLetterSourceDeliveryCount": "5"}
    body = build_push(message.data, attributes, message_id="dl-1", subscription="events-dead")
    assert (await _post(client, body)).status_code == 204
    assert len(recorder.seen) == 1
    assert await homing.quarantine.get("e-dead") is None
