"""Resource names, production's validation limits, and a subscription's delivery settings.

The Pub/Sub API objects (``google.pubsub_v1.types``) are what the broker stores and serves back,
so a ``get`` returns exactly what was created; :class:`Delivery` is the part the delivery loop
reads, derived from one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from homing.broker.errors import InvalidArgument

#: Production's limits (cloud.google.com/pubsub/quotas).
MAX_MESSAGE_BYTES = 10 * 1000 * 1000
MAX_REQUEST_BYTES = 10 * 1000 * 1000
MAX_MESSAGES_PER_PUBLISH = 1000
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 1024
MAX_ORDERING_KEY_BYTES = 1024
ACK_DEADLINE_RANGE = (10, 600)
BACKOFF_RANGE = (0.0, 600.0)
DELIVERY_ATTEMPTS_RANGE = (5, 100)
DEFAULT_ACK_DEADLINE = 10
DEFAULT_MIN_BACKOFF = 10.0
DEFAULT_MAX_BACKOFF = 600.0
DEFAULT_DELIVERY_ATTEMPTS = 5
DEFAULT_RETENTION = 7 * 24 * 3600.0
#: A push config attribute (the broker's own): ``cloudevents`` pushes as an Eventarc Pub/Sub
#: trigger does (CloudEvents 1.0 binary mode); Pub/Sub itself has no such switch.
FORMAT_ATTRIBUTE = "x-homing-format"

_ID = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$")
_PROJECT = re.compile(r"^[a-z][a-z0-9\-]{4,28}[a-z0-9]$|^[A-Za-z0-9\-_.:]{1,100}$")


def _resource(name: str, kind: str) -> tuple[str, str]:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != kind:
        raise InvalidArgument(
            f"Invalid resource name given (name={name}). Refer to "
            f"https://cloud.google.com/pubsub/docs/pubsub-basics#resource_names "
            f"(expected projects/PROJECT/{kind}/ID)"
        )
    project, resource_id = parts[1], parts[3]
    if not _PROJECT.match(project):
        raise InvalidArgument(f"Invalid project id {project!r} in {name}")
    if not _ID.match(resource_id):
        raise InvalidArgument(
            f"Invalid resource name given (name={name}): an id is 3-255 characters, starts "
            "with a letter and holds letters, digits and - _ . ~ + %"
        )
    if resource_id.lower().startswith("goog"):
        raise InvalidArgument(
            f"Invalid resource name given (name={name}): ids may not start with 'goog'"
        )
    return project, resource_id


def topic_name(name: str) -> str:
    """``name`` if it is a valid ``projects/P/topics/T``; else :class:`InvalidArgument`."""
    _resource(name, "topics")
    return name


def subscription_name(name: str) -> str:
    """``name`` if it is a valid ``projects/P/subscriptions/S``; else :class:`InvalidArgument`."""
    _resource(name, "subscriptions")
    return name


def project_of(name: str) -> str:
    """The project of a resource name (``projects/P/...``)."""
    return name.split("/")[1]


def project_name(name: str) -> str:
    """``name`` if it is a valid ``projects/P``."""
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != "projects" or not _PROJECT.match(parts[1]):
        raise InvalidArgument(f"Invalid project name given (name={name}): expected projects/P")
    return name


def check_messages(messages: Sequence[tuple[bytes, Mapping[str, str], str]]) -> None:
    """Production's publish checks on ``(data, attributes, ordering_key)`` triples."""
    if not messages:
        raise InvalidArgument("The request contains no messages")
    if len(messages) > MAX_MESSAGES_PER_PUBLISH:
        raise InvalidArgument(
            f"The number of messages in the request ({len(messages)}) exceeds the maximum "
            f"allowed ({MAX_MESSAGES_PER_PUBLISH})"
        )
    total = 0
    for index, (data, attributes, ordering_key) in enumerate(messages):
        where = f"message {index}"
        if not data and not attributes:
            raise InvalidArgument(f"{where}: a message needs data or at least one attribute")
        size = len(data)
        if size > MAX_MESSAGE_BYTES:
            raise InvalidArgument(
                f"{where}: the data is {size} bytes, over the limit of {MAX_MESSAGE_BYTES}"
            )
        if len(attributes) > MAX_ATTRIBUTES:
            raise InvalidArgument(
                f"{where}: {len(attributes)} attributes, over the limit of {MAX_ATTRIBUTES}"
            )
        for key, value in attributes.items():
            key_bytes, value_bytes = len(key.encode()), len(value.encode())
            if not key:
                raise InvalidArgument(f"{where}: an attribute key is empty")
            if key_bytes > MAX_ATTRIBUTE_KEY_BYTES:
                raise InvalidArgument(
                    f"{where}: attribute key of {key_bytes} bytes, over the limit of "
                    f"{MAX_ATTRIBUTE_KEY_BYTES}"
                )
            if value_bytes > MAX_ATTRIBUTE_VALUE_BYTES:
                raise InvalidArgument(
                    f"{where}: attribute {key!r} has a value of {value_bytes} bytes, over the "
                    f"limit of {MAX_ATTRIBUTE_VALUE_BYTES}"
                )
            # googclient_ is the client library's own (its OpenTelemetry trace context).
            if key.lower().startswith("goog") and not key.startswith("googclient_"):
                raise InvalidArgument(f"{where}: attribute keys may not start with 'goog'")
            size += key_bytes + value_bytes
        if len(ordering_key.encode()) > MAX_ORDERING_KEY_BYTES:
            raise InvalidArgument(
                f"{where}: the ordering key is over {MAX_ORDERING_KEY_BYTES} bytes"
            )
        total += size
    if total > MAX_REQUEST_BYTES:
        raise InvalidArgument(
            f"The request is {total} bytes, over the limit of {MAX_REQUEST_BYTES}"
        )
    if len({key for _, _, key in messages if key}) > 1:
        raise InvalidArgument("A publish request may carry one ordering key only")


def _seconds(duration: Any, default: float) -> float:
    if duration is None:
        return default
    return float(duration.total_seconds())


@dataclass(frozen=True, slots=True)
class Delivery:
    """How a subscription's messages are pushed: what the delivery loop needs to know."""

    name: str
    topic: str
    endpoint: str | None
    ack_deadline: float
    no_wrapper: bool = False
    write_metadata: bool = False
    oidc_email: str | None = None
    oidc_audience: str | None = None
    retry_policy: bool = False
    min_backoff: float = DEFAULT_MIN_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    dead_letter_topic: str | None = None
    max_delivery_attempts: int = DEFAULT_DELIVERY_ATTEMPTS
    ordered: bool = False
    cloudevents: bool = False
    retention: float = DEFAULT_RETENTION

    @classmethod
    def of(cls, subscription: Any) -> Delivery:
        """The delivery settings of a ``google.pubsub_v1.types.Subscription``."""
        push = subscription.push_config
        endpoint = push.push_endpoint or None
        token = push.oidc_token if "oidc_token" in push else None
        unwrapped = push.no_wrapper if "no_wrapper" in push else None
        retry = subscription.retry_policy if "retry_policy" in subscription else None
        dead = subscription.dead_letter_policy if "dead_letter_policy" in subscription else None
        return cls(
            name=subscription.name,
            topic=subscription.topic,
            endpoint=endpoint,
            ack_deadline=float(subscription.ack_deadline_seconds or DEFAULT_ACK_DEADLINE),
            no_wrapper=unwrapped is not None,
            write_metadata=bool(unwrapped.write_metadata) if unwrapped is not None else False,
            oidc_email=token.service_account_email if token is not None else None,
            oidc_audience=(token.audience or endpoint) if token is not None else None,
            retry_policy=retry is not None,
            min_backoff=_seconds(
                retry.minimum_backoff if retry is not None and "minimum_backoff" in retry else None,
                DEFAULT_MIN_BACKOFF,
            ),
            max_backoff=_seconds(
                retry.maximum_backoff if retry is not None and "maximum_backoff" in retry else None,
                DEFAULT_MAX_BACKOFF,
            ),
            dead_letter_topic=(dead.dead_letter_topic or None) if dead is not None else None,
            max_delivery_attempts=(
                dead.max_delivery_attempts or DEFAULT_DELIVERY_ATTEMPTS
                if dead is not None
                else DEFAULT_DELIVERY_ATTEMPTS
            ),
            ordered=bool(subscription.enable_message_ordering),
            cloudevents=push.attributes.get(FORMAT_ATTRIBUTE) == "cloudevents",
            retention=_seconds(
                subscription.message_retention_duration
                if "message_retention_duration" in subscription
                else None,
                DEFAULT_RETENTION,
            ),
        )


def check_subscription(subscription: Any) -> None:
    """Production's checks on a subscription's settings; :class:`InvalidArgument` if not."""
    subscription_name(subscription.name)
    topic_name(subscription.topic)
    deadline = subscription.ack_deadline_seconds
    if deadline and not ACK_DEADLINE_RANGE[0] <= deadline <= ACK_DEADLINE_RANGE[1]:
        raise InvalidArgument(
            f"Invalid ack deadline {deadline}s: it must be between {ACK_DEADLINE_RANGE[0]} and "
            f"{ACK_DEADLINE_RANGE[1]} seconds"
        )
    push = subscription.push_config
    if push.push_endpoint:
        parts = urlsplit(push.push_endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidArgument(
                f"Invalid push endpoint given (endpoint={push.push_endpoint}): it must be an "
                "http(s) URL"
            )
    elif "oidc_token" in push or "no_wrapper" in push:
        raise InvalidArgument("A push config needs a push endpoint")
    if push.attributes.get(FORMAT_ATTRIBUTE, "cloudevents") != "cloudevents":
        raise InvalidArgument(f"push config attribute {FORMAT_ATTRIBUTE} may only be cloudevents")
    if "oidc_token" in push and not push.oidc_token.service_account_email:
        raise InvalidArgument("An OIDC token needs a service account email")
    if "retry_policy" in subscription:
        retry = subscription.retry_policy
        low = _seconds(retry.minimum_backoff if "minimum_backoff" in retry else None, 10.0)
        high = _seconds(retry.maximum_backoff if "maximum_backoff" in retry else None, 600.0)
        for label, value in (("minimum", low), ("maximum", high)):
            if not BACKOFF_RANGE[0] <= value <= BACKOFF_RANGE[1]:
                raise InvalidArgument(
                    f"Invalid {label} backoff {value}s: it must be between 0 and 600 seconds"
                )
        if low > high:
            raise InvalidArgument(
                f"The minimum backoff ({low}s) is greater than the maximum backoff ({high}s)"
            )
    if "message_retention_duration" in subscription:
        retention = _seconds(subscription.message_retention_duration, DEFAULT_RETENTION)
        if not 600 <= retention <= 31 * 24 * 3600:
            raise InvalidArgument(
                f"Invalid message retention {retention:g}s: it must be between 10 minutes and "
                "31 days"
            )
    if "dead_letter_policy" in subscription:
        dead = subscription.dead_letter_policy
        if not dead.dead_letter_topic:
            raise InvalidArgument("A dead letter policy needs a dead letter topic")
        topic_name(dead.dead_letter_topic)
        attempts = dead.max_delivery_attempts
        if attempts and not DELIVERY_ATTEMPTS_RANGE[0] <= attempts <= DELIVERY_ATTEMPTS_RANGE[1]:
            raise InvalidArgument(
                f"Invalid max delivery attempts {attempts}: it must be between 5 and 100"
            )
