"""Handlers and their outcomes: done (return), retry (:class:`Retry`), drop (:class:`Drop`).

A handler is ``async def handler(event)`` or ``async def handler(event, delivery)``. Returning
means done: the push is acknowledged and the event id is remembered, so a redelivery runs
nothing. Raising :class:`Retry` answers non-2xx and Pub/Sub redelivers. Raising :class:`Drop`
acknowledges the push and keeps the raw envelope in the quarantine store for a person to inspect.
Any other exception is a retry too, logged with its traceback.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from homing.errors import ConfigurationError, EventRegistrationError
from homing.stores.base import DedupeStore


class Retry(Exception):
    """Raise from a handler to have the message redelivered later."""


class Drop(Exception):
    """Raise from a handler to acknowledge the message and keep it in quarantine."""


@dataclass(slots=True, kw_only=True)
class Delivery:
    """What a handler may want to know about the push that carried its event."""

    event_id: str
    event_type: str
    message_id: str
    attributes: Mapping[str, str]
    subscription: str | None
    publish_time: str | None
    delivery_attempt: int | None
    scheme: Literal["v1", "legacy", "unsigned"]
    dedupe: DedupeStore | None = field(default=None, repr=False)
    marked_done: bool = field(default=False, repr=False)

    async def mark_done(self, transaction: Any) -> None:
        """Mark this event handled inside your own database transaction, beside its effect.

        Then the effect and the "done" mark commit together or not at all: a crash between
        them can neither lose the mark (a redelivery would repeat the effect) nor keep it
        without the effect. Needs the SQL dedupe store on the same database::

            async with sessions.begin() as session:
                session.add(Notification(...))
                await delivery.mark_done(session)
        """
        if self.dedupe is None:
            raise ConfigurationError("this delivery has no dedupe store")
        await self.dedupe.done_in(transaction, self.event_id)
        self.marked_done = True


Handler = Callable[..., Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Bound:
    handler: Handler
    wants_delivery: bool

    async def __call__(self, event: BaseModel, delivery: Delivery) -> None:
        if self.wants_delivery:
            await self.handler(event, delivery)
        else:
            await self.handler(event)


class HandlerTable:
    """One handler per event type name."""

    def __init__(self) -> None:
        self._handlers: dict[str, _Bound] = {}

    def add(self, type_name: str, handler: Handler) -> None:
        if type_name in self._handlers:
            raise EventRegistrationError(f"event type {type_name!r} already has a handler")
        call = getattr(handler, "__call__", None)  # noqa: B004 - async callable objects count
        if not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)):
            raise EventRegistrationError(f"the handler for {type_name!r} must be an async function")
        params = [
            p
            for p in inspect.signature(handler).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if not 1 <= len(params) <= 2:
            raise EventRegistrationError(
                f"the handler for {type_name!r} must take (event) or (event, delivery)"
            )
        self._handlers[type_name] = _Bound(handler, wants_delivery=len(params) == 2)

    def get(self, type_name: str) -> _Bound | None:
        return self._handlers.get(type_name)

    def __contains__(self, type_name: Any) -> bool:
        return type_name in self._handlers
