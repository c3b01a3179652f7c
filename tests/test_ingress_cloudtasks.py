"""The Cloud Tasks request shape: X-CloudTasks-* headers reach the same handlers, and count
only under a verified token."""

from __future__ import annotations

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette

from homing import Homing, KeyRing, PushResult, Signer
from homing.auth import OIDCVerifier
from homing.ingress import detect_shape
from homing.publishers.cloudtasks import CloudTasksPublisher
from homing.starlette import push_route
from tests.conftest import OrderPlaced, Recorder
from tests.test_auth import AUDIENCE, claims, rs256

QUEUE = "projects/acme/locations/europe-west1/queues/homing"


def _app(keys: KeyRing, recorder: Recorder, verifier: OIDCVerifier | None) -> Homing:
    homing = Homing(
        signer=Signer(keys),
        oidc=verifier,
        auth="both" if verifier else "hmac",
        max_delivery_attempts=5,
    )
    homing.events.register("order.placed", OrderPlaced)
    homing.handler(OrderPlaced)(recorder)
    return homing


def _task_body(homing: Homing, order_id: int, event_id: str = "evt-1") -> bytes:
    publisher = CloudTasksPublisher(QUEUE, url=AUDIENCE, service_account="t@acme.iam")
    message = homing.sign(OrderPlaced(order_id=order_id, total_cents=1), event_id=event_id)
    return bytes(publisher.task(message).http_request.body)


def _headers(
    retry: int = 0, executions: int = 0, extra: dict[str, str] | None = None, **more: str
) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "X-CloudTasks-QueueName": "homing",
        "X-CloudTasks-TaskName": "0a1b2c3d-evt-1",
        "X-CloudTasks-TaskRetryCount": str(retry),
        "X-CloudTasks-TaskExecutionCount": str(executions),
        "X-CloudTasks-TaskETA": "1767225600.5",
        **(extra or {}),
        **more,
    }


async def _post(homing: Homing, body: bytes, headers: dict[str, str]) -> PushResult:
    """The push as an adapter hands it over (every adapter reads the x-cloudtasks-* headers as
    a shape's marks, homing.http.push_head)."""
    return await homing.handle_push(body, {name.lower(): v for name, v in headers.items()})


async def test_a_verified_task_reaches_the_handler_with_its_attempt_and_queue(
    keys: KeyRing, recorder: Recorder, verifier: OIDCVerifier, google_key: rsa.RSAPrivateKey
) -> None:
    homing = _app(keys, recorder, verifier)
    token = rs256(google_key, claims())
    headers = _headers(
        retry=2,
        executions=1,
        authorization=f"Bearer {token}",
        extra={
            "X-CloudTasks-TaskPreviousResponse": "503",
            "X-CloudTasks-TaskRetryReason": "HTTP status 503",
        },
    )
    response = await _post(homing, _task_body(homing, 1), headers)
    assert response.status == 204
    [(event, delivery)] = recorder.seen
    assert event.order_id == 1
    assert delivery.event_id == "evt-1"
    assert (delivery.attempt, delivery.queue, delivery.last_attempt) == (3, "homing", False)
    assert delivery.task is not None
    assert delivery.task.task == "0a1b2c3d-evt-1"
    assert delivery.task.execution_count == 1
    assert delivery.task.eta == 1767225600.5
    assert delivery.task.previous_response == 503
    assert delivery.task.retry_reason == "HTTP status 503"
    assert delivery.subscription == QUEUE


async def test_a_failure_on_the_queues_last_attempt_is_quarantined(
    keys: KeyRing, recorder: Recorder, verifier: OIDCVerifier, google_key: rsa.RSAPrivateKey
) -> None:
    homing = _app(keys, recorder, verifier)
    token = f"Bearer {rs256(google_key, claims())}"
    early = await _post(homing, _task_body(homing, -3), _headers(retry=3, authorization=token))
    assert early.status == 500  # attempt 4 of 5: Cloud Tasks retries
    last = await _post(homing, _task_body(homing, -3), _headers(retry=4, authorization=token))
    assert last.status == 200
    assert last.outcome == "quarantined"
    assert "the last delivery attempt (5 of 5) failed" in (last.detail or "")
    [entry] = await homing.quarantine.list()
    assert entry.event_id == "evt-1"


async def test_forged_headers_count_for_nothing_without_a_token(
    keys: KeyRing, recorder: Recorder
) -> None:
    homing = _app(keys, recorder, None)  # signature only: anyone may add headers
    failing = await _post(homing, _task_body(homing, -3, "evt-2"), _headers(retry=99))
    assert failing.status == 500  # not taken for the last attempt, so not quarantined
    assert await homing.quarantine.list() == []
    ok = await _post(homing, _task_body(homing, 1), _headers(retry=99))
    assert ok.status == 204
    [(_, delivery)] = recorder.seen
    assert (delivery.attempt, delivery.queue, delivery.task) == (None, None, None)
    assert delivery.last_attempt is False


async def test_a_task_without_a_valid_token_or_signature_runs_nothing(
    keys: KeyRing, recorder: Recorder, verifier: OIDCVerifier, google_key: rsa.RSAPrivateKey
) -> None:
    homing = _app(keys, recorder, verifier)
    no_token = await _post(homing, _task_body(homing, 1), _headers())
    assert no_token.status == 401
    forged = _task_body(homing, 1).replace(b'"homing-sig', b'"homing-xig')
    token = f"Bearer {rs256(google_key, claims())}"
    unsigned = await _post(homing, forged, _headers(authorization=token))
    assert unsigned.status == 401
    assert recorder.seen == []


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        (_headers(retry=-1), "TaskRetryCount must be a non-negative integer"),
        ({"X-CloudTasks-TaskRetryCount": "1"}, "needs x-cloudtasks-queuename"),
        (_headers(extra={"X-CloudTasks-TaskETA": "soon"}), "TaskETA must be seconds"),
        (_headers(extra={"X-CloudTasks-TaskPreviousResponse": "oops"}), "must be an HTTP status"),
        (_headers(extra={"ce-id": "1"}), "mixes push shapes"),
    ],
)
async def test_bad_cloud_tasks_headers_are_refused(
    keys: KeyRing, recorder: Recorder, headers: dict[str, str], detail: str
) -> None:
    homing = _app(keys, recorder, None)
    response = await _post(homing, _task_body(homing, 1), headers)
    assert response.status == 400
    assert detail.lower() in (response.detail or "").lower()
    assert recorder.seen == []


def test_the_shape_is_recognised_from_the_headers() -> None:
    assert detect_shape({"x-cloudtasks-queuename": "q"}) == "cloudtasks"
    assert detect_shape({"content-type": "application/json"}) == "wrapped"


async def test_the_asgi_endpoint_passes_the_cloud_tasks_headers(
    keys: KeyRing, recorder: Recorder, verifier: OIDCVerifier, google_key: rsa.RSAPrivateKey
) -> None:
    homing = _app(keys, recorder, verifier)
    headers = _headers(retry=1, authorization=f"Bearer {rs256(google_key, claims())}")
    app = Starlette(routes=[push_route(homing, "/events")])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        response = await client.post("/events", content=_task_body(homing, 1), headers=headers)
    assert response.status_code == 204
    [(_, delivery)] = recorder.seen
    assert delivery.attempt == 2
