"""The unwrapped push (``pushConfig.noWrapper``): the message's data is the request body.

With ``writeMetadata`` the message's metadata arrives in ``x-goog-pubsub-*`` headers and each
attribute as a header of its own name. HTTP folds header names to lower case and mixes the
attributes with the headers every request carries, so which headers are attributes is decided
here:

* a message signed with homing's ``v1`` scheme names its attributes: homing's own
  (``event-type`` and every ``homing-*`` header) and, when the publisher set others, the list
  in ``homing-attributes`` (which restores their case); nothing else is taken, so a header added
  on the way (a proxy's, Cloud Run's) cannot break or join what was signed;
* any other message (the article's format, or unsigned under ``auth="oidc"``): every header that
  is not an HTTP or Google transport header.

Without ``writeMetadata`` a push carries no attributes at all — no signature, no event type, no
message id: :func:`parse_bare` reads it only where the caller allows it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from homing.errors import MalformedPush
from homing.ingress.message import MAX_ATTRIBUTES, MAX_NAME_BYTES, MAX_VALUE_BYTES, PushMessage
from homing.signing import ATTRIBUTE_NAMES, EVENT_TYPE, SIGNATURE

MESSAGE_ID = "x-goog-pubsub-message-id"
PUBLISH_TIME = "x-goog-pubsub-publish-time"
SUBSCRIPTION = "x-goog-pubsub-subscription-name"
DELIVERY_ATTEMPT = "x-goog-pubsub-delivery-attempt"
#: Google's documented name, then the one the official emulator sends.
ORDERING_KEYS = ("x-goog-pubsub-ordering-key", "x-goog-ordering-key")


#: Attributes Pub/Sub adds to a dead-lettered copy, by their header (lower-case) names.
_PUBSUB_ADDED = {
    name.lower(): name
    for name in (
        "CloudPubSubDeadLetterSourceDeliveryCount",
        "CloudPubSubDeadLetterSourceSubscription",
        "CloudPubSubDeadLetterSourceSubscriptionProject",
        "CloudPubSubDeadLetterSourceTopicPublishTime",
    )
}

#: Headers HTTP, Cloud Run, Google's front end or a proxy put on a request: never attributes.
_TRANSPORT = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "authorization",
        "cache-control",
        "connection",
        "content-length",
        "content-type",
        "cookie",
        "expect",
        "forwarded",
        "from",
        "host",
        "keep-alive",
        "pragma",
        "te",
        "traceparent",
        "tracestate",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "via",
        "x-cloud-trace-context",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-proto",
        "x-real-ip",
        "x-request-id",
    }
)
_TRANSPORT_PREFIXES = ("x-goog-", "x-google-", "x-envoy-", "x-appengine-", "x-cloud-", "ce-")


def parse_unwrapped(body: bytes, headers: Mapping[str, str]) -> PushMessage:
    """An unwrapped push with write-metadata; raise :class:`MalformedPush` saying what is wrong.

    ``headers`` has lower-case names and values as ASGI gives them (bytes read as latin-1).
    """
    message_id = headers.get(MESSAGE_ID)
    if not message_id:
        raise MalformedPush(f"the unwrapped push has no {MESSAGE_ID} header")
    attempt: int | None = None
    raw_attempt = headers.get(DELIVERY_ATTEMPT)
    if raw_attempt is not None:
        if not raw_attempt.isdecimal() or int(raw_attempt) < 1:
            raise MalformedPush(f"{DELIVERY_ATTEMPT} must be a positive integer")
        attempt = int(raw_attempt)
    ordering_key = next((headers[name] for name in ORDERING_KEYS if name in headers), None)
    return PushMessage(
        body,
        _attributes(headers),
        message_id,
        headers.get(PUBLISH_TIME),
        ordering_key or None,
        headers.get(SUBSCRIPTION),
        attempt,
    )


def parse_bare(body: bytes) -> PushMessage:
    """An unwrapped push without write-metadata: the data and nothing else.

    It has no message id of its own; its SHA-256 stands in, so a redelivery of the same bytes is
    recognised (and two messages with the same bytes are taken for one).
    """
    return PushMessage(body, {}, "sha256:" + hashlib.sha256(body).hexdigest())


def check_bounds(headers: Mapping[str, str]) -> None:
    """Refuse more attribute headers, or longer ones, than Pub/Sub allows a message."""
    count = 0
    for name, value in headers.items():
        if name in _TRANSPORT or name.startswith(_TRANSPORT_PREFIXES):
            continue
        count += 1
        if count > MAX_ATTRIBUTES:
            raise MalformedPush(f"the push carries more than {MAX_ATTRIBUTES} attribute headers")
        if len(name) > MAX_NAME_BYTES:  # header text is latin-1: one character per byte
            raise MalformedPush(f"an attribute name is longer than {MAX_NAME_BYTES} bytes")
        if len(value) > MAX_VALUE_BYTES:
            raise MalformedPush(f"attribute {name[:64]!r} is longer than {MAX_VALUE_BYTES} bytes")


def _attributes(headers: Mapping[str, str]) -> dict[str, str]:
    check_bounds(headers)
    if SIGNATURE in headers:
        # homing's own (its fixed ones and any context it adds, such as the trace context),
        # then the publisher's, by the names it listed.
        names = [EVENT_TYPE, *(name for name in headers if name.startswith("homing-"))]
        listed = headers.get(ATTRIBUTE_NAMES)
        if listed:
            names += listed.split(",")
        chosen = [(name, headers.get(name.lower())) for name in names]
        chosen += [(name, headers.get(header)) for header, name in _PUBSUB_ADDED.items()]
        pairs = [(name, value) for name, value in chosen if value is not None]
    else:
        pairs = [
            (_PUBSUB_ADDED.get(name, name), value)
            for name, value in headers.items()
            if name not in _TRANSPORT and not name.startswith(_TRANSPORT_PREFIXES)
        ]
    attributes: dict[str, str] = {}
    for name, value in pairs:
        try:
            # Header bytes arrive as latin-1 text; attribute values are UTF-8.
            attributes[name] = value.encode("latin-1").decode("utf-8")
        except UnicodeError:
            raise MalformedPush(f"attribute header {name[:64]!r} is not UTF-8") from None
    return attributes
