"""google-cloud-pubsub's own trace attribute, both ways, through the official emulator."""

from __future__ import annotations

import asyncio

import pytest
from google.cloud import pubsub_v1
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from homing import Homing, KeyRing, Signer, build_push
from homing.publishers.pubsub import REQUEST_SCOPED_BATCHING, PubSubPublisher
from homing.telemetry import TRACEPARENT_ATTRIBUTE, Telemetry, TraceContext, current_trace
from homing.telemetry.context import reset_current_trace, set_current_trace
from homing.telemetry.otel import OpenTelemetry
from tests.conftest import OrderPlaced
from tests.publishers.test_pubsub import _pull, emulator_env, topic

__all__ = ["emulator_env", "topic"]  # fixtures, shared with the publisher's tests

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """The process's global tracer provider (google-cloud-pubsub only uses the global one)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def _service(seen: list[TraceContext | None], **telemetry: object) -> Homing:
    homing = Homing(signer=Signer(KeyRing.generate()))
    homing.events.register("order.placed", OrderPlaced)

    @homing.handler(OrderPlaced)
    async def handle(event: OrderPlaced) -> None:
        seen.append(current_trace())

    homing.hooks.append(Telemetry(homing.events, **telemetry))  # type: ignore[arg-type]
    return homing


async def _push_back(homing: Homing, subscription: str) -> dict[str, str]:
    [message] = await asyncio.to_thread(_pull, subscription, 1)
    attributes = dict(message.attributes)
    body = build_push(message.data, attributes, message_id=message.message_id, subscription="s")
    assert (await homing.handle_push(body)).outcome == "done"
    return attributes


async def test_homing_writes_the_clients_attribute_for_its_subscribers(
    topic: tuple[str, str],
) -> None:
    topic_name, subscription = topic
    seen: list[TraceContext | None] = []
    homing = _service(seen)
    homing.publisher = PubSubPublisher(topic_name)
    token = set_current_trace(TraceContext(TRACE, SPAN))
    try:
        await homing.publish(OrderPlaced(order_id=1, total_cents=5))
    finally:
        reset_current_trace(token)
    await homing.publisher.aclose()

    attributes = await _push_back(homing, subscription)  # the signature still holds

    assert attributes["googclient_traceparent"] == attributes[TRACEPARENT_ATTRIBUTE]
    assert attributes[TRACEPARENT_ATTRIBUTE] == f"00-{TRACE}-{SPAN}-01"
    assert seen == [TraceContext(TRACE, SPAN)]


async def test_the_clients_own_tracing_is_continued(
    topic: tuple[str, str], exporter: InMemorySpanExporter
) -> None:
    topic_name, subscription = topic
    seen: list[TraceContext | None] = []
    homing = _service(seen, opentelemetry=OpenTelemetry())
    client = pubsub_v1.PublisherClient(
        batch_settings=REQUEST_SCOPED_BATCHING,
        publisher_options=pubsub_v1.types.PublisherOptions(enable_open_telemetry_tracing=True),
    )
    homing.publisher = PubSubPublisher(topic_name, client=client)
    tracer = trace.get_tracer("web")
    with tracer.start_as_current_span("POST /orders") as request:
        await homing.publish(OrderPlaced(order_id=1, total_cents=5))
    await homing.publisher.aclose()

    attributes = await _push_back(homing, subscription)

    request_trace = format(request.get_span_context().trace_id, "032x")
    client_context = attributes["googclient_traceparent"]
    assert client_context != attributes[TRACEPARENT_ATTRIBUTE]  # the client wrote its own
    assert client_context.split("-")[1] == request_trace
    [process] = [s for s in exporter.get_finished_spans() if s.name == "process order.placed"]
    assert process.parent is not None
    assert format(process.parent.span_id, "016x") == client_context.split("-")[2]
    assert format(process.parent.trace_id, "032x") == request_trace
    [continued] = seen
    assert continued is not None
    assert continued.trace_id == request_trace
