"""The reference service on the official Pub/Sub emulator: provisioned by the CLI, events
published with google-cloud-pubsub and pushed back to POST /events by the emulator."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from google.cloud import pubsub_v1

from homing import KeyRing, Signer
from homing.cli import main as homing_cli
from homing.signing import EVENT_ID
from tests.support.ports import free_port
from tests.support.services import Service, serve_test_app, users_api_only
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

PROJECT = "homing-e2e"
KEYS = "e2e-key:an-e2e-secret-that-is-long-enough"
Start = Callable[..., Service]


@pytest.fixture
def names() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {"topic": f"events-{suffix}", "subscription": f"push-{suffix}", "dlq": f"dead-{suffix}"}


def _provision(
    emulator: str,
    monkeypatch: pytest.MonkeyPatch,
    names: dict[str, str],
    push_endpoint: str,
    *more: str,
) -> None:
    """``homing provision`` of the test's topic and push subscription (10 s ack deadline)."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator)
    flags = ["--topic", names["topic"], "--subscription", names["subscription"]]
    flags += ["--push-endpoint", push_endpoint, "--ack-deadline", "10", *more]
    assert homing_cli(["provision", "--project", PROJECT, *flags]) == 0


def test_change_name_through_pubsub_push(
    pubsub_emulator: str,
    service_factory: Start,
    names: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    _provision(pubsub_emulator, monkeypatch, names, f"http://127.0.0.1:{port}/events")
    service = _rename_once_through_pubsub(service_factory, pubsub_emulator, names["topic"], port)
    assert service.stop()


@users_api_only  # POST /outbox/flush; Django's is `manage.py homing outbox flush`
def test_an_event_the_broker_refused_waits_in_the_outbox_until_flushed(
    pubsub_emulator: str,
    service_factory: Start,
    names: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    service = service_factory(
        {
            "PORT": str(port),
            "HOMING_SIGNING_KEYS": KEYS,
            "HOMING_PUBLISHER": "pubsub",
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "HOMING_TOPIC": names["topic"],  # not created yet: publishing fails
            "HOMING_PUBLISH_TIMEOUT": "3",
            "HOMING_FLUSH_TOKEN": "an-e2e-flush-token",
            "PUBSUB_EMULATOR_HOST": pubsub_emulator,
        }
    )
    user = httpx.post(f"{service.url}/users", json={"name": "Cy", "email": "c@example.com"}).json()
    response = httpx.post(
        f"{service.url}/change-name", json={"user_id": user["id"], "name": "Di"}, timeout=15
    )
    assert response.status_code == 200  # the rename committed, and its event with it
    assert response.headers["x-event-status"] == "pending"
    assert "NotFound" in service.output()  # the publish failure is logged, with its reason

    _provision(pubsub_emulator, monkeypatch, names, f"{service.url}/events")
    flush = f"{service.url}/outbox/flush"
    assert httpx.post(flush).status_code == 401
    flushed = httpx.post(flush, headers={"authorization": "Bearer an-e2e-flush-token"}, timeout=15)
    assert flushed.json() == {"published": 1, "failed": 0, "pending": 0}

    def notes() -> list[dict[str, str]]:
        return httpx.get(f"{service.url}/users/{user['id']}/notifications").json()  # type: ignore[no-any-return]

    found = eventually(notes, timeout=20)
    assert isinstance(found, list)
    assert [n["event_id"] for n in found] == [response.headers["x-event-id"]]


@pytest.fixture
def flaky_app(pubsub_emulator: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    log = tmp_path / "flaky.log"
    with serve_test_app("always_retry", {"HOMING_SIGNING_KEYS": KEYS}, log) as url:
        yield url, log


def test_a_failing_handler_is_redelivered_then_dead_lettered(
    pubsub_emulator: str,
    flaky_app: tuple[str, Path],
    names: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, log = flaky_app
    _provision(
        pubsub_emulator,
        monkeypatch,
        names,
        f"{url}/events",
        "--dead-letter-topic",
        names["dlq"],
        "--max-delivery-attempts",
        "5",
        "--min-backoff",
        "0",
        "--max-backoff",
        "1",
    )
    subscriber = pubsub_v1.SubscriberClient()
    dead = subscriber.create_subscription(
        name=f"projects/{PROJECT}/subscriptions/{names['dlq']}-pull",
        topic=f"projects/{PROJECT}/topics/{names['dlq']}",
    ).name
    signer = Signer(KeyRing.from_string(KEYS))
    attributes = signer.sign(b'{"n":7}', "test.flaky")
    pubsub_v1.PublisherClient().publish(
        f"projects/{PROJECT}/topics/{names['topic']}", b'{"n":7}', **attributes
    ).result()

    def dead_lettered() -> list[pubsub_v1.types.ReceivedMessage]:
        return list(subscriber.pull(subscription=dead, max_messages=1, timeout=5).received_messages)

    found = eventually(dead_lettered, timeout=60, interval=0.5)
    assert isinstance(found, list)
    message = found[0].message
    assert message.attributes[EVENT_ID] == attributes[EVENT_ID]
    assert int(message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"]) >= 5
    assert log.read_text().count("attempt for event 7") >= 5
    # The dead-lettered copy still verifies: Pub/Sub's own attributes are not signed.
    verified = signer.verify(message.data, dict(message.attributes), message_id=message.message_id)
    assert verified.event_type == "test.flaky"
    subscriber.close()


def test_change_name_through_an_unwrapped_push(
    pubsub_emulator: str,
    service_factory: Start,
    names: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # noWrapper with write-metadata: the emulator pushes the raw data, the attributes as
    # headers of their own names and the metadata as x-goog-pubsub-* headers; homing's
    # signature verifies on them and the handler runs once.
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/events"
    _provision(pubsub_emulator, monkeypatch, names, endpoint, "--push-shape", "unwrapped")
    service = _rename_once_through_pubsub(service_factory, pubsub_emulator, names["topic"], port)
    assert service.stop()


def _rename_once_through_pubsub(
    service_factory: Start,
    emulator: str,
    topic: str,
    port: int,
) -> Service:
    """The reference service on ``port`` publishes a rename; its push makes one notification."""
    service = service_factory(
        {
            "PORT": str(port),
            "HOMING_SIGNING_KEYS": KEYS,
            "HOMING_PUBLISHER": "pubsub",
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "HOMING_TOPIC": topic,
            "PUBSUB_EMULATOR_HOST": emulator,
        }
    )
    user = httpx.post(f"{service.url}/users", json={"name": "Ann", "email": "a@example.com"}).json()
    changed = httpx.post(f"{service.url}/change-name", json={"user_id": user["id"], "name": "Bea"})
    assert changed.status_code == 200

    def notes() -> list[dict[str, str]]:
        return httpx.get(f"{service.url}/users/{user['id']}/notifications").json()  # type: ignore[no-any-return]

    found = eventually(notes, timeout=20)
    assert isinstance(found, list)
    assert found[0]["text"] == "Your name was changed from 'Ann' to 'Bea'."
    time.sleep(1.5)  # the emulator would have redelivered by now had it not taken the ack
    assert len(notes()) == 1
    return service
