"""Pub/Sub push requests: parsing the wrapped JSON envelope, and building one.

The wrapped body is ``{"message": {...}, "subscription": "...", "deliveryAttempt": N}``;
Google sends both camelCase and snake_case spellings of the message fields.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from homing.errors import MalformedPush

_MAX_ATTRIBUTES = 100


@dataclass(frozen=True, slots=True)
class PushMessage:
    """One pushed Pub/Sub message."""

    data: bytes = field(repr=False)
    attributes: Mapping[str, str]
    message_id: str
    publish_time: str | None = None
    ordering_key: str | None = None
    subscription: str | None = None
    delivery_attempt: int | None = None


def _field(message: Mapping[str, Any], camel: str, snake: str) -> Any:
    value = message.get(camel)
    return message.get(snake) if value is None else value


def _optional_str(message: Mapping[str, Any], camel: str, snake: str) -> str | None:
    value = _field(message, camel, snake)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedPush(f"message.{camel} must be a string")
    return value


def parse_push(body: bytes) -> PushMessage:
    """Parse a wrapped push body; raise :class:`MalformedPush` saying what is wrong."""
    try:
        envelope = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson refuses invalid UTF-8 and nesting deeper than 1024 levels here too.
        raise MalformedPush(f"the body is not valid JSON: {exc}") from None
    if not isinstance(envelope, dict):
        raise MalformedPush("the body must be a JSON object")
    message = envelope.get("message")
    if not isinstance(message, dict):
        raise MalformedPush("the body has no 'message' object")

    raw_data = message.get("data", "")
    if raw_data is None:
        raw_data = ""
    if not isinstance(raw_data, str):
        raise MalformedPush("message.data must be a base64 string")
    try:
        data = base64.b64decode(raw_data, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedPush("message.data is not valid base64") from None

    attributes = message.get("attributes")
    if attributes is None:
        attributes = {}
    if not isinstance(attributes, dict):
        raise MalformedPush("message.attributes must be an object")
    if len(attributes) > _MAX_ATTRIBUTES:
        raise MalformedPush(f"message.attributes has more than {_MAX_ATTRIBUTES} entries")
    for value in attributes.values():
        if not isinstance(value, str):
            raise MalformedPush("message.attributes values must be strings")

    message_id = _optional_str(message, "messageId", "message_id")
    if not message_id:
        raise MalformedPush("the message has no messageId")

    subscription = envelope.get("subscription")
    if subscription is not None and not isinstance(subscription, str):
        raise MalformedPush("subscription must be a string")
    attempt = envelope.get("deliveryAttempt", envelope.get("delivery_attempt"))
    if attempt is not None and (type(attempt) is not int or attempt < 1):
        raise MalformedPush("deliveryAttempt must be a positive integer")

    return PushMessage(
        data=data,
        attributes=attributes,
        message_id=message_id,
        publish_time=_optional_str(message, "publishTime", "publish_time"),
        ordering_key=_optional_str(message, "orderingKey", "ordering_key"),
        subscription=subscription,
        delivery_attempt=attempt,
    )


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def build_push(
    data: bytes,
    attributes: Mapping[str, str],
    *,
    message_id: str,
    subscription: str,
    publish_time: datetime | None = None,
    ordering_key: str | None = None,
    delivery_attempt: int | None = None,
) -> bytes:
    """A wrapped push body as Pub/Sub sends it (both spellings of the message fields)."""
    published = _rfc3339(publish_time or datetime.now(UTC))
    message: dict[str, Any] = {
        "data": base64.b64encode(data).decode("ascii"),
        "attributes": dict(attributes),
        "messageId": message_id,
        "message_id": message_id,
        "publishTime": published,
        "publish_time": published,
    }
    if ordering_key:
        message["orderingKey"] = ordering_key
    envelope: dict[str, Any] = {"message": message, "subscription": subscription}
    if delivery_attempt is not None:
        envelope["deliveryAttempt"] = delivery_attempt
    return orjson.dumps(envelope)


#: The statuses Pub/Sub push takes as an acknowledgement; every other answer is a nack.
ACK_STATUSES = frozenset({102, 200, 201, 202, 204})
