"""Prometheus metrics: what is counted, and that no request can invent a label value."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Route

from homing import Homing, KeyRing, MemoryPublisher, PublishFailed, Signer, build_push
from homing.publishers.base import OutgoingMessage, Publisher
from homing.telemetry import Telemetry
from homing.telemetry.metrics import PrometheusMetrics
from tests.conftest import OrderPlaced, Recorder

DATA = b'{"order_id":1,"total_cents":5}'


@pytest.fixture
def metrics() -> PrometheusMetrics:
    return PrometheusMetrics()


@pytest.fixture
def service(metrics: PrometheusMetrics) -> Homing:
    homing = Homing(signer=Signer(KeyRing.generate()), publisher=MemoryPublisher())
    homing.events.register("order.placed", OrderPlaced)
    homing.handler(OrderPlaced)(Recorder())
    homing.hooks.append(Telemetry(homing.events, metrics=metrics))
    return homing


def samples(metrics: PrometheusMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _push(service: Homing, data: bytes, type_name: str, message_id: str, **extra: object) -> bytes:
    assert service.signer is not None
    attributes = service.signer.sign(data, type_name)
    return build_push(data, attributes, message_id=message_id, subscription="s", **extra)  # type: ignore[arg-type]


async def test_pushes_are_counted_by_type_and_outcome(
    service: Homing, metrics: PrometheusMetrics
) -> None:
    body = _push(service, DATA, "order.placed", "1")
    for _ in range(3):
        await service.handle_push(body)
    await service.handle_push(_push(service, b'{"order_id":"x"}', "order.placed", "2"))

    found = samples(metrics)
    done = ("homing_pushes_total", (("event_type", "order.placed"), ("outcome", "done")))
    duplicate = ("homing_pushes_total", (("event_type", "order.placed"), ("outcome", "duplicate")))
    quarantined = (
        "homing_pushes_total",
        (("event_type", "order.placed"), ("outcome", "quarantined")),
    )
    assert found[done] == 1
    assert found[duplicate] == 2
    assert found[quarantined] == 1
    count = ("homing_push_duration_seconds_count", (("event_type", "order.placed"),))
    assert found[count] == 4


async def test_message_age_is_now_minus_the_publish_time(
    service: Homing, metrics: PrometheusMetrics
) -> None:
    published = datetime.now(UTC) - timedelta(minutes=10)
    await service.handle_push(_push(service, DATA, "order.placed", "1", publish_time=published))
    found = samples(metrics)
    age = found[("homing_message_age_seconds_sum", (("event_type", "order.placed"),))]
    assert 600 <= age < 660
    under_ten_minutes = (
        "homing_message_age_seconds_bucket",
        (("event_type", "order.placed"), ("le", "600.0")),
    )
    assert found[under_ten_minutes] == 0


async def test_no_push_can_create_a_label_value(
    service: Homing, metrics: PrometheusMetrics
) -> None:
    forged = build_push(
        DATA,
        {"event-type": "attacker.chosen", "homing-signature": "v1:00", "homing-key-id": "x"},
        message_id="1",
        subscription="s",
    )
    await service.handle_push(forged)
    await service.handle_push(b"not json")
    # Authenticated, but a type this service does not register.
    await service.handle_push(_push(service, DATA, "signed.but.unknown", "2"))

    labels = {labels for (name, labels) in samples(metrics) if name == "homing_pushes_total"}
    assert labels == {
        (("event_type", "unauthenticated"), ("outcome", "unauthenticated")),
        (("event_type", "unauthenticated"), ("outcome", "malformed")),
        (("event_type", "unregistered"), ("outcome", "quarantined")),
    }
    assert "attacker.chosen" not in metrics.render().decode()


class Refusing(Publisher):
    async def _send(self, message: OutgoingMessage) -> str:
        raise ConnectionError("no broker")


async def test_publishes_and_failed_publishes_are_counted(
    service: Homing, metrics: PrometheusMetrics
) -> None:
    await service.publish(OrderPlaced(order_id=1, total_cents=5))
    service.publisher = Refusing()
    with pytest.raises(PublishFailed, match="Refusing could not publish: ConnectionError"):
        await service.publish(OrderPlaced(order_id=2, total_cents=5))
    found = samples(metrics)
    labels = (("event_type", "order.placed"),)
    assert found[("homing_events_published_total", labels)] == 1
    assert found[("homing_publish_failures_total", labels)] == 1


async def test_the_metrics_route(metrics: PrometheusMetrics, service: Homing) -> None:
    await service.handle_push(_push(service, DATA, "order.placed", "1"))
    app = Starlette(routes=[Route("/metrics", metrics.endpoint(), methods=["GET", "POST"])])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        got = await client.get("/metrics")
        head = await client.head("/metrics")
        refused = await client.post("/metrics")
    assert got.status_code == 200
    assert got.headers["content-type"].startswith("text/plain; version=")
    assert 'homing_pushes_total{event_type="order.placed",outcome="done"} 1.0' in got.text
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == got.headers["content-length"]
    # Refused as every homing route refuses a method (homing.http).
    assert refused.status_code == 405
    assert refused.json() == {"outcome": "method_not_allowed"}
    assert refused.headers["allow"] == "GET, HEAD"


def test_an_outcome_outside_the_fixed_list_is_counted_as_other(metrics: PrometheusMetrics) -> None:
    for outcome in ("done", "made.up.by.a.hook", "done", "another", "other"):
        metrics.record_push("order.placed", outcome, 0.001, age=-2.0)
    counted = {
        labels: value
        for (name, labels), value in samples(metrics).items()
        if name == "homing_pushes_total"
    }
    assert counted == {
        (("event_type", "order.placed"), ("outcome", "done")): 2,
        (("event_type", "order.placed"), ("outcome", "other")): 3,
    }
    ages = samples(metrics)
    # A publish time ahead of this clock counts as age 0, in the lowest bucket.
    assert (
        ages[
            ("homing_message_age_seconds_bucket", (("event_type", "order.placed"), ("le", "0.05")))
        ]
        == 5
    )
