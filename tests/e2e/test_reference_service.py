"""The article's flow through a real server process: change a name, see the background work."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest

from tests.support import ROOT
from tests.support.services import Service, homing_envelope
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

KEYS = "e2e-key:an-e2e-secret-that-is-long-enough"
Start = Callable[..., Service]


def _notifications(service: Service, user_id: int) -> list[dict[str, str]]:
    response = httpx.get(f"{service.url}/users/{user_id}/notifications", timeout=5)
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def test_change_name_reaches_the_handler_through_the_loopback(service_factory: Start) -> None:
    service = service_factory({"HOMING_SIGNING_KEYS": KEYS})
    user = httpx.post(f"{service.url}/users", json={"name": "Ann", "email": "a@example.com"}).json()
    changed = httpx.post(f"{service.url}/change-name", json={"user_id": user["id"], "name": "Bea"})
    assert changed.status_code == 200
    notes = eventually(lambda: _notifications(service, user["id"]))
    assert isinstance(notes, list)
    assert notes[0]["text"] == "Your name was changed from 'Ann' to 'Bea'."
    assert service.stop()
    assert "Traceback" not in service.output()


def test_a_hand_made_envelope_runs_once_however_often_it_is_posted(
    service_factory: Start,
) -> None:
    service = service_factory({"HOMING_SIGNING_KEYS": KEYS})
    user = httpx.post(f"{service.url}/users", json={"name": "Cy", "email": "c@example.com"}).json()
    envelope = homing_envelope(
        "user.name.changed",
        f'{{"user_id": {user["id"]}, "old_name": "Cy", "new_name": "Di"}}',
        KEYS,
    )
    statuses = [httpx.post(f"{service.url}/events", content=envelope).status_code for _ in range(5)]
    assert statuses == [204] * 5
    assert len(_notifications(service, user["id"])) == 1


def test_bad_input_on_the_wire(service_factory: Start) -> None:
    service = service_factory({"HOMING_SIGNING_KEYS": KEYS, "HOMING_MAX_BODY_SIZE": "4096"})
    events = f"{service.url}/events"
    assert httpx.post(events, content=b"{").status_code == 400
    assert httpx.post(events, content=b"[" * 3000).status_code == 400
    assert httpx.post(events, content=b" " * 10_000).status_code == 413
    forged = b'{"message": {"messageId": "1", "data": "", "attributes": {"event-type": "x"}}}'
    assert httpx.post(events, content=forged).status_code == 401
    assert httpx.get(f"{service.url}/healthz").status_code == 200
    assert service.stop()
    assert "Traceback" not in service.output()


def test_without_keys_a_development_key_is_made_and_announced(service_factory: Start) -> None:
    service = service_factory()
    user = httpx.post(f"{service.url}/users", json={"name": "Ed", "email": "e@example.com"}).json()
    httpx.post(f"{service.url}/change-name", json={"user_id": user["id"], "name": "Flo"})
    eventually(lambda: _notifications(service, user["id"]))
    assert "HOMING_SIGNING_KEYS is not set: signing with a development key" in service.output()


def test_a_bad_setting_stops_start_up_with_one_line(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "users_api"],
        env={"HOMING_AUTH": "sometimes", "PYTHONPATH": str(ROOT / "examples")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "HOMING_AUTH: must be one of hmac, oidc, both, none" in result.stderr
    assert "Traceback" not in result.stderr
