"""The front door under a hostile sender, through the ASGI, Flask and Django adapters alike.

Each case is a finding of the security read (issue "The front door, round 2"): it failed
before its fix. Every case runs against every adapter and must get the same answer from each.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from starlette.applications import Starlette

from homing import (
    ConfigurationError,
    Homing,
    Hook,
    KeyRing,
    MemoryPublisher,
    PushContext,
    Signer,
    build_push,
)
from homing.auth import OIDCVerifier
from homing.escaping import printable
from homing.flask import FlaskHoming
from homing.signing import EVENT_TYPE, KEY_ID, legacy_signature
from homing.starlette import push_route
from homing.telemetry.logs import TextFormatter
from homing.testing import push_body
from tests.conftest import OrderPlaced, Recorder
from tests.test_auth import (
    claims,
    rs256,
)

ORDER = OrderPlaced(order_id=1, total_cents=2)
DEAD_LETTER = {
    "CloudPubSubDeadLetterSourceDeliveryCount": "5",
    "CloudPubSubDeadLetterSourceSubscription": "projects/p/subscriptions/s\n\x1b[31mFORGED",
    "CloudPubSubDeadLetterSourceSubscriptionProject": "p",
}

Answer = tuple[int, Any]
Post = Callable[[bytes, dict[str, str]], Awaitable[Answer]]


@pytest.fixture(params=["asgi", "flask", "django"])
def front(request: pytest.FixtureRequest) -> Iterator[Callable[[Homing], Post]]:
    """Serve a ``Homing`` through one adapter; ``post(body, headers)`` -> (status, JSON)."""
    closers: list[Callable[[], None]] = []
    stack = ExitStack()
    if request.param == "django":
        from tests.conftest import POSTGRES_URL
        from tests.support.djangoproject import configure

        configure(POSTGRES_URL)  # once per process, before any test's event loop runs

    def serve(homing: Homing) -> Post:
        if request.param == "django":
            return _django(homing, stack)
        if request.param == "asgi":
            app = Starlette(routes=[push_route(homing, "/events")])

            async def post_asgi(body: bytes, headers: dict[str, str]) -> Answer:
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                    response = await c.post("/events", content=body, headers=headers)
                return response.status_code, (response.json() if response.content else None)

            return post_asgi
        events = FlaskHoming(homing)
        closers.append(events.close)
        flask_app = Flask(__name__)
        events.init_app(flask_app)
        client = flask_app.test_client()

        async def post_flask(body: bytes, headers: dict[str, str]) -> Answer:
            response = client.post(
                "/events", data=body, headers={"content-type": "application/json", **headers}
            )
            return response.status_code, (orjson.loads(response.data) if response.data else None)

        return post_flask

    yield serve
    for close in closers:
        close()
    stack.close()


def _django(homing: Homing, stack: ExitStack) -> Post:
    from django.core.handlers.asgi import ASGIHandler

    from homing.django import push_view
    from tests.support.djangoproject import serving

    stack.enter_context(serving(push_view(homing)))

    async def post_django(body: bytes, headers: dict[str, str]) -> Answer:
        transport = httpx.ASGITransport(app=ASGIHandler())
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            response = await c.post(
                "/events", content=body, headers={"content-type": "application/json", **headers}
            )
        return response.status_code, (response.json() if response.content else None)

    return post_django


def _service(recorder: Recorder, **options: Any) -> Homing:
    homing = Homing(signer=Signer(KeyRing({"k1": "a-secret-of-enough-length"})), **options)
    homing.events.register("order.placed", OrderPlaced)
    homing.handler(OrderPlaced)(recorder)
    return homing


DATA = orjson.dumps(ORDER.model_dump())


def _envelope(attributes: dict[str, str] | Any, message_id: str = "m-1") -> bytes:
    """A wrapped push of ``ORDER``'s data with exactly these attributes."""
    return build_push(
        DATA, attributes, message_id=message_id, subscription="projects/p/subscriptions/s"
    )


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
@pytest.mark.parametrize("adapter", ["asgi", "flask"])
def test_refused_pushes_with_huge_attribute_names_leave_memory_flat(adapter: str) -> None:
    # A valid key id (key ids are not secret) and a wrong signature: refused, but only after
    # the signed bytes were built, where attribute names used to be cached. Measured in a
    # process of its own (tests/rss_probe.py).
    probe = subprocess.run(
        [sys.executable, "-m", "tests.rss_probe", adapter],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[1],
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    grown = float(probe.stdout.split()[-1])
    assert grown < 5, f"RSS grew {grown:.1f} MB over 1,000 refused pushes"


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({"n" * 257: "x"}, "name is longer than 256 bytes"),
        ({"é" * 129: "x"}, "name is longer than 256 bytes"),  # 258 bytes in 129 characters
        ({"name": "v" * 1025}, "longer than 1024 bytes"),
        ({"name": "€" * 342}, "longer than 1024 bytes"),  # 1,026 bytes
        ({f"a{n}": "x" for n in range(101)}, "more than 100"),
    ],
)
async def test_attributes_beyond_pubsubs_bounds_are_refused_before_verifying(
    front: Callable[[Homing], Post],
    recorder: Recorder,
    attributes: dict[str, str],
    reason: str,
) -> None:
    homing = _service(recorder)
    post = front(homing)
    signed = dict(homing.sign(ORDER).attributes)
    body = _envelope({**signed, **attributes})
    status, answer = await post(body, {})
    assert (status, answer["outcome"]) == (400, "malformed")
    assert reason in answer["detail"]
    assert recorder.seen == []


async def test_a_handled_message_resent_as_a_dead_letter_without_a_token_is_a_duplicate(
    front: Callable[[Homing], Post], recorder: Recorder
) -> None:
    homing = _service(recorder)
    post = front(homing)
    message = homing.sign(ORDER, event_id="e-handled")
    assert (await post(_envelope(message.attributes), {}))[0] == 204
    resent = _envelope({**message.attributes, **DEAD_LETTER})
    status, answer = await post(resent, {})
    assert (status, answer) == (204, None)  # a duplicate: acknowledged, nothing else
    assert len(recorder.seen) == 1
    assert await homing.quarantine.list() == []


async def test_without_a_token_dead_letter_attributes_are_ignored(
    front: Callable[[Homing], Post], recorder: Recorder
) -> None:
    # Under auth="hmac" nothing vouches that Pub/Sub added them: the event is handled as any.
    homing = _service(recorder)
    post = front(homing)
    message = homing.sign(ORDER, event_id="e-new")
    body = _envelope({**message.attributes, **DEAD_LETTER})
    assert (await post(body, {}))[0] == 204
    [(_, delivery)] = recorder.seen
    assert not any(name.startswith("CloudPubSub") for name in delivery.attributes)
    assert await homing.quarantine.list() == []


async def test_with_a_token_a_dead_letter_is_kept_unless_its_event_was_handled(
    front: Callable[[Homing], Post],
    recorder: Recorder,
    verifier: OIDCVerifier,
    google_key: rsa.RSAPrivateKey,
) -> None:
    homing = _service(recorder, oidc=verifier, auth="both", dedupe=None)
    post = front(homing)
    token = {"authorization": f"Bearer {rs256(google_key, claims())}"}

    handled = homing.sign(ORDER, event_id="e-done")
    assert (await post(_envelope(handled.attributes), token))[0] == 204
    copy = {**handled.attributes, **DEAD_LETTER}
    status, _ = await post(_envelope(copy), token)
    assert status == 204
    assert await homing.quarantine.list() == []

    failed = homing.sign(ORDER, event_id="e-dead")
    copy = {**failed.attributes, **DEAD_LETTER}
    status, answer = await post(_envelope(copy), token)
    assert (status, answer["outcome"]) == (200, "quarantined")
    [entry] = await homing.quarantine.list()
    # The sender's text is kept, escaped: it cannot forge a line or recolour a terminal.
    assert "\n" not in entry.reason
    assert "\x1b" not in entry.reason
    assert entry.reason == (
        "dead-lettered by Pub/Sub from subscription projects/p/subscriptions/s\\x0a\\x1b[31m"
        "FORGED (project p) after 5 delivery attempts"
    )
    assert len(recorder.seen) == 1


async def test_a_replay_of_a_handled_event_needs_force(recorder: Recorder) -> None:
    homing = _service(recorder)
    body = push_body(homing, OrderPlaced(order_id=-2, total_cents=0), event_id="e-1")
    assert (await homing.handle_push(body)).outcome == "quarantined"  # the handler dropped it
    assert (await homing.replay("e-1")).outcome == "quarantined"  # and drops it again
    await homing.dedupe.done("e-1")  # meanwhile handled, e.g. through another delivery
    result = await homing.replay("e-1")
    assert (result.status, result.outcome) == (409, "already_done")
    assert "force" in (result.detail or "")
    assert await homing.quarantine.get("e-1") is not None  # kept
    assert (await homing.replay("e-1", force=True)).outcome == "quarantined"


def test_the_legacy_format_under_hmac_alone_needs_an_explicit_opt_in() -> None:
    signer = Signer(KeyRing({"k1": "a-secret-of-enough-length"}), legacy_secret="l" * 16)
    with pytest.raises(ConfigurationError, match="signs only the data") as caught:
        Homing(signer=signer)
    assert "HOMING_LEGACY_WITHOUT_OIDC" in str(caught.value)
    assert "l" * 16 not in str(caught.value)
    Homing(signer=signer, accept_legacy_without_oidc=True)


async def test_under_hmac_the_legacy_format_lets_its_sender_choose_the_event_id(
    front: Callable[[Homing], Post], recorder: Recorder
) -> None:
    # Why the opt-in names its risk: one legacy message, sent again under new message ids.
    signer = Signer(KeyRing({"k1": "a-secret-of-enough-length"}), legacy_secret="l" * 16)
    homing = Homing(signer=signer, accept_legacy_without_oidc=True)
    homing.events.register("order.placed", OrderPlaced)
    homing.handler(OrderPlaced)(recorder)
    post = front(homing)
    legacy = {EVENT_TYPE: "order.placed", "signature": legacy_signature("l" * 16, DATA)}
    for message_id in ("1", "2"):
        assert (await post(_envelope(legacy, message_id), {}))[0] == 204
    assert len(recorder.seen) == 2


def test_a_production_like_service_on_the_memory_dedupe_store_warns(
    caplog: pytest.LogCaptureFixture, verifier: OIDCVerifier
) -> None:
    caplog.set_level(logging.WARNING, "homing")
    signer = Signer(KeyRing({"k1": "a-secret-of-enough-length"}))
    Homing(signer=signer, publisher=MemoryPublisher())
    assert "dedupe store is in memory" not in caplog.text
    Homing(signer=signer, oidc=verifier, auth="both")
    assert "dedupe store is in memory" in caplog.text


def test_text_log_lines_escape_control_characters() -> None:
    formatter = TextFormatter()
    record = logging.LogRecord(
        "homing", logging.WARNING, __file__, 1, "push %s", ("m-1\n2026 INFO forged\x1b[2J",), None
    )
    line = formatter.format(record)
    assert "\n" not in line
    assert "\x1b" not in line
    assert "m-1\\x0a2026 INFO forged\\x1b[2J" in line
    summary = formatter.line(logging.INFO, "homing.push", "m\r\nx", 0.0)
    assert "\r" not in summary
    assert "\n" not in summary
    assert printable("plain text") == "plain text"


def test_signing_refuses_reserved_names_in_any_case() -> None:
    signer = Signer(KeyRing({"k1": "a-secret-of-enough-length"}))
    for name in ("Event-Type", "HOMING-x", KEY_ID.upper()):
        with pytest.raises(ConfigurationError, match="reserved"):
            signer.sign(b"{}", "a.b", attributes={name: "x"})


async def test_an_oversize_push_is_logged_and_seen_by_the_hooks_through_either_adapter(
    front: Callable[[Homing], Post], recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    class Counting(Hook):
        def on_push_handled(self, context: PushContext) -> None:
            assert context.result is not None
            seen.append(context.result.outcome)

    homing = _service(recorder, max_body_size=1024, hooks=[Counting()])
    post = front(homing)
    status, answer = await post(b"x" * 4096, {})
    assert (status, answer["outcome"]) == (413, "too_large")
    assert seen == ["too_large"]
    assert "push refused (too_large)" in caplog.text
