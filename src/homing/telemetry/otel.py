"""OpenTelemetry spans and metrics for publishing and pushes (``pip install homing[otel]``).

Spans follow the OpenTelemetry messaging conventions for Pub/Sub (``messaging.system`` is
``gcp_pubsub``):

- ``create <event type>`` (PRODUCER), when an event is signed: a child of the current span
  (or of the request's trace context), and the context the message carries;
- ``process <event type>`` (CONSUMER), for a push, from receipt to answer: a child of the
  message's ``create`` span, so the request and its background work are one trace; linked to
  the push request's own span when an HTTP instrumentation made one;
- ``verify``, the push's authentication, a child of ``process``.

Metrics: ``messaging.client.sent.messages``, ``messaging.client.consumed.messages``,
``messaging.process.duration`` and ``homing.message.age``. The SDK, its exporters and sampling
are the application's to configure; homing uses the global providers unless given others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from homing.telemetry.context import TraceContext

if TYPE_CHECKING:
    from homing.ingress import PushMessage
    from homing.outcome import PushResult
    from homing.signing import VerifiedMessage

SYSTEM = "gcp_pubsub"


def _otel_parent(parent: TraceContext) -> Any:
    span_context = SpanContext(
        trace_id=int(parent.trace_id, 16),
        span_id=int(parent.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if parent.sampled else TraceFlags.DEFAULT),
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context), otel_context.Context())


def _ours(span_context: SpanContext) -> TraceContext:
    return TraceContext(
        format(span_context.trace_id, "032x"),
        format(span_context.span_id, "016x"),
        span_context.trace_flags.sampled,
    )


class ProcessSpan:
    """A push's ``process`` span, made current until :meth:`OpenTelemetry.end_process`."""

    __slots__ = ("context", "span", "token")

    def __init__(self, span: Any, token: object, context: TraceContext | None) -> None:
        self.span = span
        self.token = token
        self.context = context


class OpenTelemetry:
    """Makes homing's spans and metrics with the given (default: global) providers.

    Args:
        tracer_provider: an ``opentelemetry.trace.TracerProvider``.
        meter_provider: an ``opentelemetry.metrics.MeterProvider``.
    """

    def __init__(self, *, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        from homing._version import __version__

        self.tracer = trace.get_tracer("homing", __version__, tracer_provider=tracer_provider)
        meter = otel_metrics.get_meter("homing", __version__, meter_provider=meter_provider)
        self._sent = meter.create_counter(
            "messaging.client.sent.messages", unit="{message}", description="Events published."
        )
        self._consumed = meter.create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="Pushes answered, by event type and outcome.",
        )
        self._duration = meter.create_histogram(
            "messaging.process.duration", unit="s", description="Time from receipt to answer."
        )
        self._age = meter.create_histogram(
            "homing.message.age", unit="s", description="Now minus the publish time, at handling."
        )
        self._attributes: dict[tuple[str, str], Mapping[str, str]] = {}

    # -- publishing ---------------------------------------------------------------------------

    def create(self, event_type: str, parent: TraceContext | None) -> TraceContext | None:
        """Record the ``create`` span of an event being signed; returns the context it carries."""
        current = otel_context.get_current()
        if parent is not None:
            # The request's own context (TraceContextMiddleware) wins over a current span in
            # another trace: such a span did not continue the incoming headers (e.g. a
            # framework's span with no HTTP instrumentation under it).
            span_context = trace.get_current_span(current).get_span_context()
            if not span_context.is_valid or f"{span_context.trace_id:032x}" != parent.trace_id:
                current = _otel_parent(parent)
        span = self.tracer.start_span(
            f"create {event_type}",
            context=current,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "create",
                "messaging.operation.name": "create",
                "homing.event.type": event_type,
            },
        )
        span.end()
        span_context = span.get_span_context()
        return _ours(span_context) if span_context.is_valid else parent

    def published(self, event_type: str, *, failed: bool) -> None:
        attributes: dict[str, str] = {"messaging.system": SYSTEM, "homing.event.type": event_type}
        if failed:
            attributes["error.type"] = "publish_failed"
        self._sent.add(1, attributes)

    # -- pushes -------------------------------------------------------------------------------

    def start_process(
        self,
        parent: TraceContext | None,
        push: PushMessage,
        verified: VerifiedMessage,
        received_ns: int,
    ) -> ProcessSpan:
        """Start the push's ``process`` span (and record its ``verify`` span); make it current."""
        current = otel_context.get_current()
        request_span = trace.get_current_span(current).get_span_context()
        links = None
        if parent is not None:
            start_context = _otel_parent(parent)
            if request_span.is_valid:  # the push request's own span (an HTTP instrumentation)
                links = [Link(request_span, {"homing.link": "push_request"})]
        else:
            start_context = current
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.message.id": push.message_id,
            "messaging.message.body.size": len(push.data),
            "homing.event.type": verified.event_type,
            "homing.event.id": verified.event_id,
            "homing.signature.scheme": verified.scheme,
        }
        if push.subscription:
            attributes["messaging.destination.subscription.name"] = push.subscription
        if push.delivery_attempt is not None:
            attributes["messaging.gcp_pubsub.message.delivery_attempt"] = push.delivery_attempt
        if push.ordering_key:
            attributes["messaging.gcp_pubsub.message.ordering_key"] = push.ordering_key
        span = self.tracer.start_span(
            f"process {verified.event_type}",
            context=start_context,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            start_time=received_ns,
        )
        in_span = trace.set_span_in_context(span, current)
        verify = self.tracer.start_span(
            "verify",
            context=in_span,
            kind=SpanKind.INTERNAL,
            attributes={"homing.signature.scheme": verified.scheme},
            start_time=received_ns,
        )
        verify.end()
        span_context = span.get_span_context()
        token = otel_context.attach(in_span)
        return ProcessSpan(span, token, _ours(span_context) if span_context.is_valid else None)

    def end_process(self, process: ProcessSpan, result: PushResult) -> None:
        span = process.span
        span.set_attribute("homing.outcome", result.outcome)
        span.set_attribute("http.response.status_code", result.status)
        if not result.acked:
            span.set_attribute("error.type", result.outcome)
            span.set_status(Status(StatusCode.ERROR, result.outcome))
        span.end()
        otel_context.detach(process.token)  # type: ignore[arg-type]

    def handled(self, event_type: str, outcome: str, seconds: float, age: float | None) -> None:
        """Record one answered push; labels already bounded by the caller."""
        key = (event_type, outcome)
        attributes = self._attributes.get(key)
        if attributes is None:
            attributes = self._attributes[key] = {
                "messaging.system": SYSTEM,
                "messaging.operation.name": "process",
                "homing.event.type": event_type,
                "homing.outcome": outcome,
            }
        self._consumed.add(1, attributes)
        self._duration.record(seconds, attributes)
        if age is not None:
            self._age.record(max(age, 0.0), attributes)


def sdk_configured() -> bool:
    """Whether an OpenTelemetry SDK tracer provider is installed globally.

    Without one every span is a no-op that still costs microseconds per push; a service can
    leave :class:`OpenTelemetry` out then (the trace context travels all the same).
    """
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
