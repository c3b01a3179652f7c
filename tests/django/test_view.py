"""The push view under ASGI and WSGI answers as homing.asgi.PushEndpoint does (the view that
django.md's "The push view" mounts)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from starlette.applications import Starlette

from homing import Homing, KeyRing, MemoryPublisher, Signer
from homing.django import DjangoDedupeStore, DjangoQuarantineStore, push_view
from homing.starlette import push_route
from homing.testing import push_body
from homing.testing._envelopes import DEFECTS
from tests.conftest import OrderPlaced, Recorder
from tests.support.djangoproject import serving

Answer = tuple[int, Any, dict[str, str]]
Post = Callable[..., Awaitable[Answer]]


def _service(recorder: Recorder, database: str = "default", **options: Any) -> Homing:
    homing = Homing(
        signer=Signer(KeyRing({"k1": "a-secret-of-enough-length"})),
        publisher=MemoryPublisher(),
        dedupe=DjangoDedupeStore(database),
        quarantine=DjangoQuarantineStore(database),
        **options,
    )
    homing.events.register("order.placed", OrderPlaced)
    homing.handler(OrderPlaced)(recorder)
    return homing


async def _through_asgi(method: str, body: bytes, headers: dict[str, str]) -> Answer:
    transport = httpx.ASGITransport(app=ASGIHandler())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.request(method, "/events", content=body, headers=headers)
    return _answer(response)


async def _through_wsgi(method: str, body: bytes, headers: dict[str, str]) -> Answer:
    def call() -> httpx.Response:
        transport = httpx.WSGITransport(app=WSGIHandler())
        with httpx.Client(transport=transport, base_url="http://testserver") as client:
            return client.request(method, "/events", content=body, headers=headers)

    return _answer(await asyncio.to_thread(call))


def _answer(response: httpx.Response) -> Answer:
    payload = response.json() if response.content else None
    return response.status_code, payload, dict(response.headers)


@pytest.fixture(params=["asgi", "wsgi"])
def post(request: pytest.FixtureRequest) -> Post:
    through = _through_asgi if request.param == "asgi" else _through_wsgi

    async def send(body: bytes, method: str = "POST", **headers: str) -> Answer:
        return await through(method, body, {"content-type": "application/json", **headers})

    return send


async def _reference(homing: Homing, body: bytes, method: str = "POST") -> tuple[int, Any]:
    app = Starlette(routes=[push_route(homing, "/events")])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.request(
            method, "/events", content=body, headers={"content-type": "application/json"}
        )
    return response.status_code, (response.json() if response.content else None)


async def test_a_signed_push_runs_its_handler_once(post: Post, recorder: Recorder) -> None:
    homing = _service(recorder)
    body = push_body(homing, OrderPlaced(order_id=7, total_cents=100))
    with serving(push_view(homing)):
        first = await post(body)
        again = await post(body)
    assert first[:2] == (204, None)
    assert again[:2] == (204, None)
    assert [event.order_id for event, _ in recorder.seen] == [7]


@pytest.mark.parametrize("defect", DEFECTS)
async def test_a_defective_push_is_answered_as_the_asgi_endpoint_answers_it(
    post: Post, recorder: Recorder, defect: str
) -> None:
    homing = _service(recorder)
    body = push_body(homing, OrderPlaced(order_id=7, total_cents=100), defect=defect)  # type: ignore[arg-type]
    reference = await _reference(_service(Recorder(), auth="hmac"), body)
    with serving(push_view(homing)):
        status, payload, _ = await post(body)
    assert (status, payload) == reference
    assert status >= 400
    assert recorder.seen == []


async def test_other_methods_get_405_naming_post(post: Post, recorder: Recorder) -> None:
    with serving(push_view(_service(recorder))):
        status, payload, headers = await post(b"", method="GET")
    assert (status, payload) == (405, {"outcome": "method_not_allowed"})
    assert headers["allow"] == "POST"


async def test_a_body_over_the_limit_gets_413_as_through_the_asgi_endpoint(
    post: Post, recorder: Recorder
) -> None:
    homing = _service(recorder, max_body_size=1000)
    body = push_body(homing, OrderPlaced(order_id=7, total_cents=100)) + b" " * 2000
    reference = await _reference(_service(Recorder(), max_body_size=1000), body)
    with serving(push_view(homing)):
        status, payload, _ = await post(body)
    assert (status, payload) == reference
    assert status == 413
    assert payload["outcome"] == "too_large"


def test_the_public_surface_is_what_it_says() -> None:
    import homing.django

    assert sorted(homing.django.__all__) == [
        "DjangoDedupeStore",
        "DjangoQuarantineStore",
        "DjangoTransaction",
        "apublish",
        "build",
        "flush",
        "publish",
        "push_view",
        "run_in",
        "service",
    ]
    assert all(hasattr(homing.django, name) for name in homing.django.__all__)
