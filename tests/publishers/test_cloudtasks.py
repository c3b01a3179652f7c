"""The Cloud Tasks publisher: the task an event becomes (the local broker creates them in
tests/broker/test_tasks_api.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from homing import ConfigurationError, Homing, PublishFailed
from homing.ingress.wrapped import parse_push
from homing.publishers.cloudtasks import CloudTasksPublisher, queue_path, task_id
from tests.conftest import OrderPlaced

QUEUE = "projects/acme/locations/europe-west1/queues/homing"


def _publisher(**options: object) -> CloudTasksPublisher:
    return CloudTasksPublisher(
        QUEUE,
        url="https://api.example.com/events",
        service_account="tasks@acme.iam.gserviceaccount.com",
        **options,  # type: ignore[arg-type]
    )


def test_the_task_carries_the_signed_envelope_a_token_and_its_time(homing: Homing) -> None:
    at = datetime.now(UTC) + timedelta(days=1)
    message = homing.sign(OrderPlaced(order_id=1, total_cents=5), event_id="evt-1", at=at)
    task = _publisher(dispatch_deadline=timedelta(minutes=20)).task(message)
    assert task.name == f"{QUEUE}/tasks/{task_id('evt-1')}"
    request = task.http_request
    assert request.url == "https://api.example.com/events"
    assert request.headers["Content-Type"] == "application/json"
    assert request.oidc_token.service_account_email == "tasks@acme.iam.gserviceaccount.com"
    assert request.oidc_token.audience == "https://api.example.com/events"
    push = parse_push(request.body)
    assert push.data == message.data
    assert dict(push.attributes) == dict(message.attributes)
    assert push.subscription == QUEUE
    assert push.message_id == task_id("evt-1")
    verified = homing.signer.verify(push.data, push.attributes, message_id=push.message_id)  # type: ignore[union-attr]
    assert verified.event_id == "evt-1"
    assert task.schedule_time == at
    assert task.dispatch_deadline == timedelta(minutes=20)


def test_an_undelayed_task_has_no_time_and_the_queue_default_deadline(homing: Homing) -> None:
    task = _publisher(audience="https://aud").task(
        homing.sign(OrderPlaced(order_id=1, total_cents=1))
    )
    assert "schedule_time" not in task
    assert "dispatch_deadline" not in task
    assert task.http_request.oidc_token.audience == "https://aud"
    unsigned = CloudTasksPublisher(QUEUE, url="http://127.0.0.1:8080/events", service_account=None)
    assert (
        "oidc_token"
        not in unsigned.task(homing.sign(OrderPlaced(order_id=1, total_cents=1))).http_request
    )


def test_task_names_are_hashed_prefixes_of_the_event_id() -> None:
    first, second = task_id("0001"), task_id("0002")
    assert first.endswith("-0001")
    assert second.endswith("-0002")
    assert first[:8] != second[:8]  # no shared prefix for sequential ids
    assert task_id("0001") == first  # the same event, the same name: a retried create dedupes
    odd = task_id("évent/1 with spaces")
    assert len(odd) == 64
    assert odd.isalnum()


def test_queue_paths() -> None:
    assert queue_path("homing", project="acme", location="europe-west1") == QUEUE
    with pytest.raises(ConfigurationError, match="no project and location"):
        queue_path("homing")
    with pytest.raises(ConfigurationError, match="is not projects/P/locations/L/queues/Q"):
        queue_path("projects/acme/queues/homing")


@pytest.mark.parametrize("seconds", [14, 1801])
def test_the_dispatch_deadline_is_within_cloud_tasks_bounds(seconds: int) -> None:
    with pytest.raises(ConfigurationError, match="15 s to 30 min"):
        _publisher(dispatch_deadline=timedelta(seconds=seconds))


def test_a_bad_url_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="the task URL must be http"):
        CloudTasksPublisher(QUEUE, url="api.example.com/events", service_account=None)


async def test_a_body_over_a_megabyte_is_refused_before_sending(homing: Homing) -> None:
    message = homing.sign(OrderPlaced(order_id=1, total_cents=1))
    big = type(message)(
        data=b"x" * (1024 * 1024),
        attributes=message.attributes,
        event_type=message.event_type,
        event_id=message.event_id,
    )
    with pytest.raises(PublishFailed, match="Cloud Tasks takes at most 1048576"):
        await _publisher().publish(big)


async def test_30_days_ahead_is_the_limit(homing: Homing) -> None:
    publisher = _publisher()
    homing.transports.named["tasks"] = publisher
    homing.event("order.placed", transport="tasks")
    from homing import InvalidDelay

    with pytest.raises(InvalidDelay, match="CloudTasksPublisher schedules at most 30 days"):
        homing.sign(OrderPlaced(order_id=1, total_cents=1), delay=timedelta(days=30, hours=1))
    homing.sign(OrderPlaced(order_id=1, total_cents=1), delay=timedelta(days=30))
