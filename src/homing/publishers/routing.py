"""Which publisher carries which event type: a default one, and named transports beside it.

An event type is bound to a transport once, where it is declared
(``@homing.event("user.welcome.followup", transport="tasks")``); the transports are given to
:class:`~homing.Homing` by name (``transports={"tasks": CloudTasksPublisher(...)}``) or by
:meth:`~homing.Homing.from_env`. Every other event type goes to the default publisher.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime

from homing.errors import ConfigurationError, EventRegistrationError
from homing.publishers.base import OutgoingMessage, Publisher

#: The default publisher's name, for messages and for ``transport=`` (the same as none).
DEFAULT = "default"


class Transports(Publisher):
    """A publisher that hands each message to its event type's transport.

    A local default publisher (memory, loopback) stands in for every transport that has no
    publisher of its own, so tests and development need no Cloud Tasks queue; a production
    default (Pub/Sub) does not: publishing an event whose transport is missing is a
    :class:`~homing.errors.ConfigurationError`.

    Args:
        default: the publisher of event types bound to no transport.
        named: the other transports, by name.
    """

    def __init__(
        self, default: Publisher | None, named: Mapping[str, Publisher] | None = None
    ) -> None:
        named = dict(named or {})
        if DEFAULT in named:
            raise ConfigurationError(f"transport name {DEFAULT!r} is the default publisher's")
        self.default = default
        self.named = named
        self._routes: dict[str, str] = {}

    @property
    def local(self) -> bool:  # type: ignore[override]
        return all(p.local for p in self._publishers())

    def route(self, event_type: str, transport: str | None) -> None:
        """Bind ``event_type`` to ``transport`` (``None`` or ``"default"``: the default)."""
        if transport is None or transport == DEFAULT:
            self._routes.pop(event_type, None)
            return
        if not isinstance(transport, str) or not transport:
            raise EventRegistrationError(f"event type {event_type!r}: transport must be a name")
        self._routes[event_type] = transport

    def transport_of(self, event_type: str) -> str:
        """The name of the transport ``event_type`` is bound to."""
        return self._routes.get(event_type, DEFAULT)

    def publisher_for(self, event_type: str) -> Publisher:
        """The publisher that carries ``event_type``."""
        name = self._routes.get(event_type)
        if name is not None:
            publisher = self.named.get(name)
            if publisher is not None:
                return publisher
            if self.default is not None and self.default.local:
                return self.default
            raise ConfigurationError(
                f"event type {event_type!r} is bound to transport {name!r}, and this service "
                f"has no publisher for it: Homing(transports={{{name!r}: ...}})"
                + (" or HOMING_TASKS_QUEUE" if name == "tasks" else "")
            )
        if self.default is None:
            raise ConfigurationError("publishing needs a publisher: Homing(publisher=...)")
        return self.default

    def check_delay(self, when: datetime, event_type: str | None = None) -> None:
        """Refuse ``when`` unless ``event_type``'s transport can deliver then."""
        if event_type is None:
            raise ConfigurationError("a routed delay check needs the event type")
        self.publisher_for(event_type).check_delay(when)

    async def publish(self, message: OutgoingMessage) -> str:
        return await self.publisher_for(message.event_type).publish(message)

    async def _send(self, message: OutgoingMessage) -> str:  # pragma: no cover - publish routes
        return await self.publish(message)

    def _publishers(self) -> list[Publisher]:
        found = [] if self.default is None else [self.default]
        found += [p for p in self.named.values() if all(p is not q for q in found)]
        return found

    async def aclose(self) -> None:
        """Close every transport (the default publisher included)."""
        self._closed = True
        await asyncio.gather(*(p.aclose() for p in self._publishers()))
