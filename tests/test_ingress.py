"""Every request shape Google sends reaches the same pipeline: wrapped, unwrapped, CloudEvents.

The unwrapped requests are shaped as Google documents them (and as the official emulator sends
them, `tests/e2e/test_unwrapped_emulator.py`); the CloudEvents are made by the ``cloudevents``
SDK, binary and structured.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest
from cloudevents.core.bindings import http as cloudevents_http
from cloudevents.core.v1.event import CloudEvent
from starlette.applications import Starlette

from homing import Homing, MalformedPush, build_push
from homing.ingress import as_wrapped, detect_shape, read_push, recognise
from homing.ingress.cloudevents import MESSAGE_PUBLISHED, parse_cloudevent
from homing.ingress.message import MAX_ATTRIBUTES
from homing.ingress.unwrapped import parse_unwrapped
from homing.signing import EVENT_TYPE, LEGACY_SIGNATURE, legacy_signature
from homing.starlette import push_route
from tests.conftest import OrderPlaced, Recorder

SUBSCRIPTION = "projects/p/subscriptions/s"
SOURCE = "//pubsub.googleapis.com/projects/p/topics/t"
PUBLISHED = "2026-11-28T04:00:00.123Z"
LEGACY_SECRET = "the-article-shared-secret"

Request = tuple[bytes, dict[str, bytes]]


def wrapped(data: bytes, attributes: Mapping[str, str], message_id: str) -> Request:
    body = build_push(
        data, attributes, message_id=message_id, subscription=SUBSCRIPTION, publish_time=PUBLISHED
    )
    return body, {"content-type": b"application/json"}


def unwrapped(data: bytes, attributes: Mapping[str, str], message_id: str) -> Request:
    """As Pub/Sub sends with noWrapper + writeMetadata: attributes as headers of their names."""
    headers = {name: value.encode() for name, value in attributes.items()}
    headers |= {
        "x-goog-pubsub-message-id": message_id.encode(),
        "x-goog-pubsub-publish-time": PUBLISHED.encode(),
        "x-goog-pubsub-subscription-name": SUBSCRIPTION.encode(),
        # What else a request to Cloud Run carries: never attributes.
        "user-agent": b"CloudPubSub-Google",
        "from": b"noreply@google.com",
        "x-cloud-trace-context": b"105445aa7843bc8bf206b12000100000/1;o=1",
        "traceparent": b"00-105445aa7843bc8bf206b12000100000-0000000000000001-01",
        "x-forwarded-for": b"66.102.0.1",
        "x-forwarded-proto": b"https",
    }
    return data, headers


def _envelope(data: bytes, attributes: Mapping[str, str], message_id: str) -> dict[str, Any]:
    return orjson.loads(wrapped(data, attributes, message_id)[0])  # type: ignore[no-any-return]


def _event(message_id: str, data: dict[str, Any]) -> CloudEvent:
    return CloudEvent(
        attributes={
            "id": message_id,
            "source": SOURCE,
            "type": MESSAGE_PUBLISHED,
            "specversion": "1.0",
            "datacontenttype": "application/json",
            "time": datetime.fromisoformat(PUBLISHED),
        },
        data=data,
    )


def binary_event(data: bytes, attributes: Mapping[str, str], message_id: str) -> Request:
    message = cloudevents_http.to_binary_event(
        _event(message_id, _envelope(data, attributes, message_id))
    )
    return message.body, {name.lower(): value.encode() for name, value in message.headers.items()}


def structured_event(data: bytes, attributes: Mapping[str, str], message_id: str) -> Request:
    message = cloudevents_http.to_structured_event(
        _event(message_id, _envelope(data, attributes, message_id))
    )
    return message.body, {name.lower(): value.encode() for name, value in message.headers.items()}


SHAPES = {
    "wrapped": wrapped,
    "unwrapped": unwrapped,
    "cloudevents-binary": binary_event,
    "cloudevents-structured": structured_event,
}


async def post(client: httpx.AsyncClient, request: Request) -> httpx.Response:
    body, headers = request
    raw = [(name.encode(), value) for name, value in headers.items()]
    return await client.post("/events", content=body, headers=raw)


def _as_text(headers: Mapping[str, bytes]) -> dict[str, str]:
    return {name: value.decode("latin-1") for name, value in headers.items()}


# -- one pipeline ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
async def test_every_shape_runs_the_handler_once_signed_with_homings_scheme(
    client: httpx.AsyncClient, homing: Homing, recorder: Recorder, shape: str
) -> None:
    order = OrderPlaced(order_id=7, total_cents=700)
    message = homing.sign(order, event_id="e-7", attributes={"Tenant": "Zoë"})
    request = SHAPES[shape](message.data, message.attributes, "m-7")
    assert (await post(client, request)).status_code == 204
    assert (await post(client, request)).status_code == 204  # a redelivery: no second effect
    [(event, delivery)] = recorder.seen
    assert event == order
    assert delivery.event_id == "e-7"
    assert delivery.message_id == "m-7"
    assert delivery.scheme == "v1"
    assert delivery.attributes["Tenant"] == "Zoë"  # the signed name, case and value
    assert delivery.subscription == SUBSCRIPTION
    assert delivery.publish_time == PUBLISHED


@pytest.mark.parametrize("shape", SHAPES)
async def test_every_shape_runs_the_handler_once_in_the_articles_format(
    client: httpx.AsyncClient, recorder: Recorder, shape: str
) -> None:
    data = orjson.dumps({"order_id": 8, "total_cents": 800})
    attributes = {
        EVENT_TYPE: "order.placed",
        LEGACY_SIGNATURE: legacy_signature(LEGACY_SECRET, data),
    }
    request = SHAPES[shape](data, attributes, "m-8")
    assert (await post(client, request)).status_code == 204
    assert (await post(client, request)).status_code == 204
    [(event, delivery)] = recorder.seen
    assert event.order_id == 8
    assert delivery.scheme == "legacy"
    assert delivery.event_id == "m-8"


@pytest.mark.parametrize("shape", SHAPES)
async def test_every_shape_refuses_an_altered_message(
    client: httpx.AsyncClient, homing: Homing, recorder: Recorder, shape: str
) -> None:
    message = homing.sign(OrderPlaced(order_id=9, total_cents=900), attributes={"tenant": "a"})
    forged = {**message.attributes, "tenant": "b"}
    response = await post(client, SHAPES[shape](message.data, forged, "m-9"))
    assert response.status_code == 401
    assert recorder.seen == []


async def test_one_event_through_all_shapes_has_one_effect(
    client: httpx.AsyncClient, homing: Homing, recorder: Recorder
) -> None:
    message = homing.sign(OrderPlaced(order_id=10, total_cents=1000), event_id="e-10")
    for number, make in enumerate(SHAPES.values()):
        request = make(message.data, message.attributes, f"m-{number}")
        assert (await post(client, request)).status_code == 204
    assert len(recorder.seen) == 1


async def test_headers_added_on_the_way_do_not_join_a_signed_unwrapped_message(
    client: httpx.AsyncClient, homing: Homing, recorder: Recorder
) -> None:
    message = homing.sign(OrderPlaced(order_id=11, total_cents=1))
    body, headers = unwrapped(message.data, message.attributes, "m-11")
    headers["x-injected-by-a-proxy"] = b"1"
    assert (await post(client, (body, headers))).status_code == 204
    [(_, delivery)] = recorder.seen
    assert "x-injected-by-a-proxy" not in delivery.attributes


@pytest.mark.parametrize("shape", ["unwrapped", "cloudevents-binary"])
async def test_a_quarantined_push_of_any_shape_is_kept_and_replays(
    client: httpx.AsyncClient, homing: Homing, recorder: Recorder, shape: str
) -> None:
    homing.unknown_events = "quarantine"
    message = homing.sign(OrderPlaced(order_id=-2, total_cents=0), event_id="e-drop")
    response = await post(client, SHAPES[shape](message.data, message.attributes, "m-d"))
    assert response.json()["outcome"] == "quarantined"
    [entry] = await homing.quarantine.list()
    assert read_push("wrapped", entry.body, None)[1].data == message.data
    # Replayed (and verified again) from the kept envelope: the handler drops it again.
    assert (await homing.replay(entry.id)).outcome == "quarantined"


# -- bad input -----------------------------------------------------------------------------


async def _refused(client: httpx.AsyncClient, request: Request, recorder: Recorder) -> str:
    response = await post(client, request)
    assert response.status_code == 400, response.text
    assert response.json()["outcome"] == "malformed"
    assert recorder.seen == []
    detail: str = response.json()["detail"]
    return detail


@pytest.fixture
def signed(homing: Homing) -> tuple[bytes, dict[str, str]]:
    message = homing.sign(OrderPlaced(order_id=12, total_cents=1))
    return message.data, dict(message.attributes)


async def test_a_request_mixing_shapes_is_refused(
    client: httpx.AsyncClient, recorder: Recorder, signed: tuple[bytes, dict[str, str]]
) -> None:
    body, headers = binary_event(*signed, "m")
    headers["x-goog-pubsub-message-id"] = b"m"
    assert "mixes push shapes" in await _refused(client, (body, headers), recorder)
    body, headers = structured_event(*signed, "m")
    headers["ce-id"] = b"m"
    assert "mixes push shapes" in await _refused(client, (body, headers), recorder)


@pytest.mark.parametrize(
    ("header", "value", "reason"),
    [
        ("ce-specversion", b"0.3", "specversion '0.3' is not 1.0"),
        ("ce-id", None, "has no id"),
        ("ce-source", None, "has no source"),
        ("ce-type", b"google.cloud.storage.object.v1.finalized", "is not " + MESSAGE_PUBLISHED),
    ],
)
async def test_a_wrong_binary_cloudevent_is_refused(
    client: httpx.AsyncClient,
    recorder: Recorder,
    signed: tuple[bytes, dict[str, str]],
    header: str,
    value: bytes | None,
    reason: str,
) -> None:
    body, headers = binary_event(*signed, "m")
    if value is None:
        del headers[header]
    else:
        headers[header] = value
    assert reason in await _refused(client, (body, headers), recorder)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"specversion": "0.3"}, "is not 1.0"),
        ({"id": None}, "has no id"),
        ({"type": "com.example.other"}, "is not " + MESSAGE_PUBLISHED),
        ({"id": 7}, "id must be a string"),
        ({"data": None}, "has no data"),
        ({"data": "text"}, "must be the Pub/Sub push envelope"),
        ({"data_base64": "eyJ9"}, "both data and data_base64"),
    ],
)
async def test_a_wrong_structured_cloudevent_is_refused(
    client: httpx.AsyncClient,
    recorder: Recorder,
    signed: tuple[bytes, dict[str, str]],
    change: dict[str, Any],
    reason: str,
) -> None:
    body, headers = structured_event(*signed, "m")
    event = orjson.loads(body)
    for key, value in change.items():
        if value is None:
            del event[key]
        else:
            event[key] = value
    assert reason in await _refused(client, (orjson.dumps(event), headers), recorder)


async def test_a_structured_cloudevent_may_carry_its_data_as_base64(
    client: httpx.AsyncClient, recorder: Recorder, signed: tuple[bytes, dict[str, str]]
) -> None:
    body, headers = structured_event(*signed, "m")
    event = orjson.loads(body)
    event["data_base64"] = base64.b64encode(orjson.dumps(event.pop("data"))).decode()
    assert (await post(client, (orjson.dumps(event), headers))).status_code == 204
    assert len(recorder.seen) == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"x-goog-pubsub-message-id": None}, "no x-goog-pubsub-message-id"),
        ({"x-goog-pubsub-delivery-attempt": b"zero"}, "positive integer"),
        ({"tenant": "Zo\u00eb".encode("latin-1")}, "is not UTF-8"),
        ({"tenant": b"x" * 1025}, "longer than 1024 bytes"),
        ({"n" * 257: b"x"}, "longer than 256 bytes"),
        ({f"a{n}": b"x" for n in range(MAX_ATTRIBUTES)}, "more than 100 attribute headers"),
    ],
)
async def test_a_wrong_unwrapped_push_is_refused(
    client: httpx.AsyncClient,
    recorder: Recorder,
    homing: Homing,
    change: dict[str, bytes | None],
    reason: str,
) -> None:
    message = homing.sign(OrderPlaced(order_id=13, total_cents=1), attributes={"tenant": "a"})
    body, headers = unwrapped(message.data, message.attributes, "m")
    for key, value in change.items():
        if value is None:
            del headers[key]
        else:
            headers[key] = value
    assert reason in await _refused(client, (body, headers), recorder)


def test_more_headers_than_any_push_carries_are_refused_unread() -> None:
    headers = {f"h{n}": "x" for n in range(201)}
    with pytest.raises(MalformedPush, match="more than 200 headers"):
        recognise(headers)


async def test_an_unwrapped_push_without_metadata_is_refused_saying_why(
    client: httpx.AsyncClient, recorder: Recorder
) -> None:
    body = orjson.dumps({"order_id": 14, "total_cents": 1})
    detail = await _refused(client, (body, {"content-type": b"application/json"}), recorder)
    assert "turn on write-metadata" in detail


async def test_without_signatures_a_bare_unwrapped_push_is_kept_not_run(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    homing = Homing(signer=None, auth="none")
    homing.events.register("order.placed", OrderPlaced)
    homing.handler(OrderPlaced)(recorder)
    app = Starlette(routes=[push_route(homing, "/events")])
    body = orjson.dumps({"order_id": 15, "total_cents": 1})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post("/events", content=body)
    assert response.status_code == 200
    assert response.json()["outcome"] == "quarantined"
    assert recorder.seen == []
    [entry] = await homing.quarantine.list()
    assert read_push("wrapped", entry.body, None)[1].data == body


@pytest.mark.parametrize(
    ("accepted", "shape"),
    [
        (("wrapped",), "unwrapped"),
        (("wrapped",), "cloudevents-binary"),
        (("cloudevents",), "wrapped"),
        (("unwrapped",), "cloudevents-structured"),
    ],
)
async def test_a_route_restricted_to_shapes_refuses_the_others(
    homing: Homing,
    recorder: Recorder,
    signed: tuple[bytes, dict[str, str]],
    accepted: tuple[Any, ...],
    shape: str,
) -> None:
    app = Starlette(routes=[push_route(homing, "/events", shapes=accepted)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        detail = await _refused(c, SHAPES[shape](*signed, "m"), recorder)
    assert f"accepts {', '.join(accepted)} pushes" in detail


# -- the readers ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["cloudevents-binary", "cloudevents-structured"])
def test_a_cloudevent_reads_as_the_sdk_reads_it(
    signed: tuple[bytes, dict[str, str]], shape: str
) -> None:
    body, headers = SHAPES[shape](*signed, "m-sdk")
    text_headers = _as_text(headers)
    event = cloudevents_http.from_http_event(cloudevents_http.HTTPMessage(text_headers, body))
    push = parse_cloudevent(body, text_headers)
    assert push.message_id == event.get_id()
    envelope = event.get_data()
    assert isinstance(envelope, dict)
    assert push.data == base64.b64decode(envelope["message"]["data"])
    assert dict(push.attributes) == envelope["message"]["attributes"]
    assert push.subscription == envelope["subscription"]


def test_the_shape_is_told_by_the_headers() -> None:
    assert detect_shape({"content-type": "application/json"}) == "wrapped"
    assert detect_shape({"x-goog-pubsub-message-id": "1"}) == "unwrapped"
    assert detect_shape({"ce-id": "1"}) == "cloudevents"
    assert detect_shape({"content-type": "Application/CloudEvents+JSON; charset=utf-8"}) == (
        "cloudevents"
    )


def test_unwrapped_metadata_as_the_emulator_sends_it() -> None:
    push = parse_unwrapped(
        b"\x00raw",
        {
            "x-goog-pubsub-message-id": "42",
            "x-goog-ordering-key": "k",
            "x-goog-pubsub-delivery-attempt": "3",
            "cloudpubsubdeadlettersourcedeliverycount": "5",
        },
    )
    assert push.data == b"\x00raw"
    assert push.ordering_key == "k"
    assert push.delivery_attempt == 3
    # Pub/Sub's own attribute names get their case back.
    assert push.attributes == {"CloudPubSubDeadLetterSourceDeliveryCount": "5"}


def test_as_wrapped_keeps_the_message() -> None:
    push = parse_unwrapped(b"d", {"x-goog-pubsub-message-id": "1", "a": "b"})
    again = read_push("wrapped", as_wrapped(push), None)[1]
    assert (again.data, dict(again.attributes), again.message_id) == (b"d", {"a": "b"}, "1")


async def test_homings_context_attributes_are_signed_and_read_from_an_unwrapped_push(
    client: httpx.AsyncClient, homing: Homing, recorder: Recorder
) -> None:
    assert homing.signer is not None
    data = orjson.dumps({"order_id": 16, "total_cents": 1})
    context = {"homing-traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    attributes = homing.signer.sign(data, "order.placed", context=context)
    assert (await post(client, unwrapped(data, attributes, "m-16"))).status_code == 204
    [(_, delivery)] = recorder.seen
    assert delivery.attributes["homing-traceparent"] == context["homing-traceparent"]
