"""OpenTelemetry over the real wire: the OTLP/HTTP exporter, to a server that decodes its
protobuf payloads with ``opentelemetry-proto``.

No collector installs here, so the test server stands in for one: it accepts
``POST /v1/traces``, decodes each ``ExportTraceServiceRequest`` and keeps its spans.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

from homing import Homing, KeyRing, MemoryPublisher, Signer, build_push
from homing.asgi import PushEndpoint
from homing.signing import EVENT_ID
from homing.telemetry import Telemetry
from homing.telemetry.otel import OpenTelemetry
from tests.conftest import OrderPlaced


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver on 127.0.0.1: every span of every request it decoded."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Receiver)
        self.spans: list[tuple[dict[str, Any], Span]] = []  # (resource attributes, span)
        self.requests: list[tuple[str, str]] = []  # (path, content type)
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces"


class _Receiver(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.server.lock:
            self.server.requests.append((self.path, self.headers.get("content-type", "")))
            for resource_spans in request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    self.server.spans.extend((resource, span) for span in scope_spans.spans)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # (no line per request on stderr)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="otlp-collector", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def provider(collector: Collector) -> Iterator[TracerProvider]:
    provider = TracerProvider(resource=Resource.create({"service.name": "orders"}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=collector.endpoint, timeout=5))
    )
    yield provider
    provider.shutdown()


async def test_a_publish_and_its_push_arrive_as_one_trace(
    collector: Collector, provider: TracerProvider
) -> None:
    homing = Homing(signer=Signer(KeyRing.generate()), publisher=MemoryPublisher())
    homing.events.register("order.placed", OrderPlaced)
    handled: list[int] = []

    @homing.handler(OrderPlaced)
    async def handle(event: OrderPlaced) -> None:
        with provider.get_tracer("shop").start_as_current_span("charge card"):
            handled.append(event.order_id)

    otel = OpenTelemetry(tracer_provider=provider, meter_provider=NoOpMeterProvider())
    homing.hooks.append(Telemetry(homing.events, opentelemetry=otel, summary=False))

    # The request that publishes, then Pub/Sub's push of its message to the ASGI endpoint.
    with provider.get_tracer("web").start_as_current_span("POST /orders", kind=SpanKind.SERVER):
        await homing.publish(OrderPlaced(order_id=7, total_cents=5))
    assert isinstance(homing.publisher, MemoryPublisher)
    [(message_id, message)] = homing.publisher.messages
    subscription = "projects/p/subscriptions/orders-push"
    body = build_push(
        message.data,
        message.attributes,
        message_id=message_id,
        subscription=subscription,
        delivery_attempt=2,
    )
    transport = httpx.ASGITransport(app=PushEndpoint(homing))
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        response = await client.post(
            "/events", content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == 204, response.text
    assert handled == [7]

    assert provider.force_flush(10_000)
    with collector.lock:
        received = list(collector.spans)
        requests = list(collector.requests)
    assert requests
    assert {path for path, _ in requests} == {"/v1/traces"}
    assert {kind for _, kind in requests} == {"application/x-protobuf"}
    spans = {span.name: span for _, span in received}
    assert sorted(spans) == [
        "POST /orders",
        "charge card",
        "create order.placed",
        "process order.placed",
        "verify",
    ]
    assert {resource["service.name"] for resource, _ in received} == {"orders"}

    # One trace: the request, its event's create span, the push's process span under it.
    request, create = spans["POST /orders"], spans["create order.placed"]
    process, verify, charge = spans["process order.placed"], spans["verify"], spans["charge card"]
    assert len(request.trace_id) == 16
    assert {span.trace_id for span in spans.values()} == {request.trace_id}
    assert request.parent_span_id == b""
    assert create.parent_span_id == request.span_id
    assert process.parent_span_id == create.span_id
    assert verify.parent_span_id == process.span_id
    assert charge.parent_span_id == process.span_id
    assert create.kind == Span.SpanKind.SPAN_KIND_PRODUCER
    assert process.kind == Span.SpanKind.SPAN_KIND_CONSUMER
    assert verify.kind == Span.SpanKind.SPAN_KIND_INTERNAL

    # The messaging attributes, as they left the process.
    assert _attributes(create.attributes) == {
        "messaging.system": "gcp_pubsub",
        "messaging.operation.type": "create",
        "messaging.operation.name": "create",
        "homing.event.type": "order.placed",
    }
    processed = _attributes(process.attributes)
    assert processed == {
        "messaging.system": "gcp_pubsub",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.message.id": message_id,
        "messaging.message.body.size": len(message.data),
        "messaging.destination.subscription.name": subscription,
        "messaging.gcp_pubsub.message.delivery_attempt": 2,
        "homing.event.type": "order.placed",
        "homing.event.id": message.attributes[EVENT_ID],
        "homing.signature.scheme": "v1",
        "homing.outcome": "done",
        "http.response.status_code": 204,
    }
    assert process.status.code == process.status.STATUS_CODE_UNSET
    assert _attributes(verify.attributes) == {"homing.signature.scheme": "v1"}
