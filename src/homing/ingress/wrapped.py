"""The wrapped push (Pub/Sub's default): a JSON envelope around the message.

The body is ``{"message": {...}, "subscription": "...", "deliveryAttempt": N}``; Google sends
both camelCase and snake_case spellings of the message fields. Eventarc's CloudEvents carry the
same envelope as their data (:mod:`homing.ingress.cloudevents`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from homing.errors import MalformedPush
from homing.ingress.message import (
    MAX_ATTRIBUTES,
    SHORT_NAME,
    SHORT_VALUE,
    PushMessage,
    check_attribute,
)


def _text(message: dict[str, Any], camel: str, snake: str) -> str | None:
    # Google sends both spellings; either may be missing.
    value = message.get(camel)
    if value is None:
        value = message.get(snake)
        if value is None:
            return None
    if type(value) is not str:
        raise MalformedPush(f"message.{camel} must be a string")
    return value


def parse_push(body: bytes) -> PushMessage:
    """Parse a wrapped push body; raise :class:`MalformedPush` saying what is wrong."""
    # Every push takes this path: checks are written out (no helpers per field, no generic
    # validation) because each microsecond here is a share of the endpoint's throughput.
    try:
        envelope = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson refuses invalid UTF-8 and nesting deeper than 1024 levels here too.
        raise MalformedPush(f"the body is not valid JSON: {exc}") from None
    if type(envelope) is not dict:
        raise MalformedPush("the body must be a JSON object")
    message = envelope.get("message")
    if type(message) is not dict:
        raise MalformedPush("the body has no 'message' object")

    raw_data = message.get("data")
    if raw_data is None:
        data = b""
    elif type(raw_data) is str:
        try:
            # The same strict check as base64.b64decode(validate=True), without its wrapper.
            data = binascii.a2b_base64(raw_data, strict_mode=True)
        except (binascii.Error, ValueError):
            raise MalformedPush("message.data is not valid base64") from None
    else:
        raise MalformedPush("message.data must be a base64 string")

    attributes = message.get("attributes")
    if attributes is None:
        attributes = {}
    elif type(attributes) is not dict:
        raise MalformedPush("message.attributes must be an object")
    elif len(attributes) > MAX_ATTRIBUTES:
        raise MalformedPush(f"message.attributes has more than {MAX_ATTRIBUTES} entries")
    for name, value in attributes.items():
        if type(value) is not str:
            raise MalformedPush("message.attributes values must be strings")
        if len(name) > SHORT_NAME or len(value) > SHORT_VALUE:
            check_attribute(name, value)

    message_id = _text(message, "messageId", "message_id")
    if not message_id:
        raise MalformedPush("the message has no messageId")

    subscription = envelope.get("subscription")
    if subscription is not None and type(subscription) is not str:
        raise MalformedPush("subscription must be a string")
    attempt = envelope.get("deliveryAttempt")
    if attempt is None:
        attempt = envelope.get("delivery_attempt")
    if attempt is not None and (type(attempt) is not int or attempt < 1):
        raise MalformedPush("deliveryAttempt must be a positive integer")

    return PushMessage(
        data,
        attributes,
        message_id,
        _text(message, "publishTime", "publish_time"),
        _text(message, "orderingKey", "ordering_key"),
        subscription,
        attempt,
    )


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def build_push(
    data: bytes,
    attributes: Mapping[str, str],
    *,
    message_id: str,
    subscription: str,
    publish_time: datetime | str | None = None,
    ordering_key: str | None = None,
    delivery_attempt: int | None = None,
) -> bytes:
    """A wrapped push body as Pub/Sub sends it (both spellings of the message fields).

    ``publish_time`` is now unless given (as a datetime or as RFC 3339 text, kept as it is).
    """
    if isinstance(publish_time, str):
        published = publish_time
    else:
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
