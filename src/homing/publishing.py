"""The publishing side of a service: from an event to a signed message, and to its transport.

:class:`Publishing` is the half of :class:`homing.Homing` that an API uses (the push side is
:class:`homing.pipeline.PushPipeline`). :meth:`~Publishing.sign` and
:meth:`~Publishing.publish` go through :func:`sign_event` (serialise, let the hooks add
attributes, sign); :meth:`homing.hooks.Hooks.publish` then times the publish for the hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from pydantic import BaseModel

from homing.errors import ConfigurationError
from homing.events import EventRegistry, encode_event
from homing.hooks import Hooks, PublishContext
from homing.publishers.base import OutgoingMessage, Publisher
from homing.publishers.routing import Transports
from homing.scheduling import deliver_at
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


class Publishing:
    """Sign events of a registry and publish each on its event type's transport.

    A base of :class:`homing.Homing`, which sets the four attributes below.
    """

    signer: Signer | None
    hooks: Hooks
    events: EventRegistry
    #: Each event type's publisher: :attr:`publisher` and the named ``transports``.
    transports: Transports

    @property
    def publisher(self) -> Publisher | None:
        """The default publisher (of event types declared with no ``transport``)."""
        return self.transports.default

    @publisher.setter
    def publisher(self, publisher: Publisher | None) -> None:
        self.transports.default = publisher

    def sign(
        self,
        event: BaseModel,
        *,
        event_id: str | None = None,
        attributes: Mapping[str, str] | None = None,
        ordering_key: str | None = None,
        delay: timedelta | None = None,
        at: datetime | None = None,
    ) -> OutgoingMessage:
        """Serialise and sign ``event`` into a message ready for any publisher.

        ``delay`` or ``at`` schedule its delivery (see :meth:`publish`); they are checked
        against its transport here, so an outbox never stages what cannot be delivered.
        """
        when = deliver_at(delay=delay, at=at)
        type_name = self.events.type_name(event)
        return self._sign(event, type_name, event_id, attributes, ordering_key, when, None)

    async def publish(
        self,
        event: BaseModel,
        *,
        event_id: str | None = None,
        attributes: Mapping[str, str] | None = None,
        ordering_key: str | None = None,
        delay: timedelta | None = None,
        at: datetime | None = None,
    ) -> str:
        """Sign ``event`` and publish it; returns its event id once the broker has it.

        ``delay=timedelta(...)`` or ``at=datetime`` (timezone-aware) has it delivered no
        earlier than then, on a transport that can delay (Cloud Tasks: up to 30 days).

        Raises:
            InvalidDelay: a negative or too long delay, or one its transport cannot keep.
            PublishFailed: the broker did not take it.
        """
        type_name = self.events.type_name(event)
        publisher = self.transports.publisher_for(type_name)
        context = PublishContext(type_name) if self.hooks else None
        when = deliver_at(delay=delay, at=at)
        message = self._sign(event, type_name, event_id, attributes, ordering_key, when, context)
        await self.hooks.publish(publisher, message, context)  # timed, for the hooks
        return message.event_id

    def _sign(
        self,
        event: BaseModel,
        type_name: str,
        event_id: str | None,
        attributes: Mapping[str, str] | None,
        ordering_key: str | None,
        when: datetime | None,
        context: PublishContext | None,
    ) -> OutgoingMessage:
        if self.signer is None:
            raise ConfigurationError("signing needs a signer (signing keys)")
        if when is not None:
            self.transports.check_delay(when, type_name)
        return sign_event(
            self.signer,
            type_name,
            event,
            self.hooks,
            context,
            event_id=event_id,
            attributes=attributes,
            ordering_key=ordering_key,
            deliver_at=when,
        )
