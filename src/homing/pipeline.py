"""The push pipeline: shape -> authenticate -> decode -> dedupe -> handler(s) -> outcome.

Each push goes through these steps, in this order, in :meth:`PushPipeline.handle_push`:

1. **shape**: which of Google's request shapes it is, from its headers (:mod:`homing.ingress`);
2. **authenticate**: the sender's OIDC token before the body is parsed, then homing's signature;
3. **dispatch**: the event type's model and handler; an unknown type is quarantined or retried;
4. **dedupe**: an event already handled is acknowledged as a duplicate — before anything else,
   a dead-lettered copy included;
5. **dead letter**: a copy Pub/Sub moved to the dead-letter topic (believed only with a verified
   push token) is quarantined for a person;
6. **decode**: the data into the model; data that does not fit is quarantined;
7. **handlers**: each in one transaction with its done mark (``effects="database"``), or under
   a claim renewed while it runs (``effects="external"``, :mod:`homing.leases`); each
   exactly-once on its own, so a redelivery runs only those not yet done;
8. **outcome**: a :class:`~homing.outcome.PushResult`; a failure on the last delivery attempt is
   quarantined rather than left to Pub/Sub's dead-letter topic.

Hooks (:mod:`homing.hooks`) are called at the named points with one :class:`PushContext` per
push; :class:`~homing.Homing` is a pipeline with registration, publishing and a lifecycle on top.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ValidationError

from homing.dispatch import BoundHandler, Delivery, Drop, HandlerTable, Retry
from homing.errors import ConfigurationError, HomingError, PushRejected, StoreBusy, StoreError
from homing.escaping import printable
from homing.events import EventRegistry, decode_event, describe_validation_error
from homing.hooks import Hooks, PushContext
from homing.ingress import SHAPES, PushMessage, Shape, as_wrapped, read_push, recognise
from homing.ingress.cloudtasks import untrusted
from homing.ingress.wrapped import parse_push
from homing.leases import LeaseKeeper
from homing.outcome import DONE, DUPLICATE, IN_PROGRESS, STORE_BUSY, STORE_DOWN, PushResult
from homing.signing import EVENT_ID, EVENT_TYPE, Signer, VerifiedMessage
from homing.stores.base import (
    Claim,
    DedupeStore,
    QuarantinedMessage,
    QuarantineStore,
    Transaction,
)

if TYPE_CHECKING:
    from homing.auth import OIDCVerifier

logger = logging.getLogger("homing")

AuthMode = Literal["hmac", "oidc", "both", "none"]
UnknownEvents = Literal["quarantine", "retry"]

#: Pub/Sub's own limit on a message's data.
DEFAULT_MAX_BODY_SIZE = 10 * 1024 * 1024


def _log_handled(delivery: Delivery, started: float) -> None:
    if logger.isEnabledFor(logging.DEBUG):
        elapsed = (time.perf_counter() - started) * 1000
        logger.debug("handled %s (%s) in %.1f ms", delivery.event_type, delivery.key, elapsed)


#: Which answer stands when an event's handlers answer differently: a redelivery first (a
#: handler failed), then a quarantine, then done; duplicate only when every one was.
_PRECEDENCE = {"duplicate": 0, "done": 1, "quarantined": 2}


class PushPipeline:
    """The steps every push goes through, with the stores and settings they use.

    Not made on its own: :class:`~homing.Homing` is a pipeline with registration (the events
    and handlers it dispatches to), publishing and a lifecycle on top; its docstring describes
    these arguments.
    """

    events: EventRegistry
    handlers: HandlerTable

    def __init__(
        self,
        *,
        signer: Signer | None,
        oidc: OIDCVerifier | None,
        dedupe: DedupeStore,
        quarantine: QuarantineStore,
        auth: AuthMode,
        unknown_events: UnknownEvents,
        max_body_size: int,
        lease: float,
        max_delivery_attempts: int | None,
        hooks: Hooks,
        accept_legacy_without_oidc: bool,
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
        if auth == "none":
            logger.warning(
                "push authentication is OFF (auth='none'): anyone who can reach the "
                "push endpoint can run handlers. Never use this outside development."
            )
        self.signer = signer
        self.oidc = oidc
        self.dedupe = dedupe
        self.quarantine = quarantine
        self.auth = auth
        self.unknown_events = unknown_events
        self.max_body_size = max_body_size
        self.lease = lease
        self._leases = LeaseKeeper()
        self.max_delivery_attempts = max_delivery_attempts
        self.hooks = hooks
        #: Every push that reaches dispatch carried a verified OIDC token: the subscription's
        #: identity, the only thing that vouches for what Pub/Sub itself adds to a message.
        self._sender_verified = oidc is not None and auth in ("oidc", "both")

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
        context = PushContext() if self.hooks else None
        if context is not None:
            self.hooks.call("on_push_received", context)
        if authorization is None and headers is not None:
            authorization = headers.get("authorization")
        try:
            shape = recognise(headers, shapes)  # from the headers alone, bounds included
            if self.oidc is not None and self.auth in ("oidc", "both"):
                await self.oidc.verify(authorization)  # the sender, before the body is parsed
            shape, push = read_push(shape, body, headers, shapes, self.auth in ("oidc", "none"))
            if push.task is not None and not self._sender_verified:
                push = untrusted(push)  # X-CloudTasks-* count only under a verified token
            verified = self._authenticate(push)  # the message: homing's signature
        except PushRejected as exc:
            logger.warning("push refused (%s): %s", exc.code, exc.detail)
            result = PushResult(exc.status_code, exc.code, exc.detail)
        else:
            if context is not None:
                context.push, context.verified = push, verified
                self.hooks.call("on_authenticated", context)
            if shape != "wrapped":
                body = as_wrapped(push)  # the quarantine keeps every shape as a wrapped envelope
            result = await self._dispatch(body, push, verified, context, replay=False)
        if context is not None:
            context.result = result
            self.hooks.call("on_push_handled", context)
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
            result = await self._dispatch(
                entry.body, push, verified, None, replay=True, force=force
            )
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
        context: PushContext | None,
        *,
        replay: bool,
        force: bool = False,
    ) -> PushResult:
        """After authentication: route, skip duplicates, decode, run the handlers, answer."""
        type_name, event_id = verified.event_type, verified.event_id
        model = self.events.model(type_name)
        handlers = self.handlers.get(type_name)
        if model is None or not handlers:
            what = "no model" if model is None else "no handler"
            reason = f"event type {type_name!r} has {what} here"
            if self.unknown_events == "retry":
                logger.warning("%s; asking for redelivery (%s)", reason, event_id)
                return PushResult(503, "unknown_event", reason)
            return await self._drop(body, verified, reason)
        if not force and (
            self.dedupe.known_done(event_id)
            if len(handlers) == 1
            else all(self.dedupe.known_done(h.key(event_id)) for h in handlers)
        ):
            return DUPLICATE  # the common redelivery, answered in-process
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
            reason = describe_validation_error(exc, model)  # locations and kinds, no values
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
            key=event_id,
            task=push.task,
            last_attempt=self._is_last_attempt(push),
        )
        if context is not None:
            self.hooks.call("before_handlers", context)
        if len(handlers) == 1:  # most types: one handler, one answer
            answer = await self._handle(handlers[0], event, delivery, push, force=force)
        else:
            answer = await self._handle_each(handlers, event, delivery, push, force=force)
        if isinstance(answer, str):  # a reason to quarantine
            return await self._drop(body, verified, answer)
        return answer

    async def _handle_each(
        self,
        handlers: tuple[BoundHandler, ...],
        event: BaseModel,
        delivery: Delivery,
        push: PushMessage,
        *,
        force: bool,
    ) -> PushResult | str:
        """Every handler of the event, each on its own key; the answer that matters most."""
        final: PushResult | str = DUPLICATE
        for handler in handlers:
            own = replace(delivery, key=handler.key(delivery.event_id))
            if not force and self.dedupe.known_done(own.key):
                continue  # done on an earlier delivery
            answer = await self._handle(handler, event, own, push, force=force)
            if isinstance(answer, str):
                answer = f"{handler.name}: {answer}"
            if _weight(answer) > _weight(final):
                final = answer
        return final

    async def _handle(
        self,
        handler: BoundHandler,
        event: BaseModel,
        delivery: Delivery,
        push: PushMessage,
        *,
        force: bool,
    ) -> PushResult | str:
        """Run one handler on its key; its answer, or the reason to quarantine the event."""
        type_name, key = delivery.event_type, delivery.key
        run = self._run_in_transaction if handler.effects == "database" else self._run_under_claim
        try:
            return await run(handler, event, delivery, force=force)
        except StoreError as exc:
            return _store_failed(exc, f"{type_name}, {key}")
        except Drop as exc:
            return f"dropped by the handler: {exc}"
        except Retry as exc:
            logger.info("handler asked to retry %s (%s): %s", type_name, key, exc)
            reason = str(exc) or "the handler asked for a retry"
            if self._is_last_attempt(push):
                return self._last_attempt(push, reason)
            return PushResult(503, "retry", reason)
        except Exception as exc:
            logger.exception("handler for %s (%s) failed", type_name, key)
            reason = f"the handler raised {type(exc).__name__}"
            if self._is_last_attempt(push):
                return self._last_attempt(push, reason)
            return PushResult(500, "handler_failed", reason)

    async def _run_in_transaction(
        self, handler: BoundHandler, event: BaseModel, delivery: Delivery, *, force: bool
    ) -> PushResult:
        """``effects="database"``: the done mark, the effect and one commit (or none)."""
        if handler.threaded:  # a plain def, on a store whose transactions run on a thread
            return await self._run_on_thread(handler, event, delivery, force=force)
        async with self.dedupe.transaction(delivery.key, force=force) as transaction:
            if transaction.claim is Claim.DUPLICATE:
                return DUPLICATE  # the race was lost, or the event was handled before
            if transaction.claim is Claim.IN_PROGRESS:
                return IN_PROGRESS  # an older claim-mode delivery still holds the event
            delivery.transaction = transaction
            started = time.perf_counter()
            await handler(event, delivery)
        _log_handled(delivery, started)
        return DONE

    async def _run_on_thread(
        self, handler: BoundHandler, event: BaseModel, delivery: Delivery, *, force: bool
    ) -> PushResult:
        """A plain ``def`` ``effects="database"`` handler: opened, run and committed in one
        call on the store's thread."""

        def run(transaction: Transaction) -> None:
            delivery.transaction = transaction
            handler.call_here(event, delivery)

        started = time.perf_counter()
        claim = await self.dedupe.run_threaded(delivery.key, run, force=force)
        if claim is Claim.DUPLICATE:
            return DUPLICATE
        if claim is Claim.IN_PROGRESS:
            return IN_PROGRESS
        _log_handled(delivery, started)
        return DONE

    async def _run_under_claim(
        self, handler: BoundHandler, event: BaseModel, delivery: Delivery, *, force: bool
    ) -> PushResult:
        """``effects="external"``: claim the event, keep the claim alive, run, mark done."""
        key = delivery.key
        if not force:
            claim = await self.dedupe.claim(key, lease=self.lease)
            if claim is Claim.DUPLICATE:
                return DUPLICATE
            if claim is Claim.IN_PROGRESS:
                return IN_PROGRESS
        held = self._leases.hold(self.dedupe, key, self.lease)
        started = time.perf_counter()
        try:
            await handler(event, delivery)
        except BaseException:
            held.release()
            await self._release(key)
            raise
        held.release()
        if delivery.marked_done:
            self.dedupe.note_done(key)
        else:
            try:
                await self.dedupe.done(key)
            except StoreError as exc:
                # The effect happened; the claim lapses and a redelivery may repeat it.
                logger.error("could not mark %s (%s) done: %s", delivery.event_type, key, exc)
        _log_handled(delivery, started)
        return DONE

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

    def refused(self, exc: PushRejected) -> PushResult:
        """The answer to a push an adapter refused before :meth:`handle_push` (a body over
        the size limit): logged, and seen by the hooks like any other push."""
        logger.warning("push refused (%s): %s", exc.code, exc.detail)
        result = PushResult(exc.status_code, exc.code, exc.detail)
        if self.hooks:
            context = PushContext()
            self.hooks.call("on_push_received", context)
            context.result = result
            self.hooks.call("on_push_handled", context)
        return result

    async def _release(self, key: str) -> None:
        try:
            await self.dedupe.release(key)
        except StoreError as exc:  # the lease runs out instead
            logger.error("could not release the claim on %s: %s", key, exc)

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
            return _store_failed(exc, event_id)
        if claim is Claim.DUPLICATE:
            return DUPLICATE
        if claim is Claim.IN_PROGRESS:
            return IN_PROGRESS
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
            return PushResult(
                503, "store_unavailable", "the quarantine store is unavailable", retry_after=10
            )
        logger.warning("quarantined %s (%s): %s", verified.event_type, verified.event_id, reason)
        return PushResult(200, "quarantined", reason)


def _store_failed(exc: StoreError, what: str) -> PushResult:
    """The answer to a push the dedupe store failed: busy (a WARNING, retry in a moment) or
    down (an ERROR)."""
    if isinstance(exc, StoreBusy):
        logger.warning("%s (%s): %s", STORE_BUSY.detail, what, exc)
        return STORE_BUSY
    logger.error("%s (%s): %s", STORE_DOWN.detail, what, exc)
    return STORE_DOWN


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


def _weight(answer: PushResult | str) -> int:
    if isinstance(answer, str):
        return _PRECEDENCE["quarantined"]
    return _PRECEDENCE.get(answer.outcome, 3)  # anything not acknowledged: a redelivery
