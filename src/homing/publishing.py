"""From an event to a signed message: serialise, let the hooks add attributes, sign.

:meth:`homing.Homing.sign` and :meth:`~homing.Homing.publish` go through :func:`sign_event`;
:meth:`homing.hooks.Hooks.publish` then times the publish for the hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from pydantic import BaseModel

from homing.events import encode_event
from homing.hooks import Hooks, PublishContext
from homing.publishers.base import OutgoingMessage
from homing.signing import EVENT_ID, Signer


def sign_event(
    signer: Signer,
    type_name: str,
    event: BaseModel,
    hooks: Hooks,
    context: PublishContext | None,
    *,
    event_id: str | None = None,
    attributes: Mapping[str, str] | None = None,
    ordering_key: str | None = None,
    deliver_at: datetime | None = None,
) -> OutgoingMessage:
    """``event`` (registered as ``type_name``) as a message signed by ``signer``.

    With hooks, ``before_sign`` runs on ``context`` (made here when not given) and what it adds
    to ``context.attributes`` is signed with the rest.

    Raises :class:`~homing.errors.InvalidEvent` when the event does not serialise or breaks
    Pub/Sub's limits.
    """
    data = encode_event(event)
    if hooks:
        context = context or PublishContext(type_name)
        hooks.call("before_sign", context)
    added = context.attributes if context is not None else None
    signed = signer.sign(
        data, type_name, event_id=event_id, attributes=attributes, context=added or None
    )
    return OutgoingMessage(
        data=data,
        attributes=signed,
        event_type=type_name,
        event_id=signed[EVENT_ID],
        ordering_key=ordering_key,
        deliver_at=deliver_at,
    )
