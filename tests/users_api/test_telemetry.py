"""The reference service's telemetry: its request and its event are one trace, with metrics."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from homing import Homing, MemoryPublisher
from homing.telemetry import TRACEPARENT_ATTRIBUTE
from tests.telemetry.conftest import JsonLines, json_lines
from tests.users_api.test_service import client, service

__all__ = ["client", "json_lines", "service"]  # fixtures

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_a_rename_and_its_notification_are_one_trace(
    client: httpx.AsyncClient, service: FastAPI, json_lines: JsonLines
) -> None:
    user = (await client.post("/users", json={"name": "Ann", "email": "a@example.com"})).json()
    headers = {"x-cloud-trace-context": f"{TRACE}/12345;o=1"}
    renamed = await client.post(
        "/change-name", json={"user_id": user["id"], "name": "Bea"}, headers=headers
    )
    assert renamed.status_code == 200

    homing: Homing = service.state.homing
    assert isinstance(homing.publisher, MemoryPublisher)
    [(message_id, message)] = homing.publisher.messages
    assert message.attributes[TRACEPARENT_ATTRIBUTE].split("-")[1] == TRACE
    body = homing.publisher.envelope(message_id, message)
    assert (await client.post("/events", content=body)).status_code == 204

    [summary] = json_lines.summaries()
    assert summary["outcome"] == "done"
    assert summary["event_type"] == "user.name.changed"
    assert summary["event_id"] == renamed.headers["x-event-id"]
    assert summary["logging.googleapis.com/trace"] == f"projects/proj-1/traces/{TRACE}"

    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    assert 'homing_pushes_total{event_type="user.name.changed",outcome="done"} 1.0' in text
    assert 'homing_events_published_total{event_type="user.name.changed"} 1.0' in text
    assert "homing_message_age_seconds_bucket" in text
