"""``Homing``: events, handlers, a publisher and stores, wired into one object per service."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.routing import Route

from homing.dispatch import Delivery, Drop, Handler, HandlerTable, Retry
from homing.envelope import PushMessage, parse_push
from homing.errors import ConfigurationError, HomingError, PushRejected
from homing.events import EventRegistry, decode_event, encode_event
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
        lease: seconds a handler's claim on an event id lasts before a redelivery may run it.
        max_delivery_attempts: the subscription's dead-letter limit; when a push says it is the
            last attempt (``deliveryAttempt``) and the handler fails, the envelope is
            quarantined and acknowledged rather than left to Pub/Sub's dead-letter topic.

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
        lease: float = 600.0,
        max_delivery_attempts: int | None = None,
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
        self.events = EventRegistry()
        self.handlers = HandlerTable()

    # -- registration -------------------------------------------------------------------------

    def event(self, type_name: str) -> Callable[[M], M]:
        """Class decorator: bind a pydantic model to an event type name."""
        return self.events.event(type_name)

    def handler(self, model: type[BaseModel]) -> Callable[[H], H]:
        """Decorator: the async function that handles events of ``model``."""
        type_name = self.events.type_name(model)

        def bind(function: H) -> H:
            self.handlers.add(type_name, function)
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
        signed = self.signer.sign(data, type_name, event_id=event_id, attributes=attributes)
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
        await self.publisher.publish(message)
        return message.event_id

    # -- the push endpoint --------------------------------------------------------------------

    async def handle_push(self, body: bytes, *, authorization: str | None = None) -> PushResult:
        """Authenticate, decode and dispatch one push; never raises for bad input.

        ``authorization`` is the request's ``Authorization`` header (Pub/Sub's OIDC token).
        """
        try:
            if self.oidc is not None and self.auth in ("oidc", "both"):
                await self.oidc.verify(authorization)
            push = parse_push(body)
            verified = self._authenticate(push)
        except PushRejected as exc:
            logger.warning("push refused (%s): %s", exc.code, exc.detail)
            return PushResult(exc.status_code, exc.code, exc.detail)
        return await self._dispatch(body, push, verified, replay=False)

    async def replay(self, entry_id: str) -> PushResult:
        """Run a quarantined message again, verified again.

        The signature is checked anew (not its age: the quarantine is trusted storage), then the
        handler runs even if the event was marked handled when it was dropped. On success the
        entry is removed; otherwise it stays, with the new reason.

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
            result = await self._dispatch(entry.body, push, verified, replay=True)
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
        self, body: bytes, push: PushMessage, verified: VerifiedMessage, *, replay: bool
    ) -> PushResult:
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

        if not replay:
            if dead_letter := _dead_letter_source(push.attributes):
                # A copy Pub/Sub moved to the dead-letter topic: keep it for a person.
                return await self._drop(body, verified, dead_letter)
            if self.dedupe.known_done(event_id):  # the common redelivery, answered in-process
                return _DUPLICATE
            try:
                claim = await self.dedupe.claim(event_id, lease=self.lease)
            except Exception:
                logger.exception("the dedupe store failed for %s (%s)", type_name, event_id)
                return PushResult(503, "store_unavailable", "the dedupe store is unavailable")
            if claim is Claim.DUPLICATE:
                return _DUPLICATE
            if claim is Claim.IN_PROGRESS:
                return PushResult(409, "in_progress", "another delivery of this event is running")

        try:
            event = decode_event(model, push.data)
        except ValidationError as exc:
            reason = f"the data does not fit {model.__qualname__}: {exc.error_count()} error(s)"
            return await self._drop(body, verified, reason, done=True)

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
        started = time.perf_counter()
        try:
            await handler(event, delivery)
        except Drop as exc:
            return await self._drop(body, verified, f"dropped by the handler: {exc}", done=True)
        except Retry as exc:
            await self._release(event_id)
            logger.info("handler asked to retry %s (%s): %s", type_name, event_id, exc)
            reason = str(exc) or "the handler asked for a retry"
            if self._is_last_attempt(push):
                return await self._drop(body, verified, self._last_attempt(push, reason))
            return PushResult(503, "retry", reason)
        except Exception as exc:
            await self._release(event_id)
            logger.exception("handler for %s (%s) failed", type_name, event_id)
            reason = f"the handler raised {type(exc).__name__}"
            if self._is_last_attempt(push):
                return await self._drop(body, verified, self._last_attempt(push, reason))
            return PushResult(500, "handler_failed", reason)
        if delivery.marked_done:
            self.dedupe.note_done(event_id)
        else:
            try:
                await self.dedupe.done(event_id)
            except Exception:
                # The effect happened; a redelivery finds the claim and waits out its lease.
                logger.exception("could not mark %s (%s) done", type_name, event_id)
        logger.debug(
            "handled %s (%s) in %.1f ms",
            type_name,
            event_id,
            (time.perf_counter() - started) * 1000,
        )
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

    async def _release(self, event_id: str) -> None:
        try:
            await self.dedupe.release(event_id)
        except Exception:
            logger.exception("could not release the claim on %s", event_id)

    def _is_last_attempt(self, push: PushMessage) -> bool:
        limit, attempt = self.max_delivery_attempts, push.delivery_attempt
        return limit is not None and attempt is not None and attempt >= limit

    def _last_attempt(self, push: PushMessage, reason: str) -> str:
        return (
            f"the last delivery attempt ({push.delivery_attempt} of "
            f"{self.max_delivery_attempts}) failed: {reason}"
        )

    async def _drop(
        self, body: bytes, verified: VerifiedMessage, reason: str, *, done: bool = False
    ) -> PushResult:
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
        except Exception:
            logger.exception("could not quarantine %s", verified.event_id)
            if done:
                await self._release(verified.event_id)
            return PushResult(503, "store_unavailable", "the quarantine store is unavailable")
        if done:
            try:
                await self.dedupe.done(verified.event_id)
            except Exception:
                logger.exception("could not mark %s done", verified.event_id)
        logger.warning("quarantined %s (%s): %s", verified.event_type, verified.event_id, reason)
        return PushResult(200, "quarantined", reason)

    # -- serving ------------------------------------------------------------------------------

    def endpoint(self) -> PushEndpoint:
        """The push endpoint as a plain ASGI app (``POST`` only)."""
        from homing.asgi import PushEndpoint

        return PushEndpoint(self)

    def route(self, path: str = "/events") -> Route:
        """A Starlette ``Route`` serving the push endpoint at ``path``."""
        return Route(path, self.endpoint(), methods=["POST"], name="homing_push")

    def router(self, path: str = "/events") -> APIRouter:
        """A FastAPI ``APIRouter`` serving the push endpoint at ``path`` (needs ``fastapi``)."""
        from homing.fastapi import push_router

        return push_router(self, path)

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
