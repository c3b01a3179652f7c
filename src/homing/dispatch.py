"""Handlers and their outcomes: done (return), retry (:class:`Retry`), drop (:class:`Drop`).

A handler is ``async def handler(event)`` or ``async def handler(event, delivery)``. Returning
means done: the push is acknowledged and the event id is remembered, so a redelivery runs
nothing. Raising :class:`Retry` answers non-2xx and Pub/Sub redelivers. Raising :class:`Drop`
acknowledges the push and keeps the raw envelope in the quarantine store for a person to inspect.
Any other exception is a retry too, logged with its traceback.

Each handler says where its effects go (``effects=``), which decides how a redelivery is kept
from repeating them:

- ``"external"`` (the default, safe for anything): the handler runs under a *claim* on the
  event id, a short lease renewed while it runs; the event is marked done after it returns.
  For effects outside the database (an e-mail, an HTTP call). Two commits per event.
- ``"database"``: the handler's effects are all writes to the database homing's dedupe store
  uses. homing opens one transaction, marks the event done as its first statement, hands it to
  the handler as ``delivery.session`` and commits once: the effect and the mark commit together
  or not at all, and of two racing deliveries the second finds the mark and is a duplicate.
  One commit per event, nothing held between deliveries.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel

from homing.errors import ConfigurationError, EventRegistrationError
from homing.ingress.message import TaskAttempt
from homing.stores.base import DedupeStore, Transaction

Effects = Literal["external", "database"]


class Retry(Exception):
    """Raise from a handler to have the message redelivered later."""


class Drop(Exception):
    """Raise from a handler to acknowledge the message and keep it in quarantine."""


@dataclass(slots=True, kw_only=True)
class Delivery:
    """What a handler may want to know about the push that carried its event.

    ``task`` is a Cloud Tasks request's attempt (queue, task, retry and execution counts,
    schedule time, previous response), and ``last_attempt`` says whether a failure now is final
    (``Homing(max_delivery_attempts=...)``: the subscription's dead-letter limit, or the queue's
    ``max_attempts``); both are known only where the push token verified.
    """

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
    transaction: Transaction | None = field(default=None, repr=False)
    task: TaskAttempt | None = None
    last_attempt: bool = False

    @property
    def attempt(self) -> int | None:
        """This delivery's attempt number, from 1 (Pub/Sub's ``deliveryAttempt``, or Cloud
        Tasks' retry count plus one); ``None`` when the transport does not say."""
        return self.delivery_attempt

    @property
    def queue(self) -> str | None:
        """The Cloud Tasks queue (its id) that delivered this event, if one did."""
        return None if self.task is None else self.task.queue

    @property
    def session(self) -> Any:
        """``effects="database"`` handlers: an ``AsyncSession`` in homing's open transaction.

        The event is marked done in that transaction already; write the effect through it and
        return (homing flushes and commits), or raise to roll both back. Don't commit or roll
        it back yourself.
        """
        if self.transaction is None:
            raise ConfigurationError("delivery.session is for effects='database' handlers")
        return self.transaction.session

    @property
    def connection(self) -> Any:
        """``effects="database"`` handlers: the ``AsyncConnection`` of homing's transaction.

        For Core statements; cheaper than :attr:`session` when no ORM is needed.
        """
        if self.transaction is None:
            raise ConfigurationError("delivery.connection is for effects='database' handlers")
        return self.transaction.connection

    async def mark_done(self, transaction: Any) -> None:
        """Mark this event handled inside your own database transaction, beside its effect.

        For ``effects="external"`` handlers that also write to the database: the effect and the
        "done" mark commit together or not at all. Needs the SQL dedupe store on the same
        database::

            async with sessions.begin() as session:
                session.add(Notification(...))
                await delivery.mark_done(session)

        ``effects="database"`` handlers need not call it: :attr:`session` is marked already.
        """
        if self.transaction is not None:
            if transaction is not self.session and transaction is not self.connection:
                raise ConfigurationError(
                    "an effects='database' handler writes through delivery.session, which is "
                    "marked done already; another transaction cannot be marked"
                )
            return
        if self.dedupe is None:
            raise ConfigurationError("this delivery has no dedupe store")
        await self.dedupe.done_in(transaction, self.event_id)
        self.marked_done = True


Handler = Callable[..., Awaitable[None]]


@dataclass(frozen=True, slots=True)
class BoundHandler:
    handler: Handler
    wants_delivery: bool
    effects: Effects = "external"

    async def __call__(self, event: BaseModel, delivery: Delivery) -> None:
        if self.wants_delivery:
            await self.handler(event, delivery)
        else:
            await self.handler(event)


class HandlerTable:
    """One handler per event type name."""

    def __init__(self) -> None:
        self._handlers: dict[str, BoundHandler] = {}

    def add(self, type_name: str, handler: Handler, *, effects: Effects = "external") -> None:
        if effects not in get_args(Effects):
            raise EventRegistrationError(
                f"effects must be 'external' or 'database', not {effects!r} ({type_name!r})"
            )
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
        self._handlers[type_name] = BoundHandler(handler, len(params) == 2, effects)

    def get(self, type_name: str) -> BoundHandler | None:
        return self._handlers.get(type_name)

    def __contains__(self, type_name: Any) -> bool:
        return type_name in self._handlers
