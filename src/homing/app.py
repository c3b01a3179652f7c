"""``Homing``: events, handlers, a publisher and stores, wired into one object per service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.routing import Route

from homing.dispatch import BoundHandler, Delivery, Drop, Effects, Handler, HandlerTable, Retry
from homing.errors import ConfigurationError, HomingError, PushRejected, StoreError
from homing.escaping import printable
from homing.events import EventRegistry, decode_event, encode_event
from homing.hooks import Hook
from homing.ingress import SHAPES, PushMessage, Shape, as_wrapped, read_push, recognise
from homing.ingress.wrapped import parse_push
from homing.publishers.base import OutgoingMessage, Publisher
from homing.signing import EVENT_ID, EVENT_TYPE, Signer, VerifiedMessage
from homing.stores.base import Claim, DedupeStore, QuarantinedMessage, QuarantineStore
from homing.stores.memory import MemoryDedupeStore, MemoryQuarantineStore

if TYPE_CHECKING:
    from fastapi import APIRouter

    from homing.asgi import PushEndpoint
    from homing.auth import OIDCVerifier

logger = logging.getLogger("homing")

M = TypeVar("M", bound=type[BaseModel])
H = TypeVar("H", bound=Handler)

AuthMode = Literal["hmac", "oidc", "both", "none"]
UnknownEvents = Literal["quarantine", "retry"]

#: Pub/Sub's own limit on a message's data.
DEFAULT_MAX_BODY_SIZE = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PushResult:
    """How a push was answered: the HTTP status, a one-word outcome and, maybe, why."""

    status: int
    outcome: str
    detail: str | None = None

    @property
    def acked(self) -> bool:
        return 200 <= self.status < 300


_DONE = PushResult(204, "done")
_DUPLICATE = PushResult(204, "duplicate")
_IN_PROGRESS = PushResult(409, "in_progress", "another delivery of this event is running")
_STORE_DOWN = PushResult(503, "store_unavailable", "the dedupe store is unavailable")


class _LeaseKeeper:
    """Renews a claim every third of its lease while a handler runs, from the first third on.

    A live handler never loses its claim however long it runs; a process that died stops
    renewing, and its event is free again within one lease. Handlers quicker than a third of
    the lease (most) cost one timer and no write.
    """

    __slots__ = ("_dedupe", "_event_id", "_lease", "_task", "_timer")

    def __init__(self, dedupe: DedupeStore, event_id: str, lease: float) -> None:
        self._dedupe, self._event_id, self._lease = dedupe, event_id, lease
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(lease / 3, self._start)

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        while True:
            try:
                if not await self._dedupe.renew(self._event_id, lease=self._lease):
                    logger.warning("the claim on %s was lost while its handler ran", self._event_id)
            except StoreError as exc:
                logger.warning("could not renew the claim on %s: %s", self._event_id, exc)
            await asyncio.sleep(self._lease / 3)

    def stop(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()


def _log_handled(delivery: Delivery, started: float) -> None:
    if logger.isEnabledFor(logging.DEBUG):
        elapsed = (time.perf_counter() - started) * 1000
        logger.debug("handled %s (%s) in %.1f ms", delivery.event_type, delivery.event_id, elapsed)


class Homing:
    """One service's events: register models and handlers, publish, and serve the push endpoint.

    Args:
        signer: signs what :meth:`publish` sends and verifies every push (``auth="hmac"`` or
            ``"both"``).
        oidc: verifies the OIDC token Pub/Sub attaches to a push (``auth="oidc"`` or ``"both"``).
        publisher: where :meth:`publish` sends events; required to publish.
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
        self.publisher = publisher
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

    # -- registration -------------------------------------------------------------------------

    def event(self, type_name: str) -> Callable[[M], M]:
        """Class decorator: bind a pydantic model to an event type name."""
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
    ) -> OutgoingMessage:
        """Serialise and sign ``event`` into a message ready for any publisher."""
        if self.signer is None:
            raise ConfigurationError("signing needs a signer (signing keys)")
        type_name = self.events.type_name(event)
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
        )

    async def publish(
        self,
        event: BaseModel,
        *,
        event_id: str | None = None,
        attributes: Mapping[str, str] | None = None,
        ordering_key: str | None = None,
    ) -> str:
        """Sign ``event`` and publish it; returns its event id once the broker has it.

        Raises :class:`~homing.errors.PublishFailed` when the broker did not take it.
        """
        if self.publisher is None:
            raise ConfigurationError("publishing needs a publisher: Homing(publisher=...)")
        message = self.sign(
            event, event_id=event_id, attributes=attributes, ordering_key=ordering_key
        )
        if not self.hooks:
            await self.publisher.publish(message)
            return message.event_id
        started = time.perf_counter()
        try:
            await self.publisher.publish(message)
        except BaseException as exc:
            self.published(message, time.perf_counter() - started, exc)
            raise
        self.published(message, time.perf_counter() - started, None)
        return message.event_id

    # -- the push endpoint --------------------------------------------------------------------

    async def handle_push(
        self,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        authorization: str | None = None,
        shapes: tuple[Shape, ...] = SHAPES,
    ) -> PushResult:
        """Read, authenticate and dispatch one push; never raises for bad input.

        Args:
            body: the request body.
            headers: the request's headers (lower-case names, values as ASGI servers give
                them), from which its shape is recognised: wrapped, unwrapped or CloudEvents
                (:mod:`homing.ingress`). ``None`` reads a wrapped push.
            authorization: the ``Authorization`` header (Pub/Sub's OIDC token); taken from
                ``headers`` when not given.
            shapes: the request shapes accepted; others are refused with 400.
        """
        hooks = self.hooks
        if hooks:
            self._hook("on_push_received")
        if authorization is None and headers is not None:
            authorization = headers.get("authorization")
        try:
            shape = recognise(headers, shapes)  # from the headers alone, bounds included
            if self.oidc is not None and self.auth in ("oidc", "both"):
                await self.oidc.verify(authorization)  # the sender, before the body is parsed
            shape, push = read_push(shape, body, headers, shapes, self.auth in ("oidc", "none"))
            verified = self._authenticate(push)  # the message: homing's signature
        except PushRejected as exc:
            logger.warning("push refused (%s): %s", exc.code, exc.detail)
            result = PushResult(exc.status_code, exc.code, exc.detail)
        else:
            if hooks:
                self._hook("on_authenticated", push, verified)
            if shape != "wrapped":
                body = as_wrapped(push)  # the quarantine keeps every shape as a wrapped envelope
            result = await self._dispatch(body, push, verified, replay=False)
        if hooks:
            self._hook("on_push_handled", result)
        return result

    async def replay(self, entry_id: str, *, force: bool = False) -> PushResult:
        """Run a quarantined message again, verified again.

        The signature is checked anew (not its age: the quarantine is trusted storage), then the
        handler runs. An event already handled (its done mark is set: a redelivery got through
        since, or it was quarantined by mistake) is not run again unless ``force`` says so; the
        answer is then ``already_done`` and the entry stays. On success the entry is removed;
        otherwise it stays, with the new reason.

        Raises :class:`~homing.errors.HomingError` when there is no such entry.
        """
        entry = await self.quarantine.get(entry_id)
        if entry is None:
            raise HomingError(f"no quarantined message {entry_id!r}")
        try:
            push = parse_push(entry.body)
            verified = self._authenticate(push, check_age=False)
        except PushRejected as exc:
            result = PushResult(exc.status_code, exc.code, exc.detail)
        else:
            result = await self._dispatch(entry.body, push, verified, replay=True, force=force)
            if result.outcome == "duplicate":
                return PushResult(
                    409,
                    "already_done",
                    f"event {verified.event_id} was handled already; replay it with force "
                    "(homing quarantine replay --force) to run its handler again",
                )
        await self.quarantine.delete(entry_id)
        if result.outcome != "done":
            await self.quarantine.add(
                replace(
                    entry,
                    reason=f"replay: {result.detail or result.outcome} (was: {entry.reason})"[
                        :4000
                    ],
                    received_at=datetime.now(UTC),
                )
            )
        return result

    async def _dispatch(
        self,
        body: bytes,
        push: PushMessage,
        verified: VerifiedMessage,
        *,
        replay: bool,
        force: bool = False,
    ) -> PushResult:
        """After authentication: route, skip duplicates, decode, run the handler, answer."""
        type_name, event_id = verified.event_type, verified.event_id
        model = self.events.model(type_name)
        handler = self.handlers.get(type_name)
        if model is None or handler is None:
            what = "no model" if model is None else "no handler"
            reason = f"event type {type_name!r} has {what} here"
            if self.unknown_events == "retry":
                logger.warning("%s; asking for redelivery (%s)", reason, event_id)
                return PushResult(503, "unknown_event", reason)
            return await self._drop(body, verified, reason)
        if self.dedupe.known_done(event_id) and not force:  # the common redelivery, in-process
            return _DUPLICATE
        # A copy Pub/Sub moved to the dead-letter topic: kept for a person, unless handled.
        # Only the push token vouches that Pub/Sub added these attributes (they are not
        # signed); without it they are anyone's, and ignored.
        if (
            not replay
            and self._sender_verified
            and (dead_letter := _dead_letter_source(push.attributes))
        ):
            return await self._dead_letter(body, verified, dead_letter)
        try:
            event = decode_event(model, push.data)
        except ValidationError as exc:
            reason = f"the data does not fit {model.__qualname__}: {exc.error_count()} error(s)"
            return await self._drop(body, verified, reason)
        delivery = Delivery(
            event_id=event_id,
            event_type=type_name,
            message_id=push.message_id,
            attributes=verified.attributes,
            subscription=push.subscription,
            publish_time=push.publish_time,
            delivery_attempt=push.delivery_attempt,
            scheme=verified.scheme,
            dedupe=self.dedupe,
        )
        run = self._run_in_transaction if handler.effects == "database" else self._run_under_claim
        try:
            return await run(handler, event, delivery, force=force)
        except StoreError as exc:
            logger.error("%s (%s, %s): %s", _STORE_DOWN.detail, type_name, event_id, exc)
            return _STORE_DOWN
        except Drop as exc:
            return await self._drop(body, verified, f"dropped by the handler: {exc}")
        except Retry as exc:
            logger.info("handler asked to retry %s (%s): %s", type_name, event_id, exc)
            reason = str(exc) or "the handler asked for a retry"
            if self._is_last_attempt(push):
                return await self._drop(body, verified, self._last_attempt(push, reason))
            return PushResult(503, "retry", reason)
        except Exception as exc:
            logger.exception("handler for %s (%s) failed", type_name, event_id)
            reason = f"the handler raised {type(exc).__name__}"
            if self._is_last_attempt(push):
                return await self._drop(body, verified, self._last_attempt(push, reason))
            return PushResult(500, "handler_failed", reason)

    async def _run_in_transaction(
        self, handler: BoundHandler, event: BaseModel, delivery: Delivery, *, force: bool
    ) -> PushResult:
        """``effects="database"``: the done mark, the effect and one commit (or none)."""
        async with self.dedupe.transaction(delivery.event_id, force=force) as transaction:
            if transaction.claim is Claim.DUPLICATE:
                return _DUPLICATE  # the race was lost, or the event was handled before
            if transaction.claim is Claim.IN_PROGRESS:
                return _IN_PROGRESS  # an older claim-mode delivery still holds the event
            delivery.transaction = transaction
            started = time.perf_counter()
            await handler(event, delivery)
        _log_handled(delivery, started)
        return _DONE

    async def _run_under_claim(
        self, handler: BoundHandler, event: BaseModel, delivery: Delivery, *, force: bool
    ) -> PushResult:
        """``effects="external"``: claim the event, keep the claim alive, run, mark done."""
        event_id = delivery.event_id
        if not force:
            claim = await self.dedupe.claim(event_id, lease=self.lease)
            if claim is Claim.DUPLICATE:
                return _DUPLICATE
            if claim is Claim.IN_PROGRESS:
                return _IN_PROGRESS
        keeper = _LeaseKeeper(self.dedupe, event_id, self.lease)
        started = time.perf_counter()
        try:
            await handler(event, delivery)
        except BaseException:
            keeper.stop()
            await self._release(event_id)
            raise
        keeper.stop()
        if delivery.marked_done:
            self.dedupe.note_done(event_id)
        else:
            try:
                await self.dedupe.done(event_id)
            except StoreError as exc:
                # The effect happened; the claim lapses and a redelivery may repeat it.
                logger.error("could not mark %s (%s) done: %s", delivery.event_type, event_id, exc)
        _log_handled(delivery, started)
        return _DONE

    def _authenticate(self, push: PushMessage, *, check_age: bool = True) -> VerifiedMessage:
        if self.signer is not None and self.auth in ("hmac", "both"):
            return self.signer.verify(
                push.data, push.attributes, message_id=push.message_id, check_age=check_age
            )
        attributes = push.attributes
        return VerifiedMessage(
            event_type=attributes.get(EVENT_TYPE, ""),
            event_id=attributes.get(EVENT_ID) or push.message_id,
            scheme="unsigned",
            key_id=None,
            timestamp=None,
            attributes=attributes,
        )

    # -- hooks --------------------------------------------------------------------------------

    def refused(self, exc: PushRejected) -> PushResult:
        """The answer to a push an adapter refused before :meth:`handle_push` (a body over
        the size limit): logged, and seen by the hooks like any other push."""
        logger.warning("push refused (%s): %s", exc.code, exc.detail)
        result = PushResult(exc.status_code, exc.code, exc.detail)
        if self.hooks:
            self._hook("on_push_received")
            self._hook("on_push_handled", result)
        return result

    def published(
        self, message: OutgoingMessage, seconds: float, error: BaseException | None
    ) -> None:
        """Tell the hooks a publish finished (for publishing paths outside :meth:`publish`,
        such as the outbox)."""
        self._hook("after_publish", message, seconds, error)

    def _hook(self, point: str, *args: Any) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, point)(*args)
            except Exception:
                # Telemetry failing must never fail a push or a publish.
                logger.exception("hook %s.%s failed", type(hook).__name__, point)

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

    async def _release(self, event_id: str) -> None:
        try:
            await self.dedupe.release(event_id)
        except StoreError as exc:  # the lease runs out instead
            logger.error("could not release the claim on %s: %s", event_id, exc)

    def _is_last_attempt(self, push: PushMessage) -> bool:
        limit, attempt = self.max_delivery_attempts, push.delivery_attempt
        return limit is not None and attempt is not None and attempt >= limit

    def _last_attempt(self, push: PushMessage, reason: str) -> str:
        return (
            f"the last delivery attempt ({push.delivery_attempt} of "
            f"{self.max_delivery_attempts}) failed: {reason}"
        )

    async def _dead_letter(self, body: bytes, verified: VerifiedMessage, reason: str) -> PushResult:
        """A dead-lettered copy: quarantined, unless its event was handled (or is running)."""
        event_id = verified.event_id
        try:
            claim = await self.dedupe.claim(event_id, lease=self.lease)
        except StoreError as exc:
            logger.error("%s (%s): %s", _STORE_DOWN.detail, event_id, exc)
            return _STORE_DOWN
        if claim is Claim.DUPLICATE:
            return _DUPLICATE
        if claim is Claim.IN_PROGRESS:
            return _IN_PROGRESS
        try:
            return await self._drop(body, verified, reason)
        finally:
            await self._release(event_id)

    async def _drop(self, body: bytes, verified: VerifiedMessage, reason: str) -> PushResult:
        """Acknowledge and keep the envelope for a person. The event is not marked done:
        "done" means its handler's effects happened, and a replay looks for exactly that."""
        reason = printable(reason)
        entry = QuarantinedMessage(
            id=verified.event_id,
            reason=reason,
            body=body,
            received_at=datetime.now(UTC),
            event_type=verified.event_type,
            event_id=verified.event_id,
        )
        try:
            await self.quarantine.add(entry)
        except StoreError as exc:
            logger.error("could not quarantine %s: %s", verified.event_id, exc)
            return PushResult(503, "store_unavailable", "the quarantine store is unavailable")
        logger.warning("quarantined %s (%s): %s", verified.event_type, verified.event_id, reason)
        return PushResult(200, "quarantined", reason)

    # -- serving ------------------------------------------------------------------------------

    def endpoint(self, *, shapes: tuple[Shape, ...] = SHAPES) -> PushEndpoint:
        """The push endpoint as a plain ASGI app (``POST`` only), accepting ``shapes``."""
        from homing.asgi import PushEndpoint

        return PushEndpoint(self, shapes=shapes)

    def route(self, path: str = "/events", *, shapes: tuple[Shape, ...] = SHAPES) -> Route:
        """A Starlette ``Route`` serving the push endpoint at ``path``."""
        return Route(path, self.endpoint(shapes=shapes), methods=["POST"], name="homing_push")

    def router(self, path: str = "/events", *, shapes: tuple[Shape, ...] = SHAPES) -> APIRouter:
        """A FastAPI ``APIRouter`` serving the push endpoint at ``path`` (needs ``fastapi``)."""
        from homing.fastapi import push_router

        return push_router(self, path, shapes=shapes)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Any = None) -> AsyncIterator[None]:
        """An ASGI lifespan that closes the publisher and stores at shutdown."""
        async with self:
            yield

    async def aclose(self) -> None:
        """Flush and close the publisher, then the stores."""
        if self.publisher is not None:
            await self.publisher.aclose()
        if self.oidc is not None:
            await self.oidc.aclose()
        await self.dedupe.aclose()
        await self.quarantine.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


def _dead_letter_source(attributes: Mapping[str, str]) -> str | None:
    """Why a message is a dead-lettered copy, from the attributes Pub/Sub adds; else ``None``."""
    count = attributes.get("CloudPubSubDeadLetterSourceDeliveryCount")
    source = attributes.get("CloudPubSubDeadLetterSourceSubscription")
    if count is None and source is None:
        return None
    project = attributes.get("CloudPubSubDeadLetterSourceSubscriptionProject", "?")
    return (
        f"dead-lettered by Pub/Sub from subscription {source or '?'} (project {project}) "
        f"after {count or '?'} delivery attempts"
    )
