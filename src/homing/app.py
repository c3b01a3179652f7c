"""``Homing``: events, handlers, a publisher and stores, wired into one object per service.

Its two halves are its bases: publishing (:mod:`homing.publishing`) and the push pipeline
(:mod:`homing.pipeline`). The adapters that serve it over HTTP (:mod:`homing.asgi`,
:mod:`homing.fastapi`, :mod:`homing.flask`) take a ``Homing``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, overload

from pydantic import BaseModel

from homing.dispatch import Effects, Handler, HandlerTable
from homing.events import EventRegistry
from homing.hooks import Hook, Hooks
from homing.pipeline import DEFAULT_MAX_BODY_SIZE, AuthMode, PushPipeline, UnknownEvents
from homing.publishers.base import Publisher
from homing.publishers.loopback import LoopbackPublisher
from homing.publishers.routing import Transports
from homing.publishing import Publishing
from homing.signing import Signer
from homing.stores.base import DedupeStore, QuarantineStore
from homing.stores.memory import MemoryDedupeStore, MemoryQuarantineStore

if TYPE_CHECKING:
    from homing.auth import OIDCVerifier
    from homing.settings import Settings
    from homing.wiring import Wired

logger = logging.getLogger("homing")

M = TypeVar("M", bound=type[BaseModel])
H = TypeVar("H", bound=Handler)
Step = Callable[[], Awaitable[None]]


def _memory_dedupe(auth: AuthMode, publisher: Publisher | None) -> MemoryDedupeStore:
    """The default dedupe store, with a warning where it is not enough."""
    if auth in ("oidc", "both") or (publisher is not None and not publisher.local):
        logger.warning(
            "the dedupe store is in memory (no dedupe= given) in a production-like setup "
            "(%s): handled event ids are forgotten on restart and are not shared between "
            "instances, so a redelivery may run a handler again; use SQLDedupeStore",
            f"auth={auth!r}" if auth in ("oidc", "both") else type(publisher).__name__,
        )
    return MemoryDedupeStore()


class Homing(Publishing, PushPipeline):
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
        hooks: middleware called at the named points of publishing and of every push, in
            this order (closing points in reverse; see :mod:`homing.hooks`); telemetry
            attaches here. ``homing.hooks.append``/``insert`` add more.
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
        super().__init__(
            signer=signer,
            oidc=oidc,
            dedupe=dedupe if dedupe is not None else _memory_dedupe(auth, publisher),
            quarantine=quarantine if quarantine is not None else MemoryQuarantineStore(),
            auth=auth,
            unknown_events=unknown_events,
            max_body_size=max_body_size,
            lease=lease,
            max_delivery_attempts=max_delivery_attempts,
            hooks=Hooks(hooks),
            accept_legacy_without_oidc=accept_legacy_without_oidc,
        )
        self.transports = Transports(publisher, transports)
        self.events = EventRegistry()
        self.handlers = HandlerTable()
        #: What :meth:`from_env` built beside it (engine, outbox, telemetry), else ``None``.
        self.wired: Wired | None = None
        self._starting: list[Step] = []
        self._closing: list[Step] = []

    # -- registration -------------------------------------------------------------------------

    def event(self, type_name: str, *, transport: str | None = None) -> Callable[[M], M]:
        """Class decorator: bind a pydantic model to an event type name.

        ``transport`` names the publisher that carries it (one of ``Homing(transports=...)``;
        default: ``Homing(publisher=...)``), e.g. ``"tasks"`` for an event published with a
        delay.
        """
        self.transports.route(type_name, transport)
        return self.events.event(type_name)

    @overload
    def handler(
        self,
        model: type[BaseModel] | None = None,
        /,
        *,
        effects: Effects = "external",
        name: str | None = None,
    ) -> Callable[[H], H]: ...

    @overload
    def handler(self, model: H, /) -> H: ...

    def handler(
        self,
        model: type[BaseModel] | Handler | None = None,
        /,
        *,
        effects: Effects = "external",
        name: str | None = None,
    ) -> Any:
        """Decorator: a function that handles events of ``model``.

        ``@homing.handler(Model)``, or ``@homing.handler`` alone to take the model from the
        annotation of the function's first parameter. An ``async def`` runs on the event loop,
        a plain ``def`` in a worker thread. An event type may have several handlers, each
        exactly-once on its own; ``name`` (default: module and qualified name) keys all but
        the first one's done marks, so keep it stable across deploys.

        ``effects`` says where the handler's effects go (:mod:`homing.dispatch`):
        ``"external"`` (default: anything, run under a renewed claim) or ``"database"`` (only
        writes through ``delivery.session``, committed once with the done mark; needs
        :class:`~homing.stores.sql.SQLDedupeStore`).
        """

        store = None if self.dedupe.transactional else type(self.dedupe).__name__
        return self.handlers.decorator(
            self.events,
            model,
            effects,
            name,
            plain_store=store,
            threaded_transactions=self.dedupe.threaded_transactions,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        settings: Settings | None = None,
        **overrides: Any,
    ) -> Self:
        """A ``Homing`` configured from ``HOMING_*``, ``PORT`` and ``DATABASE_URL``.

        The signer (``HOMING_SIGNING_KEYS``; a development key, said so, when the publisher
        is local), the publisher (``HOMING_PUBLISHER``: loopback to this service, memory, or
        Pub/Sub, the emulator's too), the push token (``HOMING_AUTH``), the SQL stores and an
        outbox on ``DATABASE_URL`` (tables made at start-up), and telemetry
        (``HOMING_TELEMETRY``) — see :mod:`homing.wiring`; what is built beside the
        ``Homing`` is ``homing.wired``. Keyword arguments replace what the environment
        chose; ``settings`` replace the ``HOMING_*`` variables. A mistake is one
        :class:`~homing.errors.ConfigurationError` naming the variable.

        Example::

            homing = Homing.from_env()
        """
        import homing.wiring as wiring  # the settings and every backend: only when asked for

        parts = wiring.from_env(environ, settings, overrides)
        homing = cls(**(parts.options | overrides))
        sender = homing.transports if homing.publisher is not None else None  # by event type
        starting, closing = parts.attach(homing.events, homing.hooks, sender)
        homing._starting += starting
        homing._closing += closing
        homing.wired = parts.wired
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
