"""OpenTelemetry spans and metrics, recorded by the SDK's in-memory exporter and reader."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import homing
from homing import Homing, KeyRing, MemoryPublisher, Retry, Signer, build_push
from homing.hooks import Hooks
from homing.telemetry import TRACEPARENT_ATTRIBUTE, Telemetry, current_trace, parse_traceparent
from homing.telemetry.otel import OpenTelemetry
from tests.conftest import OrderPlaced
from tests.telemetry.conftest import JsonLines


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def service(provider: TracerProvider, reader: InMemoryMetricReader) -> Homing:
    homing = Homing(signer=Signer(KeyRing.generate()), publisher=MemoryPublisher())
    homing.events.register("order.placed", OrderPlaced)

    @homing.handler(OrderPlaced)
    async def handle(event: OrderPlaced) -> None:
        with provider.get_tracer("shop").start_as_current_span("charge card"):
            pass
        if event.order_id < 0:
            raise Retry("later")

    otel = OpenTelemetry(tracer_provider=provider, meter_provider=MeterProvider([reader]))
    homing.hooks.append(Telemetry(homing.events, opentelemetry=otel))
    return homing


def _by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


async def _publish_and_push(service: Homing, provider: TracerProvider, order_id: int) -> str:
    with provider.get_tracer("web").start_as_current_span("POST /orders", kind=SpanKind.SERVER):
        await service.publish(OrderPlaced(order_id=order_id, total_cents=5))
    assert isinstance(service.publisher, MemoryPublisher)
    message_id, message = service.publisher.messages[-1]
    body = build_push(
        message.data,
        message.attributes,
        message_id=message_id,
        subscription="s",
        delivery_attempt=1,
    )
    return (await service.handle_push(body)).outcome


async def test_the_request_its_event_and_the_handler_are_one_trace(
    service: Homing, provider: TracerProvider, exporter: InMemorySpanExporter, json_lines: JsonLines
) -> None:
    assert await _publish_and_push(service, provider, 1) == "done"
    spans = _by_name(exporter)
    request, create = spans["POST /orders"], spans["create order.placed"]
    process, verify = spans["process order.placed"], spans["verify"]
    charge = spans["charge card"]
    assert request.context is not None
    assert create.context is not None
    assert process.context is not None

    trace_ids = {s.context.trace_id for s in spans.values() if s.context is not None}
    assert trace_ids == {request.context.trace_id}
    assert create.parent is not None
    assert create.parent.span_id == request.context.span_id
    assert process.parent is not None
    assert process.parent.span_id == create.context.span_id
    assert verify.parent is not None
    assert verify.parent.span_id == process.context.span_id
    assert charge.parent is not None
    assert charge.parent.span_id == process.context.span_id

    assert create.kind is SpanKind.PRODUCER
    assert process.kind is SpanKind.CONSUMER
    assert process.attributes is not None
    assert process.attributes["messaging.system"] == "gcp_pubsub"
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.gcp_pubsub.message.delivery_attempt"] == 1
    assert process.attributes["homing.outcome"] == "done"
    assert process.status.status_code is StatusCode.UNSET

    [summary] = json_lines.summaries()
    assert summary["logging.googleapis.com/spanId"] == format(process.context.span_id, "016x")
    assert summary["logging.googleapis.com/trace"].endswith(
        format(request.context.trace_id, "032x")
    )
    assert current_trace() is None
    assert not trace.get_current_span().get_span_context().is_valid  # detached again


async def test_the_message_carries_the_create_spans_context(
    service: Homing, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    with provider.get_tracer("web").start_as_current_span("POST /orders"):
        message = service.sign(OrderPlaced(order_id=1, total_cents=5))
    create = _by_name(exporter)["create order.placed"]
    carried = parse_traceparent(message.attributes[TRACEPARENT_ATTRIBUTE])
    assert carried is not None
    assert create.context is not None
    assert carried.span_id == format(create.context.span_id, "016x")


async def test_a_retry_is_an_error_span(
    service: Homing, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    assert await _publish_and_push(service, provider, -1) == "retry"
    process = _by_name(exporter)["process order.placed"]
    assert process.status.status_code is StatusCode.ERROR
    assert process.attributes is not None
    assert process.attributes["error.type"] == "retry"


async def test_metrics_through_opentelemetry(
    service: Homing, provider: TracerProvider, reader: InMemoryMetricReader
) -> None:
    await _publish_and_push(service, provider, 1)
    await _publish_and_push(service, provider, -1)
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[object]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points[metric.name] = list(metric.data.data_points)
    consumed = {
        (p.attributes["homing.outcome"], p.value)  # type: ignore[attr-defined]
        for p in points["messaging.client.consumed.messages"]
    }
    assert consumed == {("done", 1), ("retry", 1)}
    assert sum(p.count for p in points["messaging.process.duration"]) == 2  # type: ignore[attr-defined]
    assert sum(p.count for p in points["homing.message.age"]) == 2  # type: ignore[attr-defined]
    sent = points["messaging.client.sent.messages"]
    assert sum(p.value for p in sent) == 2  # type: ignore[attr-defined]


async def test_without_an_sdk_the_api_costs_nothing_and_the_trace_still_travels() -> None:
    homing = Homing(signer=Signer(KeyRing.generate()), publisher=MemoryPublisher())
    homing.events.register("order.placed", OrderPlaced)
    seen = []

    @homing.handler(OrderPlaced)
    async def handle(event: OrderPlaced) -> None:
        seen.append(current_trace())

    no_sdk = trace.NoOpTracerProvider()
    homing.hooks.append(
        Telemetry(homing.events, opentelemetry=OpenTelemetry(tracer_provider=no_sdk))
    )
    from homing.telemetry.context import TraceContext, reset_current_trace, set_current_trace

    token = set_current_trace(TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"))
    try:
        message = homing.sign(OrderPlaced(order_id=1, total_cents=5))
    finally:
        reset_current_trace(token)
    body = build_push(message.data, message.attributes, message_id="1", subscription="s")
    assert (await homing.handle_push(body)).outcome == "done"
    assert seen == [TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")]


async def test_the_requests_headers_win_over_a_span_in_another_trace(
    service: Homing, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    from homing.telemetry.context import TraceContext, reset_current_trace, set_current_trace

    request = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    token = set_current_trace(request)  # what TraceContextMiddleware read from the headers
    try:
        # A framework's span that did not continue the headers: a trace of its own.
        with provider.get_tracer("framework").start_as_current_span("endpoint"):
            message = service.sign(OrderPlaced(order_id=1, total_cents=5))
    finally:
        reset_current_trace(token)
    carried = parse_traceparent(message.attributes[TRACEPARENT_ATTRIBUTE])
    assert carried is not None
    assert carried.trace_id == request.trace_id
    create = _by_name(exporter)["create order.placed"]
    assert create.parent is not None
    assert f"{create.parent.span_id:016x}" == request.span_id


def _made_by_the_push_path(garbage: list[object]) -> list[object]:
    """What of ``garbage`` the push path made: the collector also finds what other threads of
    the test process leave (a Pub/Sub client's retries from an earlier test, say), and a cycle
    of a push holds at least one of these."""

    def ours(thing: object) -> bool:
        if isinstance(thing, contextvars.Context | contextvars.Token | asyncio.Future):
            return True
        code = getattr(thing, "f_code", None) or getattr(thing, "cr_code", None)
        code = code or getattr(thing, "__code__", None)
        if isinstance(code, types.CodeType):
            return code.co_filename.startswith(_PUSH_PATH_SOURCES)
        return type(thing).__module__.startswith(("homing.", "opentelemetry."))

    return [thing for thing in garbage if ours(thing)]


_PUSH_PATH_SOURCES = (
    str(Path(homing.__file__).parent),
    str(Path(asyncio.__file__).parent),
    __file__,
)


@pytest.mark.parametrize("with_otel", [False, True])
async def test_a_handled_push_leaves_nothing_for_the_cycle_collector(
    service: Homing, provider: TracerProvider, json_lines: JsonLines, with_otel: bool
) -> None:
    """Each push ends with no reference cycle (a trace token kept in the state its own context
    holds made one per push: the collector's work, on every push)."""
    if not with_otel:
        service.hooks = Hooks([Telemetry(service.events)])
    pushes = []
    for order_id in range(20):
        with provider.get_tracer("web").start_as_current_span("POST /orders"):
            await service.publish(OrderPlaced(order_id=order_id, total_cents=5))
        assert isinstance(service.publisher, MemoryPublisher)
        message_id, message = service.publisher.messages[-1]
        pushes.append(
            build_push(message.data, message.attributes, message_id=message_id, subscription="s")
        )
    await asyncio.create_task(service.handle_push(pushes[0]))  # imports and caches, first
    gc.collect()
    gc.disable()
    debug = gc.get_debug()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds stays in gc.garbage
    try:
        for body in pushes[1:] + pushes[1:]:  # new events, then duplicates
            await asyncio.create_task(service.handle_push(body))  # a server's task per push
        gc.collect()
        garbage = _made_by_the_push_path(gc.garbage)
    finally:
        gc.set_debug(debug)
        gc.garbage.clear()
        gc.enable()
    assert garbage == []
    assert len(json_lines.summaries()) == 39
