"""``Telemetry``: the hook that gives every push one summary log line, its publisher's trace,
and metrics.

::

    telemetry = Telemetry(homing.events, metrics=PrometheusMetrics())
    homing.hooks.append(telemetry)
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from homing.hooks import Hook, PublishContext, PushContext
from homing.outcome import OTHER, OUTCOMES
from homing.telemetry.context import (
    CLIENT_TRACEPARENT_ATTRIBUTE,
    TRACEPARENT_ATTRIBUTE,
    TraceContext,
    current_trace,
    parse_traceparent,
)
from homing.telemetry.context import _current as _trace
from homing.telemetry.logs import installed_handler

if TYPE_CHECKING:
    from homing.events import EventRegistry
    from homing.ingress import PushMessage
    from homing.outcome import PushResult
    from homing.signing import VerifiedMessage
    from homing.telemetry.logs import LogHandler
    from homing.telemetry.metrics import PrometheusMetrics
    from homing.telemetry.otel import OpenTelemetry, ProcessSpan

#: The ``event_type`` label of a push refused before its type could be trusted.
UNAUTHENTICATED = "unauthenticated"
#: The ``event_type`` label of an authenticated push whose type this service does not register.
UNREGISTERED = "unregistered"


#: The logger of the one summary line per push.
_PUSH_LOGGER = "homing.push"
push_logger = logging.getLogger(_PUSH_LOGGER)


class _Push:
    """What the telemetry keeps of one push between its points (in its ``PushContext``)."""

    __slots__ = ("process", "token", "trace")

    def __init__(self) -> None:
        self.trace: TraceContext | None = None  # the trace the push continues
        self.token: Any = None
        self.process: ProcessSpan | None = None


def message_trace(push: PushMessage, verified: VerifiedMessage) -> TraceContext | None:
    """The publisher's trace context, from the attributes the push's credentials vouch for.

    homing's signed ``homing-traceparent`` first. google-cloud-pubsub's
    ``googclient_traceparent`` is added after signing, so under homing's signature it is used
    only within the signed trace (it names the client's publish span there); it is used alone
    only where no attribute is signed at all (``auth="oidc"``, where Google vouches for the
    push). The article's legacy format signs no attribute: its pushes start a new trace.
    """
    if verified.scheme == "legacy":
        return None
    signed = parse_traceparent(verified.attributes.get(TRACEPARENT_ATTRIBUTE))
    client_value = push.attributes.get(CLIENT_TRACEPARENT_ATTRIBUTE)
    if client_value is None:
        return signed
    client = parse_traceparent(client_value)
    if client is None:
        return signed
    if signed is None:
        return client if verified.scheme == "unsigned" else None
    return client if client.trace_id == signed.trace_id else signed


#: The last publish time's whole second and its POSIX time, replaced whole (threads may read it):
#: the pushes of one busy second share it.
_last_second: tuple[str, float] = ("", 0.0)


def message_age(publish_time: str | None, now: float) -> float | None:
    """Seconds since ``publish_time`` (RFC 3339, as Pub/Sub writes it), or ``None``.

    Pub/Sub's own form (``2026-12-03T20:28:37.963Z``, UTC, 0 to 9 fractional digits) is read
    with the part up to the second converted once per second; any other form goes to
    :meth:`datetime.fromisoformat`, which gives the same answer (a differential test holds
    the two together). This runs on every push, duplicates included.
    """
    global _last_second
    if not publish_time:
        return None
    fraction = publish_time[19:-1]
    if (
        publish_time[-1] == "Z"
        and publish_time[19:20] in (".", "Z")
        and publish_time[10:11] == "T"
        and (not fraction or (fraction[0] == "." and fraction[1:].isdigit()))
        and fraction.isascii()
        and len(fraction) <= 10
    ):
        second, seconds = _last_second
        if publish_time[:19] != second:
            second = publish_time[:19]
            try:
                seconds = datetime.fromisoformat(second + "+00:00").timestamp()
            except ValueError:
                return None
            _last_second = (second, seconds)
        return now - seconds - (float(fraction) if fraction else 0.0)
    try:
        return now - datetime.fromisoformat(publish_time).timestamp()
    except ValueError:
        return None


class Telemetry(Hook):
    """Logs, trace continuation and metrics for one :class:`~homing.Homing`.

    Args:
        events: the service's event registry (``homing.events``): metric labels name only
            the types registered there.
        metrics: Prometheus metrics to record into (none unless given).
        opentelemetry: OpenTelemetry spans and metrics (none unless given).
        summary: write the one summary line per push (logger ``homing.push``).
        log_duplicates: write a duplicate push's summary line at INFO too. By default it is
            written at DEBUG, so the default level drops it before it is made: a duplicate
            changed nothing, Cloud Run's request log records it, and the metrics count it
            (``HOMING_LOG_DUPLICATES``).
        log: the handler :func:`~homing.telemetry.configure_logging` installed (found on the
            root logger unless given): the summary line is then written straight to it,
            without the cost of a ``LogRecord`` (otherwise more than the rest of a duplicate
            push); the ``homing.push`` logger's level still applies. Without one, the line
            goes through :mod:`logging` like any other.
    """

    def __init__(
        self,
        events: EventRegistry,
        *,
        metrics: PrometheusMetrics | None = None,
        opentelemetry: OpenTelemetry | None = None,
        summary: bool = True,
        log_duplicates: bool = False,
        log: LogHandler | None = None,
    ) -> None:
        self.events = events
        self.log = log if log is not None else installed_handler()
        self.metrics = metrics
        self.opentelemetry = opentelemetry
        self.summary = summary
        self.log_duplicates = log_duplicates

    # -- publishing ---------------------------------------------------------------------------

    def before_sign(self, context: PublishContext) -> None:
        trace = current_trace()
        if self.opentelemetry is not None:
            trace = self.opentelemetry.create(context.event_type, trace)
        if trace is not None:
            context.attributes[TRACEPARENT_ATTRIBUTE] = trace.traceparent

    def after_publish(self, context: PublishContext) -> None:
        event_type = self._label(context.event_type)
        failed = context.error is not None
        if self.metrics is not None:
            self.metrics.record_publish(event_type, failed=failed)
        if self.opentelemetry is not None:
            self.opentelemetry.published(event_type, failed=failed)

    # -- pushes -------------------------------------------------------------------------------

    def before_handlers(self, context: PushContext) -> None:
        # The publisher's trace is continued (made current, a span started) only for a push
        # whose handler runs: a duplicate is answered and counted without either.
        push, verified = context.push, context.verified
        if push is None or verified is None:
            return
        state = context.state[self] = _Push()
        trace = message_trace(push, verified)
        if self.opentelemetry is not None:
            received_ns = time.time_ns() - int((time.perf_counter() - context.received) * 1e9)
            state.process = self.opentelemetry.start_process(trace, push, verified, received_ns)
            trace = state.process.context or trace
        if trace is not None:
            state.trace = trace
            state.token = _trace.set(trace)

    def on_push_handled(self, context: PushContext) -> None:
        result = context.result
        if result is None:
            return
        seconds = time.perf_counter() - context.received
        push, verified = context.push, context.verified
        state: _Push | None = context.state.get(self)
        if verified is None or push is None:
            event_type = UNAUTHENTICATED
            age = None
        else:
            event_type = self._label(verified.event_type)
            age = message_age(push.publish_time, time.time() - seconds)
        try:
            if self.metrics is not None:
                self.metrics.record_push(event_type, result.outcome, seconds, age)
            if self.opentelemetry is not None:
                process = state.process if state is not None else None
                if process is not None:
                    state.process = None  # type: ignore[union-attr]  # (the cycle below)
                    self.opentelemetry.end_process(process, result)
                outcome = result.outcome if result.outcome in OUTCOMES else OTHER
                self.opentelemetry.handled(event_type, outcome, seconds, age)
            if self.summary:
                trace = state.trace if state is not None else None
                self._summarise(result, push, verified, seconds, age, trace)
        finally:
            if state is not None and state.token is not None:
                # The token refers to the context that holds this state: dropping it here
                # leaves no reference cycle for the garbage collector to find on every push.
                token, state.token = state.token, None
                _trace.reset(token)

    def _label(self, event_type: str) -> str:
        return event_type if self.events.model(event_type) is not None else UNREGISTERED

    def _summarise(
        self,
        result: PushResult,
        push: PushMessage | None,
        verified: VerifiedMessage | None,
        seconds: float,
        age: float | None,
        trace: TraceContext | None,
    ) -> None:
        if not result.acked:
            level = logging.WARNING
        elif result.outcome == "duplicate" and not self.log_duplicates:
            level = logging.DEBUG
        else:
            level = logging.INFO
        if not push_logger.isEnabledFor(level):
            return  # (before anything is made: a duplicate's line costs nothing at INFO)
        if trace is None and push is not None and verified is not None:
            trace = message_trace(push, verified)  # named in the line, never made current
        # (round() with digits is several times slower than this, on every push)
        milliseconds = int(seconds * 1e6) / 1e3
        outcome = result.outcome
        if verified is None or push is None:
            message = f"push {outcome} ({result.status}) in {milliseconds:.1f} ms"
            fields: dict[str, Any] = {
                "outcome": outcome,
                "status": result.status,
                "duration_ms": milliseconds,
            }
        else:
            attempt = push.delivery_attempt
            message = (
                f"push {outcome}: {verified.event_type} {verified.event_id} (message "
                f"{push.message_id}, attempt {'?' if attempt is None else attempt}) "
                f"in {milliseconds:.1f} ms"
            )
            fields = {
                "outcome": outcome,
                "status": result.status,
                "duration_ms": milliseconds,
                "event_type": verified.event_type,
                "event_id": verified.event_id,
                "message_id": push.message_id,
                "delivery_attempt": attempt,
            }
            if push.subscription:
                fields["subscription"] = push.subscription
            if age is not None:
                fields["message_age_s"] = int(age * 1e3) / 1e3
        if self.log is not None:
            self.log.summary(level, _PUSH_LOGGER, message, fields, trace)
            return
        # The record is made directly: Logger.log() would also look up its caller's frame.
        record = push_logger.makeRecord(push_logger.name, level, __file__, 0, message, (), None)
        record.homing = fields
        record.homing_trace = trace  # the push's trace, current or not
        push_logger.handle(record)
