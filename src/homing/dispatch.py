"""Handlers and their outcomes: done (return), retry (:class:`Retry`), drop (:class:`Drop`).

A handler is ``async def handler(event)`` or ``async def handler(event, delivery)``; a plain
``def`` runs in a worker thread, under the same guarantees. Returning
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

An event type may have several handlers. Each is exactly-once on its own: a redelivery runs only
those not yet done. The first handler registered for a type is remembered under the event id
(so adding a second handler later keeps the first one's marks); each other one under
``<event id>/<handler name>``.
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel

from homing.errors import ConfigurationError, EventRegistrationError
from homing.events import EventRegistry
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
    #: The handler's own dedupe key (the event id for a type's first handler).
    key: str = field(default="", repr=False)
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
        await self.dedupe.done_in(transaction, self.key or self.event_id)
        self.marked_done = True


Handler = Callable[..., Any]

#: A handler's name, as its dedupe key carries it: letters, digits, ``._-:``.
_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:")
_MAX_NAME = 120


@dataclass(frozen=True, slots=True)
class BoundHandler:
    """One registered handler: how to call it and under which key it is remembered."""

    handler: Handler
    wants_delivery: bool
    effects: Effects = "external"
    name: str = ""
    #: ``""`` for a type's first handler (its key is the event id), ``"/<name>"`` otherwise.
    suffix: str = ""
    threaded: bool = False

    def key(self, event_id: str) -> str:
        return event_id + self.suffix if self.suffix else event_id

    async def __call__(self, event: BaseModel, delivery: Delivery) -> None:
        args = (event, delivery) if self.wants_delivery else (event,)
        if self.threaded:
            await asyncio.to_thread(self.handler, *args)  # the context (trace) goes along
        else:
            await self.handler(*args)

    def call_here(self, event: BaseModel, delivery: Delivery) -> None:
        """Call a plain ``def`` handler on this thread (a store's transaction thread)."""
        self.handler(*((event, delivery) if self.wants_delivery else (event,)))


def is_async(function: Any) -> bool:
    """``async def`` functions, and objects whose ``__call__`` is one."""
    call = getattr(function, "__call__", None)  # noqa: B004 - async callable objects count
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(call)


def handler_name(function: Any) -> str:
    """The default name of a handler: its module and qualified name, spelt as a name may be."""
    module = getattr(function, "__module__", None) or "main"
    qualname = getattr(function, "__qualname__", None) or type(function).__qualname__
    name = "".join(c if c in _NAME_CHARACTERS else "_" for c in f"{module}.{qualname}")
    return name[-_MAX_NAME:]


def model_from_annotation(function: Any) -> type[BaseModel]:
    """The pydantic model a handler's first parameter is annotated with.

    Raises :class:`~homing.errors.EventRegistrationError` when there is none.
    """
    target = function if inspect.isfunction(function) or inspect.ismethod(function) else None
    target = target or getattr(function, "__call__", function)  # noqa: B004
    try:
        hints = typing.get_type_hints(target)
    except Exception as exc:  # an annotation that does not resolve (a forward reference)
        raise EventRegistrationError(
            f"the annotations of {handler_name(function)} do not resolve ({exc}); name the "
            "model in the decorator: @homing.handler(Model)"
        ) from exc
    params = _positional(function)
    annotation = hints.get(params[0].name) if params else None
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        raise EventRegistrationError(
            f"{handler_name(function)} names no model: annotate its first parameter with the "
            "event's model, or name it in the decorator: @homing.handler(Model)"
        )
    return annotation


def _positional(function: Any) -> list[inspect.Parameter]:
    return [
        p
        for p in inspect.signature(function).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


class HandlerTable:
    """The handlers of each event type name, in the order they were registered."""

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[BoundHandler, ...]] = {}

    def add(
        self,
        type_name: str,
        handler: Handler,
        *,
        effects: Effects = "external",
        name: str | None = None,
        threaded_transactions: bool = False,
    ) -> BoundHandler:
        if effects not in get_args(Effects):
            raise EventRegistrationError(
                f"effects must be 'external' or 'database', not {effects!r} ({type_name!r})"
            )
        if not callable(handler):
            raise EventRegistrationError(f"the handler for {type_name!r} must be a function")
        threaded = not is_async(handler)
        if threaded and effects == "database" and not threaded_transactions:
            raise EventRegistrationError(
                f"the effects='database' handler {handler_name(handler)} of {type_name!r} must "
                "be async: delivery.session is an AsyncSession, which a thread cannot use (a "
                "plain def is for DjangoDedupeStore, whose transactions run on a thread)"
            )
        params = _positional(handler)
        if not 1 <= len(params) <= 2:
            raise EventRegistrationError(
                f"the handler for {type_name!r} must take (event) or (event, delivery)"
            )
        name = handler_name(handler) if name is None else name
        if not name or len(name) > _MAX_NAME or not set(name) <= _NAME_CHARACTERS:
            raise EventRegistrationError(
                f"handler name {name!r} ({type_name!r}) must be 1-{_MAX_NAME} letters, digits "
                "or ._-: (it is part of the handler's dedupe key)"
            )
        existing = self._handlers.get(type_name, ())
        for other in existing:
            if other.name == name:
                raise EventRegistrationError(
                    f"event type {type_name!r} already has a handler named {name!r}; give "
                    "this one another with name="
                )
        bound = BoundHandler(
            handler,
            len(params) == 2,
            effects,
            name,
            f"/{name}" if existing else "",
            threaded,
        )
        self._handlers[type_name] = (*existing, bound)
        return bound

    def decorator(
        self,
        events: EventRegistry,
        model: type[BaseModel] | Handler | None,
        effects: Effects,
        name: str | None,
        *,
        plain_store: str | None,
        threaded_transactions: bool = False,
    ) -> Any:
        """``Homing.handler``'s decorator (or, used bare, its result).

        ``plain_store`` names the dedupe store when it cannot hold ``effects="database"``
        transactions; ``threaded_transactions`` says it can run them on a thread, so a plain
        ``def`` handler may have ``effects="database"``.
        """

        def check(chosen: type[BaseModel]) -> str:
            type_name = events.type_name(chosen)
            if effects == "database" and plain_store is not None:
                raise ConfigurationError(
                    f"effects='database' (handler of {type_name!r}) needs a dedupe store on "
                    f"the handler's database (SQLDedupeStore), not {plain_store}"
                )
            return type_name

        def bind(function: Handler) -> Handler:
            chosen = model if isinstance(model, type) else model_from_annotation(function)
            self.add(
                check(chosen),
                function,
                effects=effects,
                name=name,
                threaded_transactions=threaded_transactions,
            )
            return function

        if isinstance(model, type):
            check(model)  # a mistake surfaces where the decorator is written
        elif model is not None:
            return bind(model)  # used bare: @homing.handler
        return bind

    def get(self, type_name: str) -> tuple[BoundHandler, ...]:
        """The handlers of ``type_name``, first registered first; empty when it has none."""
        return self._handlers.get(type_name, ())

    def __contains__(self, type_name: Any) -> bool:
        return type_name in self._handlers
