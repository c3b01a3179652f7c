"""Eventarc's delivery of a Pub/Sub message: a CloudEvent of type ``messagePublished``.

Eventarc sends CloudEvents 1.0 over HTTP in binary content mode (the event's attributes in
``ce-*`` headers, its data — the wrapped push envelope — as the body) or in structured mode
(``Content-Type: application/cloudevents+json``, attributes and data in one JSON object).
Either way the Pub/Sub message is read from the envelope by :mod:`homing.ingress.wrapped`
(Eventarc's envelope names the message id, as a push's does; ``ce-id`` repeats it).

The CloudEvent's attributes only say what the request is: the message inside is authenticated
like any other push (homing's signature; Google's OIDC token). The names below are the
CloudEvents specification's (and the ``cloudevents`` SDK's); the tests send with that SDK.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from typing import Any

import orjson

from homing.errors import MalformedPush
from homing.ingress.message import PushMessage
from homing.ingress.wrapped import parse_push

#: The CloudEvent type of a message published to a Pub/Sub topic.
MESSAGE_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
SPECVERSION = "1.0"
#: The media type of a CloudEvent in structured content mode, in JSON.
STRUCTURED = "application/cloudevents+json"
#: The attributes CloudEvents 1.0 requires.
_REQUIRED = ("id", "source", "specversion", "type")


def is_structured(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` names a structured-mode CloudEvent."""
    if content_type is None:
        return False
    return content_type.partition(";")[0].strip().lower() == STRUCTURED


def parse_cloudevent(body: bytes, headers: Mapping[str, str]) -> PushMessage:
    """A ``messagePublished`` CloudEvent in either content mode; raise :class:`MalformedPush`."""
    if is_structured(headers.get("content-type")):
        event = _json(body, "the structured CloudEvent")
        _check({name: event.get(name) for name in _REQUIRED})
        # The data, the wrapped envelope, is read as the body of a wrapped push would be.
        body = orjson.dumps(_structured_data(event))
    else:
        _check({name: headers.get("ce-" + name) for name in _REQUIRED})
    return parse_push(body)


def _check(attributes: Mapping[str, Any]) -> None:
    for name in _REQUIRED:
        value = attributes[name]
        if value is None or value == "":
            raise MalformedPush(f"the CloudEvent has no {name}")
        if type(value) is not str:
            raise MalformedPush(f"the CloudEvent's {name} must be a string")
    if attributes["specversion"] != SPECVERSION:
        raise MalformedPush(
            f"CloudEvents specversion {attributes['specversion'][:16]!r} is not {SPECVERSION}"
        )
    if attributes["type"] != MESSAGE_PUBLISHED:
        raise MalformedPush(
            f"CloudEvent type {attributes['type'][:100]!r} is not {MESSAGE_PUBLISHED}"
        )


def _structured_data(event: dict[str, Any]) -> dict[str, Any]:
    if "data" in event and "data_base64" in event:
        raise MalformedPush("the CloudEvent has both data and data_base64")
    if "data_base64" in event:
        encoded = event["data_base64"]
        if type(encoded) is not str:
            raise MalformedPush("the CloudEvent's data_base64 must be a string")
        try:
            raw = binascii.a2b_base64(encoded, strict_mode=True)
        except (binascii.Error, ValueError):
            raise MalformedPush("the CloudEvent's data_base64 is not valid base64") from None
        return _json(raw, "the CloudEvent's data")
    data = event.get("data")
    if data is None:
        raise MalformedPush("the CloudEvent has no data")
    if type(data) is not dict:
        raise MalformedPush("the CloudEvent's data must be the Pub/Sub push envelope object")
    return data


def _json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedPush(f"{what} is not valid JSON: {exc}") from None
    if type(value) is not dict:
        raise MalformedPush(f"{what} must be a JSON object")
    return value
