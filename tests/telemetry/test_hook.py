"""The telemetry hook on the real pipeline: one summary line per push, the publisher's trace
continued across the hop, and bad trace input ignored."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from homing import (
    Homing,
    Hook,
    KeyRing,
    MemoryPublisher,
    OutgoingMessage,
    PublishContext,
    PushContext,
    Signer,
    build_push,
)
from homing.signing import legacy_signature
from homing.starlette import push_route
from homing.telemetry import (
    TRACEPARENT_ATTRIBUTE,
    Telemetry,
    TraceContext,
    TraceContextMiddleware,
    current_trace,
)
from tests.conftest import OrderPlaced
from tests.telemetry.conftest import JsonLines

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
LEGACY_SECRET = "the-article-shared-secret-value"
SECRET = "a-signing-secret-nobody-may-log"


class Seen:
    def __init__(self) -> None:
        self.traces: list[TraceContext | None] = []

    async def __call__(self, event: OrderPlaced) -> None:
        self.traces.append(current_trace())
        logging.getLogger("shop").info("handling order %d", event.order_id)
        if event.order_id < 0:
            raise RuntimeError("handler bug")


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def service(seen: Seen) -> Homing:
    homing = Homing(
        signer=Signer(KeyRing({"k1": SECRET}), legacy_secret=LEGACY_SECRET),
        publisher=MemoryPublisher(),
        accept_legacy_without_oidc=True,
    )
    homing.events.register("order.placed", OrderPlaced)
    homing.handler(OrderPlaced)(seen)
    homing.hooks.append(Telemetry(homing.events))
    return homing


@pytest.fixture
async def client(service: Homing) -> AsyncIterator[httpx.AsyncClient]:
    async def place(request: Request) -> JSONResponse:
        event_id = await service.publish(
            OrderPlaced(order_id=int(request.query_params["id"]), total_cents=5)
        )
        return JSONResponse({"event_id": event_id})

    app = Starlette(
        routes=[Route("/orders", place, methods=["POST"]), push_route(service, "/events")]
    )
    transport = httpx.ASGITransport(app=TraceContextMiddleware(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as c:
        yield c


def _published(service: Homing) -> tuple[str, OutgoingMessage]:
    assert isinstance(service.publisher, MemoryPublisher)
    return service.publisher.messages[-1]


def _push(
    message: OutgoingMessage, attributes: Mapping[str, str] | None = None, **extra: object
) -> bytes:
    return build_push(
        message.data,
        message.attributes if attributes is None else attributes,
        message_id="m-1",
        subscription="projects/p/subscriptions/s",
        **extra,  # type: ignore[arg-type]
    )


async def test_a_request_and_its_event_are_one_trace(
    client: httpx.AsyncClient, service: Homing, seen: Seen, json_lines: JsonLines
) -> None:
    response = await client.post("/orders?id=1", headers={"traceparent": f"00-{TRACE}-{SPAN}-01"})
    _, message = _published(service)
    assert message.attributes[TRACEPARENT_ATTRIBUTE] == f"00-{TRACE}-{SPAN}-01"

    pushed = await client.post("/events", content=_push(message, delivery_attempt=2))

    assert pushed.status_code == 204
    assert seen.traces == [TraceContext(TRACE, SPAN, True)]
    [summary] = json_lines.summaries()
    assert summary["logging.googleapis.com/trace"] == f"projects/proj-1/traces/{TRACE}"
    assert summary["logging.googleapis.com/spanId"] == SPAN
    assert summary["severity"] == "INFO"
    assert summary["event_type"] == "order.placed"
    assert summary["event_id"] == response.json()["event_id"]
    assert summary["message_id"] == "m-1"
    assert summary["delivery_attempt"] == 2
    assert summary["outcome"] == "done"
    assert summary["duration_ms"] >= 0
    assert summary["message_age_s"] >= 0
    [handler_line] = [e for e in json_lines.entries if e["logger"] == "shop"]
    assert handler_line["logging.googleapis.com/trace"] == f"projects/proj-1/traces/{TRACE}"
    assert current_trace() is None  # the push's context ended with it


async def test_a_cloud_run_trace_header_travels_too(
    client: httpx.AsyncClient, service: Homing, seen: Seen
) -> None:
    await client.post("/orders?id=1", headers={"x-cloud-trace-context": f"{TRACE}/7;o=1"})
    _, message = _published(service)
    await client.post("/events", content=_push(message))
    assert seen.traces == [TraceContext(TRACE, "0000000000000007", True)]


async def test_every_push_has_exactly_one_summary_line(
    client: httpx.AsyncClient, service: Homing, json_lines: JsonLines
) -> None:
    await client.post("/orders?id=1", headers={"traceparent": f"00-{TRACE}-{SPAN}-01"})
    _, good = _published(service)
    await client.post("/orders?id=-1")
    _, failing = _published(service)
    forged = {**good.attributes, "homing-signature": "v1:" + "00" * 32}

    answers = [
        (await client.post("/events", content=body)).status_code
        for body in (_push(good), _push(good), _push(failing), _push(good, forged), b"{")
    ]

    assert answers == [204, 204, 500, 401, 400]
    summaries = json_lines.summaries()
    assert [s["outcome"] for s in summaries] == [
        "done",
        "duplicate",
        "handler_failed",
        "unauthenticated",
        "malformed",
    ]
    # A duplicate changed nothing: its line is written at DEBUG (this test logs DEBUG).
    assert [s["severity"] for s in summaries] == ["INFO", "DEBUG", "WARNING", "WARNING", "WARNING"]
    assert summaries[1]["logging.googleapis.com/trace"] == f"projects/proj-1/traces/{TRACE}"
    assert "event_type" not in summaries[3]  # nothing unauthenticated is trusted, or logged
    assert summaries[3].get("logging.googleapis.com/trace") != f"projects/proj-1/traces/{TRACE}"


async def test_a_duplicate_is_counted_not_logged_unless_asked_and_makes_no_trace_current(
    client: httpx.AsyncClient, service: Homing, json_lines: JsonLines
) -> None:
    current: list[str | None] = []

    class Watch(Hook):
        """Runs inside Telemetry (closing points run in reverse): sees what it made current."""

        def on_push_handled(self, context: PushContext) -> None:
            trace = current_trace()
            current.append(None if trace is None else trace.trace_id)

    service.hooks.append(Watch())
    [telemetry] = [hook for hook in service.hooks if isinstance(hook, Telemetry)]
    await client.post("/orders?id=1", headers={"traceparent": f"00-{TRACE}-{SPAN}-01"})
    _, good = _published(service)
    logging.getLogger("homing.push").setLevel(logging.INFO)  # the default level
    try:
        for _ in range(2):
            assert (await client.post("/events", content=_push(good))).status_code == 204
    finally:
        logging.getLogger("homing.push").setLevel(logging.NOTSET)
    # The handler's push continued the publisher's trace; the duplicate did not (what is
    # current there is the push request's own, from the middleware).
    assert current[0] == TRACE
    assert current[1] != TRACE
    assert [s["outcome"] for s in json_lines.summaries()] == ["done"]

    telemetry.log_duplicates = True  # HOMING_LOG_DUPLICATES
    assert (await client.post("/events", content=_push(good))).status_code == 204
    duplicate = json_lines.summaries()[-1]
    assert (duplicate["outcome"], duplicate["severity"]) == ("duplicate", "INFO")
    # Its line still names the publisher's trace, without making it current.
    assert duplicate["logging.googleapis.com/trace"] == f"projects/proj-1/traces/{TRACE}"
    assert current[-1] != TRACE


async def test_a_body_refused_for_its_size_has_its_summary_line_too(
    client: httpx.AsyncClient, service: Homing, json_lines: JsonLines
) -> None:
    service.max_body_size = 64
    response = await client.post("/events", content=b"x" * 65)
    assert response.status_code == 413
    [summary] = json_lines.summaries()
    assert summary["outcome"] == "too_large"
    assert summary["status"] == 413


async def test_an_unsigned_trace_attribute_cannot_be_added(
    client: httpx.AsyncClient, service: Homing, seen: Seen
) -> None:
    await client.post("/orders?id=1")  # no trace header: a new trace, signed into the message
    _, message = _published(service)
    tampered = {**message.attributes, TRACEPARENT_ATTRIBUTE: f"00-{TRACE}-{SPAN}-01"}
    assert (await client.post("/events", content=_push(message, tampered))).status_code == 401
    assert seen.traces == []


async def test_a_malformed_signed_trace_attribute_is_ignored(
    client: httpx.AsyncClient, service: Homing, seen: Seen, json_lines: JsonLines
) -> None:
    assert service.signer is not None
    data = b'{"order_id":1,"total_cents":5}'
    for value in ("00-nonsense", f"00-{TRACE}-{SPAN}-01" + "x" * 900):
        attributes = service.signer.sign(
            data, "order.placed", context={TRACEPARENT_ATTRIBUTE: value}
        )
        body = build_push(data, attributes, message_id=value[:8], subscription="s")
        assert (await client.post("/events", content=body)).status_code == 204
    # Not the message's: the push request's own trace (a new one, here).
    assert len(seen.traces) == 2
    assert all(t is None or t.trace_id != TRACE for t in seen.traces)
    assert [s["outcome"] for s in json_lines.summaries()] == ["done", "done"]


async def test_the_google_clients_trace_attribute_is_used_only_within_the_signed_trace(
    client: httpx.AsyncClient, service: Homing, seen: Seen
) -> None:
    await client.post("/orders?id=1", headers={"traceparent": f"00-{TRACE}-{SPAN}-01"})
    _, message = _published(service)
    client_span = "1111111111111111"
    same_trace = {**message.attributes, "googclient_traceparent": f"00-{TRACE}-{client_span}-01"}
    await client.post("/events", content=_push(message, same_trace))
    other = "ffffffffffffffffffffffffffffffff"
    await client.post("/orders?id=2", headers={"traceparent": f"00-{TRACE}-{SPAN}-01"})
    _, second = _published(service)
    other_trace = {**second.attributes, "googclient_traceparent": f"00-{other}-{client_span}-01"}
    await client.post("/events", content=_push(second, other_trace))
    assert seen.traces == [TraceContext(TRACE, client_span, True), TraceContext(TRACE, SPAN, True)]


async def test_without_signatures_the_google_clients_attribute_is_the_trace(seen: Seen) -> None:
    homing = Homing(signer=None, auth="none")  # warns, by design
    homing.events.register("order.placed", OrderPlaced)
    homing.handler(OrderPlaced)(seen)
    homing.hooks.append(Telemetry(homing.events))
    data = b'{"order_id":1,"total_cents":5}'
    attributes = {"event-type": "order.placed", "googclient_traceparent": f"00-{TRACE}-{SPAN}-00"}
    result = await homing.handle_push(
        build_push(data, attributes, message_id="1", subscription="s")
    )
    assert result.outcome == "done"
    assert seen.traces == [TraceContext(TRACE, SPAN, False)]


async def test_the_legacy_format_signs_no_attribute_so_its_trace_is_ignored(
    service: Homing, seen: Seen
) -> None:
    data = b'{"order_id":1,"total_cents":5}'
    attributes = {
        "event-type": "order.placed",
        "signature": legacy_signature(LEGACY_SECRET, data),
        TRACEPARENT_ATTRIBUTE: f"00-{TRACE}-{SPAN}-01",
        "googclient_traceparent": f"00-{TRACE}-{SPAN}-01",
    }
    result = await service.handle_push(
        build_push(data, attributes, message_id="1", subscription="s")
    )
    assert result.outcome == "done"
    assert seen.traces == [None]


async def test_no_secret_token_or_data_reaches_a_log_line(
    client: httpx.AsyncClient, service: Homing, json_lines: JsonLines
) -> None:
    marker = "cardholder-4242-private"
    data = (f'{{"order_id":1,"total_cents":5,"note":"{marker}"}}').encode()
    assert service.signer is not None
    good = service.signer.sign(data, "order.placed")
    bodies = [
        build_push(data, good, message_id="1", subscription="s"),
        build_push(
            b'{"order_id":"%s"}' % marker.encode(),
            service.signer.sign(b'{"order_id":"%s"}' % marker.encode(), "order.placed"),
            message_id="2",
            subscription="s",
        ),
        build_push(
            data, {**good, "homing-signature": "v1:" + "ab" * 32}, message_id="3", subscription="s"
        ),
        build_push(
            data,
            {"event-type": "order.placed", "signature": "00" * 32},
            message_id="4",
            subscription="s",
        ),
        b'{"message": {"data": "%s"}}' % marker.encode(),
    ]
    token = "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNlY3JldA"
    for body in bodies:
        await client.post("/events", content=body, headers={"authorization": token})
    text = "\n".join(json_lines.lines)
    assert len(json_lines.summaries()) == len(bodies)
    for secret in (SECRET, LEGACY_SECRET, marker, token.split()[1], good["homing-signature"]):
        assert secret not in text


class Broken(Hook):
    def before_sign(self, context: PublishContext) -> None:
        raise RuntimeError("before_sign")

    def after_publish(self, context: PublishContext) -> None:
        raise RuntimeError("after_publish")

    def on_push_received(self, context: PushContext) -> None:
        raise RuntimeError("received")

    def on_authenticated(self, context: PushContext) -> None:
        raise RuntimeError("authenticated")

    def before_handlers(self, context: PushContext) -> None:
        raise RuntimeError("handlers")

    def on_push_handled(self, context: PushContext) -> None:
        raise RuntimeError("handled")


async def test_a_failing_hook_never_fails_a_publish_or_a_push(
    service: Homing, seen: Seen, json_lines: JsonLines
) -> None:
    service.hooks.insert(0, Broken())
    await service.publish(OrderPlaced(order_id=1, total_cents=5))
    _, message = _published(service)
    result = await service.handle_push(_push(message))
    assert result.outcome == "done"
    assert len(seen.traces) == 1
    failures = [e for e in json_lines.entries if e["message"].startswith("hook Broken.")]
    assert len(failures) == 6  # every point: the other hooks still ran at each
    assert len(json_lines.summaries()) == 1  # the other hooks still ran


def test_without_the_otel_and_metrics_extras(tmp_path: Path) -> None:
    """homing and its logs and trace continuation work with neither extra installed."""
    script = tmp_path / "bare.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys

            class Missing:
                def find_spec(self, name, path=None, target=None):
                    if name.split(".")[0] in ("opentelemetry", "prometheus_client"):
                        raise ModuleNotFoundError(f"No module named {name!r}")
                    return None

            sys.meta_path.insert(0, Missing())
            from pydantic import BaseModel
            from homing import Homing, KeyRing, Signer, build_push
            from homing.telemetry import Telemetry

            class Ping(BaseModel):
                n: int

            homing = Homing(signer=Signer(KeyRing.generate()))
            homing.events.register("ping", Ping)

            @homing.handler(Ping)
            async def handle(event: Ping) -> None: ...

            homing.hooks.append(Telemetry(homing.events))
            attributes = homing.signer.sign(b'{"n":1}', "ping")
            body = build_push(b'{"n":1}', attributes, message_id="1", subscription="s")
            print(asyncio.run(homing.handle_push(body)).outcome)
            try:
                import homing.telemetry.metrics
            except ImportError as exc:
                print(exc)
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True, timeout=30
    ).stdout.splitlines()
    assert out == [
        "done",
        "homing's Prometheus metrics need prometheus-client: pip install 'homing[metrics]'",
    ]
