"""One battery of pushes through the ASGI endpoint, the Flask adapter and the Django view: the
same answers, the same ``homing.push`` summary lines and the same metric samples from each
(they share one HTTP edge, homing.http)."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from flask import Flask
from prometheus_client import CollectorRegistry

from homing import Homing, KeyRing, Signer, build_push
from homing.asgi import PushEndpoint
from homing.flask import FlaskHoming
from homing.signing import SIGNATURE
from homing.telemetry import Telemetry
from homing.telemetry.metrics import PrometheusMetrics
from homing.testing import push_body
from tests.conftest import POSTGRES_URL, OrderPlaced, Recorder
from tests.test_ingress import unwrapped

LIMIT = 4096
KEYS = {"k1": "a-secret-of-enough-length"}
JSON = [("content-type", "application/json")]


@dataclass(frozen=True)
class Request:
    """One request of a case; ``chunked`` sends the body in pieces, with no Content-Length."""

    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=lambda: list(JSON))
    method: str = "POST"
    chunked: bool = False


def _order(order_id: int) -> Callable[[Homing], list[Request]]:
    def make(homing: Homing) -> list[Request]:
        body = push_body(
            homing, OrderPlaced(order_id=order_id, total_cents=5), event_id="e-1", message_id="m-1"
        )
        return [Request(body)]

    return make


def _duplicate(homing: Homing) -> list[Request]:
    body = push_body(
        homing, OrderPlaced(order_id=1, total_cents=5), event_id="e-1", message_id="m-1"
    )
    return [Request(body), Request(body)]


def _bad_signature(homing: Homing) -> list[Request]:
    message = homing.sign(OrderPlaced(order_id=1, total_cents=5), event_id="e-1")
    attributes = {**message.attributes, SIGNATURE: "v1:" + "0" * 64}
    return [Request(build_push(message.data, attributes, message_id="m-1", subscription="s"))]


def _with_content_type(content_type: str) -> Callable[[Homing], list[Request]]:
    def make(homing: Homing) -> list[Request]:
        body = push_body(
            homing, OrderPlaced(order_id=1, total_cents=5), event_id="e-1", message_id="m-1"
        )
        return [Request(body, [("content-type", content_type)])]

    return make


def _unknown_event(homing: Homing) -> list[Request]:
    body = push_body(
        homing,
        {"n": 1},
        event_type="order.unheard.of",
        unregistered=True,
        event_id="e-1",
        message_id="m-1",
    )
    return [Request(body)]


def _oversized(chunked: bool) -> Callable[[Homing], list[Request]]:
    return lambda homing: [Request(b"{" + b" " * LIMIT + b"}", chunked=chunked)]


def _in_pieces(homing: Homing) -> list[Request]:
    body = push_body(
        homing, OrderPlaced(order_id=1, total_cents=5), event_id="e-1", message_id="m-1"
    )
    return [Request(body, chunked=True)]


def _unwrapped(repeat: bool) -> Callable[[Homing], list[Request]]:
    def make(homing: Homing) -> list[Request]:
        message = homing.sign(
            OrderPlaced(order_id=1, total_cents=5), event_id="e-1", attributes={"tenant": "a"}
        )
        body, headers = unwrapped(message.data, message.attributes, "m-1")
        pairs = [(name, value.decode("latin-1")) for name, value in headers.items()]
        if repeat:  # folded to "a, b" by both: the signature then fails
            pairs.append(("tenant", "b"))
        return [Request(body, pairs)]

    return make


def _many_headers(homing: Homing) -> list[Request]:
    # More headers than any push carries, none of them a shape's mark: a wrapped push reads
    # none of them, through either adapter.
    body = push_body(homing, OrderPlaced(order_id=1, total_cents=5), event_id="e-1")
    return [Request(body, JSON + [(f"x-padding-{n}", "x") for n in range(250)])]


def _mixed_marks(homing: Homing) -> list[Request]:
    [request] = _unwrapped(repeat=False)(homing)
    return [Request(request.body, [*request.headers, ("ce-id", "m-1")])]


def _cloud_task(homing: Homing) -> list[Request]:
    body = push_body(homing, OrderPlaced(order_id=1, total_cents=5), event_id="e-1")
    tasks = [
        ("x-cloudtasks-queuename", "homing"),
        ("x-cloudtasks-taskname", "t-1"),
        ("x-cloudtasks-taskretrycount", "0"),
        ("x-cloudtasks-taskexecutioncount", "0"),
    ]
    return [Request(body, JSON + tasks)]


#: name -> (the requests, the last answer's status and outcome; None for an empty 204)
BATTERY: dict[str, tuple[Callable[[Homing], list[Request]], int, str | None]] = {
    "good": (_order(1), 204, None),
    "duplicate": (_duplicate, 204, None),
    "bad signature": (_bad_signature, 401, "unauthenticated"),
    "malformed json": (lambda homing: [Request(b'{"message": ')], 400, "malformed"),
    "a wrapped body typed as a structured cloudevent": (
        _with_content_type("application/cloudevents+json"),
        400,
        "malformed",
    ),
    "a wrapped body typed as text": (_with_content_type("text/plain"), 204, None),
    "oversized, declared": (_oversized(chunked=False), 413, "too_large"),
    "oversized, chunked": (_oversized(chunked=True), 413, "too_large"),
    "in pieces": (_in_pieces, 204, None),
    "get": (lambda homing: [Request(method="GET", headers=[])], 405, "method_not_allowed"),
    "unknown event type": (_unknown_event, 200, "quarantined"),
    "handler failure": (_order(-3), 500, "handler_failed"),
    "handler asks to retry": (_order(-1), 503, "retry"),
    "handler drops": (_order(-2), 200, "quarantined"),
    "unwrapped": (_unwrapped(repeat=False), 204, None),
    "unwrapped, a repeated attribute header": (_unwrapped(repeat=True), 401, "unauthenticated"),
    "the marks of two shapes": (_mixed_marks, 400, "malformed"),
    "a cloud tasks request": (_cloud_task, 204, None),
    "a wrapped push among 250 other headers": (_many_headers, 204, None),
}


@dataclass
class Seen:
    """What one adapter answered, logged and counted for a case."""

    answers: list[tuple[int, Any, str | None, str | None]]
    summaries: list[tuple[str, str, dict[str, Any]]]
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]
    handled: int


def _service() -> tuple[Homing, Recorder, PrometheusMetrics]:
    recorder = Recorder()
    homing = Homing(signer=Signer(KeyRing(KEYS)), max_body_size=LIMIT)
    homing.events.register("order.placed", OrderPlaced)
    homing.handler(OrderPlaced)(recorder)
    metrics = PrometheusMetrics(registry=CollectorRegistry())
    telemetry = Telemetry(homing.events, metrics=metrics)
    telemetry.log = None  # the summary line through logging, where caplog sees it
    homing.hooks.append(telemetry)
    return homing, recorder, metrics


async def _asgi(homing: Homing, requests: list[Request], app: Any = None) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app or PushEndpoint(homing))
    responses = []
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for request in requests:
            content: bytes | AsyncIterator[bytes] = request.body
            if request.chunked:
                content = _pieces(request.body)
            responses.append(
                await client.request(
                    request.method, "/events", content=content, headers=request.headers
                )
            )
    return responses


async def _pieces(body: bytes) -> AsyncIterator[bytes]:
    third = len(body) // 3 + 1
    for start in range(0, len(body), third):
        yield body[start : start + third]


def _flask(homing: Homing, requests: list[Request]) -> Iterator[tuple[int, bytes, Any]]:
    events = FlaskHoming(homing)
    app = Flask(__name__)
    events.init_app(app)
    client = app.test_client()
    try:
        for request in requests:
            options: dict[str, Any] = {"data": request.body}
            if request.chunked:  # as gunicorn passes a chunked body: no length, terminated
                options = {
                    "input_stream": io.BytesIO(request.body),
                    "environ_overrides": {"wsgi.input_terminated": True},
                }
            headers = request.headers + [("transfer-encoding", "chunked")] * request.chunked
            response = client.open("/events", method=request.method, headers=headers, **options)
            yield response.status_code, response.data, response.headers
    finally:
        events.close()


_DURATION = re.compile(r" in \d+\.\d ms$")


def _summaries(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, dict[str, Any]]]:
    """The ``homing.push`` lines, their timings taken out (they differ from run to run)."""
    lines = []
    for record in caplog.records:
        if record.name != "homing.push":
            continue
        fields = {  # the structured fields the JSON formatter writes
            k: v
            for k, v in vars(record)["homing"].items()
            if k not in ("duration_ms", "message_age_s")
        }
        lines.append((record.levelname, _DURATION.sub(" in _ ms", record.getMessage()), fields))
    return lines


def _samples(metrics: PrometheusMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, but the timing histograms' buckets and sums (their counts stay)."""
    found = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if family.type == "histogram" and not sample.name.endswith("_count"):
                continue
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _answer(status: int, content: bytes, headers: Any) -> tuple[int, Any, str | None, str | None]:
    return (
        status,
        orjson.loads(content) if content else None,
        headers.get("content-type"),
        headers.get("allow"),
    )


async def _django(homing: Homing, requests: list[Request]) -> list[httpx.Response]:
    from django.core.handlers.asgi import ASGIHandler

    from homing.django import push_view
    from tests.support.djangoproject import serving

    with serving(push_view(homing)):
        return await _asgi(homing, requests, ASGIHandler())


async def _through(adapter: str, requests: list[Request], caplog: pytest.LogCaptureFixture) -> Seen:
    homing, recorder, metrics = _service()
    caplog.clear()
    if adapter == "flask":
        answers = [_answer(*response) for response in _flask(homing, requests)]
    else:
        serve = _asgi if adapter == "asgi" else _django
        answers = [
            _answer(r.status_code, r.content, r.headers) for r in await serve(homing, requests)
        ]
    return Seen(answers, _summaries(caplog), _samples(metrics), len(recorder.seen))


@pytest.fixture(scope="module")
def django_configured() -> None:
    from tests.support.djangoproject import configure

    configure(POSTGRES_URL)  # once per process


@pytest.mark.parametrize("case", BATTERY)
async def test_every_adapter_answers_logs_and_counts_alike(
    case: str, caplog: pytest.LogCaptureFixture, django_configured: None
) -> None:
    caplog.set_level(logging.DEBUG, logger="homing.push")  # a duplicate's line is at DEBUG
    make, status, outcome = BATTERY[case]
    requests = make(_service()[0])  # the same bytes to each adapter's service (same keys)
    asgi = await _through("asgi", requests, caplog)

    last_status, last_payload, content_type, allow = asgi.answers[-1]
    assert last_status == status
    if outcome is None:
        assert (last_payload, content_type) == (None, None)
    else:
        assert last_payload["outcome"] == outcome
        assert content_type == "application/json"
    assert allow == ("POST" if status == 405 else None)
    assert len(asgi.summaries) == (0 if status == 405 else len(asgi.answers))

    for adapter in ("flask", "django"):
        seen = await _through(adapter, requests, caplog)
        assert seen.answers == asgi.answers, adapter
        assert seen.summaries == asgi.summaries, adapter
        assert seen.samples == asgi.samples, adapter
        assert seen.handled == asgi.handled, adapter


def test_the_flask_adapter_loads_no_asgi_framework() -> None:
    # A Flask-only install has no Starlette: importing the adapter (and the edge it shares
    # with the ASGI endpoint) must not reach it, nor FastAPI or uvicorn.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys, homing.flask; print(json.dumps(sorted(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = {name.partition(".")[0] for name in orjson.loads(probe.stdout)}
    assert {"homing", "flask"} <= loaded
    assert loaded.isdisjoint({"starlette", "fastapi", "uvicorn"})
