"""Request shapes: every way Google delivers a Pub/Sub message, read into one PushMessage.

==============  ==========================================================================
shape           how it is recognised
==============  ==========================================================================
``wrapped``     the default push: a JSON envelope (:mod:`homing.ingress.wrapped`)
``unwrapped``   ``pushConfig.noWrapper`` with write-metadata: ``x-goog-pubsub-*`` headers,
                the data as the body (:mod:`homing.ingress.unwrapped`)
``cloudevents`` Eventarc: ``ce-*`` headers (binary mode) or a body of type
                ``application/cloudevents+json`` (structured mode)
                (:mod:`homing.ingress.cloudevents`)
``cloudtasks``  a Cloud Tasks HTTP task: ``x-cloudtasks-*`` headers, a wrapped envelope as
                the body (:mod:`homing.ingress.cloudtasks`)
==============  ==========================================================================

A request that shows the marks of two shapes is refused (400) with the reason. An unwrapped push
without write-metadata shows none: it is read as a wrapped envelope and, when its body is not one,
refused — it carries no attributes, so no signature — unless the caller allows bare pushes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import orjson

from homing.errors import MalformedPush
from homing.ingress.cloudevents import is_structured, parse_cloudevent
from homing.ingress.cloudtasks import PREFIX as CLOUDTASKS_PREFIX
from homing.ingress.cloudtasks import parse_cloudtasks
from homing.ingress.message import PushMessage
from homing.ingress.unwrapped import check_bounds, parse_bare, parse_unwrapped
from homing.ingress.wrapped import build_push, parse_push

__all__ = ["SHAPES", "PushMessage", "Shape", "as_wrapped", "detect_shape", "read_push", "recognise"]

Shape = Literal["wrapped", "unwrapped", "cloudevents", "cloudtasks"]
#: Every shape, in the order they are described above.
SHAPES: tuple[Shape, ...] = ("wrapped", "unwrapped", "cloudevents", "cloudtasks")

#: More headers than any push carries (100 attributes and the transport's own): refused unread.
MAX_HEADERS = 200


def detect_shape(headers: Mapping[str, str]) -> Shape:
    """The shape a request's headers (lower-case names) announce; refuses mixed marks."""
    binary = structured = unwrapped = tasks = False
    for name in headers:
        if name.startswith("ce-"):
            binary = True
        elif name.startswith("x-goog-pubsub-"):
            unwrapped = True
        elif name.startswith(CLOUDTASKS_PREFIX):
            tasks = True
    structured = is_structured(headers.get("content-type"))
    marks = [
        what
        for what, present in (
            ("ce-* headers (a binary-mode CloudEvent)", binary),
            ("an application/cloudevents+json body (a structured CloudEvent)", structured),
            ("x-goog-pubsub-* headers (an unwrapped push)", unwrapped),
            ("x-cloudtasks-* headers (a Cloud Tasks request)", tasks),
        )
        if present
    ]
    if len(marks) > 1:
        raise MalformedPush("the request mixes push shapes: " + " and ".join(marks))
    if binary or structured:
        return "cloudevents"
    if tasks:
        return "cloudtasks"
    return "unwrapped" if unwrapped else "wrapped"


def recognise(headers: Mapping[str, str] | None, shapes: tuple[Shape, ...] = SHAPES) -> Shape:
    """The request's shape, from its headers alone; raise :class:`MalformedPush`.

    Refuses, before the body is read: more headers than any push carries, the marks of two
    shapes, a shape not in ``shapes``, and attribute headers beyond Pub/Sub's bounds.

    Args:
        headers: the request's headers, names in lower case, values as ASGI servers give them
            (bytes read as latin-1); ``None`` stands for a wrapped push.
        shapes: the shapes accepted.
    """
    if headers is None:
        if "wrapped" in shapes:  # the common case, first
            return "wrapped"
        shape: Shape = "wrapped"
    else:
        if len(headers) > MAX_HEADERS:
            raise MalformedPush(f"the request has more than {MAX_HEADERS} headers")
        shape = detect_shape(headers)
    if shape not in shapes:
        raise MalformedPush(
            f"this endpoint accepts {', '.join(shapes)} pushes; the request is {shape}"
        )
    if shape == "unwrapped" and headers is not None:
        check_bounds(headers)
    return shape


def read_push(
    shape: Shape,
    body: bytes,
    headers: Mapping[str, str] | None,
    shapes: tuple[Shape, ...] = SHAPES,
    allow_bare: bool = False,
) -> tuple[Shape, PushMessage]:
    """Read the message of a request of ``shape`` (see :func:`recognise`).

    A body that is not a wrapped envelope, in a request with no marks of another shape, may be
    an unwrapped push without write-metadata: with ``allow_bare`` (and ``"unwrapped"`` in
    ``shapes``) it is read as one — no attributes, its SHA-256 as message id — and otherwise
    refused saying so. Returns the shape read and the message.
    """
    if shape != "wrapped":  # (the common case tested first: it is every push's path)
        if shape == "cloudevents":
            return shape, parse_cloudevent(body, headers or {})
        if shape == "unwrapped":
            return shape, parse_unwrapped(body, headers or {})
        return shape, parse_cloudtasks(body, headers or {})
    try:
        return shape, parse_push(body)
    except MalformedPush as exc:
        if "unwrapped" not in shapes or _has_envelope(body):
            raise
        if allow_bare:
            return "unwrapped", parse_bare(body)
        raise MalformedPush(
            f"{exc.detail}; if this is an unwrapped push (noWrapper), turn on write-metadata: "
            "without it the message arrives with no attributes, so no signature, event type "
            "or message id"
        ) from None


def _has_envelope(body: bytes) -> bool:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return type(value) is dict and "message" in value


def as_wrapped(push: PushMessage) -> bytes:
    """``push`` as a wrapped envelope: what the quarantine keeps, whatever shape it came in."""
    return build_push(
        push.data,
        push.attributes,
        message_id=push.message_id,
        subscription=push.subscription or "",
        ordering_key=push.ordering_key,
        delivery_attempt=push.delivery_attempt,
        publish_time=push.publish_time,
    )
