"""``Homing``: events, handlers, a publisher and stores, wired into one object per service.

The push pipeline it serves lives in :mod:`homing.pipeline`; the adapters that serve it over
HTTP (:mod:`homing.asgi`, :mod:`homing.fastapi`, :mod:`homing.flask`) take a ``Homing``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from pydantic import BaseModel

from homing.dispatch import Effects, Handler, HandlerTable
from homing.errors import ConfigurationError
from homing.events import EventRegistry, encode_event
from homing.hooks import Hook
from homing.pipeline import DEFAULT_MAX_BODY_SIZE, AuthMode, PushPipeline, UnknownEvents
from homing.publishers.base import OutgoingMessage, Publisher
from homing.publishers.loopback import LoopbackPublisher
from homing.publishers.routing import Transports
from homing.scheduling import deliver_at
from homing.signing import EVENT_ID, Signer
from homing.stores.base import DedupeStore, QuarantineStore
from homing.stores.memory import MemoryDedupeStore, MemoryQuarantineStore

if TYPE_CHECKING:
    from homing.auth import OIDCVerifier

logger = logging.getLogger("homing")

M = TypeVar("M", bound=type[BaseModel])
H = TypeVar("H", bound=Handler)
Step = Callable[[], Awaitable[None]]


class Homing(PushPipeline):
    """One service's events: register models and handlers, publish, and serve the push endpoint.

    Args:
        signer: signs what :meth:`publish` sends and verifies every push (``auth="hmac"`` or
            ``"both"``).
        oidc: verifies the OIDC token Pub/Sub attaches to a push (``auth="oidc"`` or ``"both"``).
        publisher: where :meth:`publish` sends events; required to publish.
        transports: more publishers by name, for event types declared with
            ``@homing.event(..., transport=name)`` (e.g. ``{"tasks": CloudTasksPublisher(...)}``
            for delayed events); a local ``publisher`` stands in for any that is missing.
        dedupe: remembers handled event ids (in memory unless given).
        quarantine: keeps dropped envelopes (in memory unless given).
        auth: ``"hmac"`` (homing's signature), ``"oidc"`` (Google's push token), ``"both"``
            (production), or ``"none"`` to accept anything (development only; warns).
        unknown_events: an event type with no model or handler is ``"quarantine"``-d (acked
            and kept) or answered with ``"retry"`` (useful while a deploy rolls out).
        max_body_size: larger push bodies are refused with 413.
        lease: seconds an ``effects="external"`` handler's claim on an event id lasts unless
            renewed; it is renewed every third of it while the handler runs, so a handler in a
            process that died frees its event for redelivery within one lease.
        max_delivery_attempts: the subscription's dead-letter limit; when a push says it is the
            last attempt (``deliveryAttempt``) and the handler fails, the envelope is
            quarantined and acknowledged rather than left to Pub/Sub's dead-letter topic.
        hooks: called at the named points of publishing and of every push (see
            :mod:`homing.hooks`); telemetry attaches here.
        accept_legacy_without_oidc: accept the article's format (a signer with a legacy
            secret) under ``auth="hmac"``. It signs only the data: whoever holds one such
            message can send it again under another event type and message id, which stands in
            as its event id — so run a handler again, or take the id a real message will get
            and have that one acknowledged as a duplicate. With ``auth="both"`` the push token
            vouches for both, and this is not needed.

    Example::

        homing = Homing(signer=Signer(KeyRing.from_string(keys)), publisher=publisher)

        @homing.event("user.name.changed")
        class UserNameChanged(BaseModel):
            user_id: int

        @homing.handler(UserNameChanged)
        async def notify(event: UserNameChanged) -> None: ...
    """

    def __init__(
        self,
        *,
        signer: Signer | None,
        oidc: OIDCVerifier | None = None,
        publisher: Publisher | None = None,
        transports: Mapping[str, Publisher] | None = None,
        dedupe: DedupeStore | None = None,
        quarantine: QuarantineStore | None = None,
        auth: AuthMode = "hmac",
        unknown_events: UnknownEvents = "quarantine",
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        lease: float = 15.0,
        max_delivery_attempts: int | None = None,
        hooks: Sequence[Hook] = (),
        accept_legacy_without_oidc: bool = False,
    ) -> None:
        if auth not in ("hmac", "oidc", "both", "none"):
            raise ConfigurationError(f"auth must be 'hmac', 'oidc', 'both' or 'none', not {auth!r}")
        if auth in ("hmac", "both") and signer is None:
            raise ConfigurationError(f"auth={auth!r} needs a signer (signing keys)")
        if auth in ("oidc", "both") and oidc is None:
            raise ConfigurationError(
                f"auth={auth!r} needs an OIDC verifier (push audience and service accounts)"
            )
        if unknown_events not in ("quarantine", "retry"):
            raise ConfigurationError(
                f"unknown_events must be 'quarantine' or 'retry', not {unknown_events!r}"
            )
        if (
            auth == "hmac"
            and signer is not None
            and signer.accepts_legacy
            and not accept_legacy_without_oidc
        ):
            raise ConfigurationError(
                "the article's legacy format signs only the data, so under auth='hmac' anyone "
                "holding one legacy message may choose its event type and event id; use "
                "auth='both' (HOMING_AUTH=both), or accept the risk explicitly with "
                "accept_legacy_without_oidc=True (HOMING_LEGACY_WITHOUT_OIDC=true)"
            )
        if dedupe is None and (
            auth in ("oidc", "both") or (publisher is not None and not publisher.local)
        ):
            logger.warning(
                "the dedupe store is in memory (no dedupe= given) in a production-like setup "
                "(%s): handled event ids are forgotten on restart and are not shared between "
                "instances, so a redelivery may run a handler again; use SQLDedupeStore",
                f"auth={auth!r}" if auth in ("oidc", "both") else type(publisher).__name__,
            )
        if auth == "none":
            logger.warning(
                "push authentication is OFF (auth='none'): anyone who can reach the "
                "push endpoint can run handlers. Never use this outside development."
            )
        self.signer = signer
        self.oidc = oidc
        #: Each event type's publisher: :attr:`publisher` and the named ``transports``.
        self.transports = Transports(publisher, transports)
        self.dedupe = dedupe if dedupe is not None else MemoryDedupeStore()
        self.quarantine = quarantine if quarantine is not None else MemoryQuarantineStore()
        self.auth = auth
        self.unknown_events = unknown_events
        self.max_body_size = max_body_size
        self.lease = lease
        self.max_delivery_attempts = max_delivery_attempts
        #: Every push that reaches dispatch carried a verified OIDC token: the subscription's
        #: identity, the only thing that vouches for what Pub/Sub itself adds to a message.
        self._sender_verified = oidc is not None and auth in ("oidc", "both")
        self.events = EventRegistry()
        self.handlers = HandlerTable()
        self.hooks: list[Hook] = list(hooks)
        self._starting: list[Step] = []
        self._closing: list[Step] = []

    @property
    def publisher(self) -> Publisher | None:
        """The default publisher (of event types declared with no ``transport``)."""
        return self.transports.default

    @publisher.setter
    def publisher(self, publisher: Publisher | None) -> None:
        self.transports.default = publisher

    # -- registration -------------------------------------------------------------------------

    def event(self, type_name: str, *, transport: str | None = None) -> Callable[[M], M]:
        """Class decorator: bind a pydantic model to an event type name.

        ``transport`` names the publisher that carries it (one of ``Homing(transports=...)``;
        default: ``Homing(publisher=...)``), e.g. ``"tasks"`` for an event published with a
        delay.
        """
        self.transports.route(type_name, transport)
        return self.events.event(type_name)

    def handler(self, model: type[BaseModel], *, effects: Effects = "external") -> Callable[[H], H]:
        """Decorator: the async function that handles events of ``model``.

        ``effects`` says where the handler's effects go (:mod:`homing.dispatch`):
        ``"external"`` (default: anything, run under a renewed claim) or ``"database"`` (only
        writes through ``delivery.session``, committed once with the done mark; needs
        :class:`~homing.stores.sql.SQLDedupeStore`).
        """
        type_name = self.events.type_name(model)
        if effects == "database" and not self.dedupe.transactional:
            raise ConfigurationError(
                f"effects='database' (handler of {type_name!r}) needs a dedupe store on the "
                f"handler's database (SQLDedupeStore), not {type(self.dedupe).__name__}"
            )

        def bind(function: H) -> H:
            self.handlers.add(type_name, function, effects=effects)
            return function

        return bind

    # -- publishing ---------------------------------------------------------------------------

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
        if self.signer is None:
            raise ConfigurationError("signing needs a signer (signing keys)")
        type_name = self.events.type_name(event)
        when = deliver_at(delay=delay, at=at)
        if when is not None:
            self.transports.check_delay(when, type_name)
        data = encode_event(event)
        context = self._hook_context(type_name) if self.hooks else None
        signed = self.signer.sign(
            data, type_name, event_id=event_id, attributes=attributes, context=context
        )
        return OutgoingMessage(
            data=data,
            attributes=signed,
            event_type=type_name,
            event_id=signed[EVENT_ID],
            ordering_key=ordering_key,
            deliver_at=when,
        )

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
        publisher = self.transports.publisher_for(self.events.type_name(event))
        message = self.sign(
            event,
            event_id=event_id,
            attributes=attributes,
            ordering_key=ordering_key,
            delay=delay,
            at=at,
        )
        if not self.hooks:
            await publisher.publish(message)
            return message.event_id
        started = time.perf_counter()
        try:
            await publisher.publish(message)
        except BaseException as exc:
            self.published(message, time.perf_counter() - started, exc)
            raise
        self.published(message, time.perf_counter() - started, None)
        return message.event_id

    # -- hooks -------------------------------------------------------------------------------

    def published(
        self, message: OutgoingMessage, seconds: float, error: BaseException | None
    ) -> None:
        """Tell the hooks a publish finished (for publishing paths outside :meth:`publish`,
        such as the outbox)."""
        self._hook("after_publish", message, seconds, error)

    def _hook_context(self, event_type: str) -> dict[str, str] | None:
        context: dict[str, str] = {}
        for hook in self.hooks:
            try:
                added = hook.before_sign(event_type)
            except Exception:
                logger.exception("hook %s.before_sign failed", type(hook).__name__)
                continue
            if added:
                context.update(added)
        return context or None

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """A ``Homing`` configured from ``HOMING_*``, ``PORT`` and ``DATABASE_URL``.

        The signer (``HOMING_SIGNING_KEYS``; a development key, said so, when the publisher
        is local), the publisher (``HOMING_PUBLISHER``: loopback to this service, memory, or
        Pub/Sub, the emulator's too), the push token (``HOMING_AUTH``), and the SQL stores on
        ``DATABASE_URL`` (their tables made at start-up) — see :mod:`homing.wiring`. Keyword
        arguments replace what the environment chose. A mistake is one
        :class:`~homing.errors.ConfigurationError` naming the variable.

        Example::

            homing = Homing.from_env()
        """
        from homing import wiring  # the settings and every backend: only when asked for

        chosen, starting, closing = wiring.options(environ)
        homing = cls(**(chosen | overrides))
        homing._starting += starting
        homing._closing += closing
        return homing

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Any = None) -> AsyncIterator[None]:
        """An ASGI lifespan that starts what needs starting, and at shutdown closes the
        publisher and stores."""
        async with self:
            yield

    async def start(self) -> None:
        """Make what the wiring needs (the SQL stores' tables); deliver what a loopback
        publisher's journal holds from an earlier run."""
        for step in self._starting:
            await step()
        if isinstance(self.publisher, LoopbackPublisher):
            await self.publisher.resume()

    async def aclose(self) -> None:
        """Flush and close the publisher, then the stores."""
        await self.transports.aclose()
        if self.oidc is not None:
            await self.oidc.aclose()
        await self.dedupe.aclose()
        await self.quarantine.aclose()
        for step in self._closing:
            await step()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
