"""Middleware for the publish and push pipelines: named points, one context object per piece of
work, for telemetry and the like to attach to.

A :class:`Hook` overrides the points it needs; the others cost nothing (they are not called).
``Homing(hooks=[...])`` (or ``homing.hooks.append``/``insert``) sets the order: the points that
open a piece of work run in that order, the ones that close it in reverse, so the first hook
wraps all the others (dramatiq's middleware, ASGI middleware)::

    publish:  before_sign -> (sign) -> (publisher) -> after_publish
    push:     on_push_received -> (shape, authenticate) -> on_authenticated
              -> (dispatch, dedupe, decode) -> before_handlers -> (handlers) -> on_push_handled

Every point of one push receives the same :class:`PushContext`, and every point of one publish
the same :class:`PublishContext`: a hook keeps what it needs between points in
``context.state[self]``, with no context variable. ``on_push_received`` and ``on_push_handled``
are called once for every push, refused ones included; ``on_authenticated`` only for a push
whose credentials held; ``before_handlers`` only when a handler is about to run (not for a
duplicate, a refused or a quarantined push).

Hooks run on every push: they must be quick. An exception from a hook is logged and ignored,
never allowed to fail a push or a publish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from homing.ingress import PushMessage
    from homing.outcome import PushResult
    from homing.publishers.base import OutgoingMessage, Publisher
    from homing.signing import VerifiedMessage

logger = logging.getLogger("homing")


class PushContext:
    """One push on its way through the pipeline: what is known of it so far.

    Attributes:
        received: when it arrived (:func:`time.perf_counter`).
        push: the parsed push, once its credentials held (else ``None``).
        verified: what its signature vouches for, once it held (else ``None``).
        result: the answer, at ``on_push_handled``.
        state: each hook's own state for this push, under the hook as key.
    """

    __slots__ = ("push", "received", "result", "state", "verified")

    def __init__(self) -> None:
        self.received = time.perf_counter()
        self.push: PushMessage | None = None
        self.verified: VerifiedMessage | None = None
        self.result: PushResult | None = None
        self.state: dict[object, Any] = {}


class PublishContext:
    """One publish: the event type, the attributes hooks add before signing, then the message,
    how long the publisher took and whether it failed.

    Attributes:
        event_type: the type being published.
        attributes: ``before_sign`` adds attributes here (names start with ``homing-``); they
            are signed with the rest.
        message: the signed message (from ``after_publish`` on).
        seconds: how long the publisher took (at ``after_publish``).
        error: the publisher's exception, or ``None`` when the broker took the message.
        state: each hook's own state for this publish, under the hook as key.
    """

    __slots__ = ("attributes", "error", "event_type", "message", "seconds", "state")

    def __init__(self, event_type: str, message: OutgoingMessage | None = None) -> None:
        self.event_type = event_type
        self.attributes: dict[str, str] = {}
        self.message = message
        self.seconds = 0.0
        self.error: BaseException | None = None
        self.state: dict[object, Any] = {}


class Hook:
    """Base class: one no-op method per point (dramatiq's middleware shape)."""

    def before_sign(self, context: PublishContext) -> None:
        """An event is about to be signed: add attributes to ``context.attributes``.

        Used to carry the publishing request's trace context.
        """

    def after_publish(self, context: PublishContext) -> None:
        """A publish finished: accepted by the broker (``context.error is None``) or failed."""

    def on_push_received(self, context: PushContext) -> None:
        """A push request arrived; nothing about it is known or trusted yet."""

    def on_authenticated(self, context: PushContext) -> None:
        """The push's credentials held: ``context.push`` and ``context.verified`` are set."""

    def before_handlers(self, context: PushContext) -> None:
        """The event is new and decoded: its handlers run next."""

    def on_push_handled(self, context: PushContext) -> None:
        """The push's answer (``context.result``) is final; called once per push."""


#: The points that close a piece of work: called in reverse order.
_CLOSING = frozenset({"after_publish", "on_push_handled"})
_POINTS = (
    "before_sign",
    "after_publish",
    "on_push_received",
    "on_authenticated",
    "before_handlers",
    "on_push_handled",
)


class Hooks:
    """The ordered hooks of one pipeline; calls each point on the hooks that define it.

    Behaves as a list for ``append``, ``insert``, ``remove``, iteration and ``len``; a hook's
    position sets its order.
    """

    __slots__ = ("_hooks", "_points")

    def __init__(self, hooks: Iterable[Hook] = ()) -> None:
        self._hooks: list[Hook] = []
        self._points: dict[str, tuple[tuple[Hook, Any], ...]] = {}
        for hook in hooks:
            self.append(hook)

    def append(self, hook: Hook) -> None:
        """Add ``hook`` last: it opens each piece of work last and closes it first."""
        self.insert(len(self._hooks), hook)

    def insert(self, index: int, hook: Hook) -> None:
        """Add ``hook`` at ``index`` (0: it wraps every other hook)."""
        if not isinstance(hook, Hook):
            raise TypeError(f"a hook must subclass homing.Hook, not {type(hook).__name__}")
        self._hooks.insert(index, hook)
        self._index()

    def remove(self, hook: Hook) -> None:
        self._hooks.remove(hook)
        self._index()

    def __iter__(self) -> Iterator[Hook]:
        return iter(self._hooks)

    def __len__(self) -> int:
        return len(self._hooks)

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def __repr__(self) -> str:
        return f"Hooks({self._hooks!r})"

    def _index(self) -> None:
        points: dict[str, tuple[tuple[Hook, Any], ...]] = {}
        for point in _POINTS:
            ordered = reversed(self._hooks) if point in _CLOSING else iter(self._hooks)
            base = getattr(Hook, point)
            points[point] = tuple(
                (hook, getattr(hook, point))
                for hook in ordered
                if getattr(type(hook), point) is not base  # not overridden: never called
            )
        self._points = points

    def call(self, point: str, context: PushContext | PublishContext) -> None:
        """Call ``point`` on every hook that defines it, in order; a failure is logged."""
        for hook, method in self._points[point]:
            try:
                method(context)
            except Exception:
                # Telemetry failing must never fail a push or a publish.
                logger.exception("hook %s.%s failed", type(hook).__name__, point)

    async def publish(
        self, publisher: Publisher, message: OutgoingMessage, context: PublishContext | None = None
    ) -> None:
        """Publish ``message``, timed and told to ``after_publish`` (``publish`` and the outbox
        alike); the publisher's exception is raised after the hooks have seen it."""
        if not self._points.get("after_publish"):
            await publisher.publish(message)
            return
        if context is None:
            context = PublishContext(message.event_type)
        context.message = message
        started = time.perf_counter()
        try:
            await publisher.publish(message)
        except BaseException as exc:
            context.seconds, context.error = time.perf_counter() - started, exc
            self.call("after_publish", context)
            raise
        context.seconds = time.perf_counter() - started
        self.call("after_publish", context)
