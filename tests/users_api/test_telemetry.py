"""The reference service's telemetry: its request and its event are one trace, with metrics."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from homing import ConfigurationError, Homing, MemoryPublisher
from homing.telemetry import TRACEPARENT_ATTRIBUTE, TraceContext
from homing.telemetry.context import reset_current_trace, set_current_trace
from tests.support.ports import free_port
from tests.telemetry.conftest import JsonLines, json_lines
from tests.telemetry.test_metrics_server import refused
from tests.telemetry.test_project import MetadataServer, metadata, root_logger_restored
from tests.users_api.test_service import client, service
from users_api import __main__ as command
from users_api.app import ServiceConfig, create_app

__all__ = ["client", "json_lines", "metadata", "service"]  # fixtures

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
    # Now: the rename's event (the welcome follow-up waits 30 s).
    [(message_id, message)] = homing.publisher.due()
    assert message.attributes[TRACEPARENT_ATTRIBUTE].split("-")[1] == TRACE
    body = homing.publisher.envelope(message_id, message)
    assert (await client.post("/events", content=body)).status_code == 204

    [summary] = json_lines.summaries()
    assert summary["outcome"] == "done"
    assert summary["event_type"] == "user.name.changed"
    assert summary["event_id"] == renamed.headers["x-event-id"]
    assert summary["logging.googleapis.com/trace"] == f"projects/proj-1/traces/{TRACE}"

    assert (await client.get("/metrics")).status_code == 404  # not on the public port
    assert homing.wired is not None
    assert homing.wired.metrics is not None
    text = homing.wired.metrics.render().decode()
    assert 'homing_pushes_total{event_type="user.name.changed",outcome="done"} 1.0' in text
    assert 'homing_events_published_total{event_type="user.name.changed"} 1.0' in text
    assert "homing_message_age_seconds_bucket" in text


async def test_telemetry_off_leaves_out_the_summary_the_trace_and_the_metrics(
    tmp_path: Path, json_lines: JsonLines
) -> None:
    config = ServiceConfig.from_env(
        {
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/off.db",
            "HOMING_PUBLISHER": "memory",
            "HOMING_SIGNING_KEYS": "k1:a-test-secret-long-enough-to-sign",
            "HOMING_TELEMETRY": "off",
        }
    )
    app = create_app(config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            user = (
                await client.post("/users", json={"name": "A", "email": "a@example.com"})
            ).json()
            headers = {"x-cloud-trace-context": f"{TRACE}/12345;o=1"}
            rename = {"user_id": user["id"], "name": "B"}
            assert (await client.post("/change-name", json=rename, headers=headers)).is_success
            homing: Homing = app.state.homing
            assert isinstance(homing.publisher, MemoryPublisher)
            [(message_id, message)] = homing.publisher.due()  # not the follow-up
            assert TRACEPARENT_ATTRIBUTE not in message.attributes
            body = homing.publisher.envelope(message_id, message)
            assert (await client.post("/events", content=body)).status_code == 204
            assert (await client.get("/metrics")).status_code == 404
    assert json_lines.summaries() == []


@pytest.mark.parametrize("value", ["maybe", "2", "of"])
def test_telemetry_takes_true_or_false(value: str) -> None:
    with pytest.raises(ConfigurationError, match="HOMING_TELEMETRY: must be true or false"):
        ServiceConfig.from_env({"HOMING_TELEMETRY": value})


def test_a_misspelt_setting_gets_a_guess() -> None:
    with pytest.raises(
        ConfigurationError, match=r"HOMING_TELEMTRY \(did you mean HOMING_TELEMETRY\?\)"
    ):
        ServiceConfig.from_env({"HOMING_TELEMTRY": "off"})


def test_on_cloud_run_the_service_names_its_project_from_the_metadata_server(
    metadata: MetadataServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("K_SERVICE", "users-api")  # and no GOOGLE_CLOUD_PROJECT
    monkeypatch.setenv("GCE_METADATA_HOST", metadata.host)
    config = ServiceConfig.from_env({"HOMING_PUBLISHER": "memory"})
    assert config.homing.project is None
    with root_logger_restored():
        assert command._configure(config) == "proj-7"
        token = set_current_trace(TraceContext(TRACE, "00f067aa0ba902b7", True))
        try:
            logging.getLogger("users_api").info("renamed")
        finally:
            reset_current_trace(token)
    [line] = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["message"] == "renamed"
    assert entry["logging.googleapis.com/trace"] == f"projects/proj-7/traces/{TRACE}"


async def test_the_metrics_are_served_on_loopback_only_and_the_public_route_counts_nothing(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = ServiceConfig.from_env(
        {
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/metrics.db",
            "HOMING_PUBLISHER": "memory",
            "HOMING_SIGNING_KEYS": "k1:a-test-secret-long-enough-to-sign",
            "HOMING_METRICS_PORT": str(port),
        }
    )
    app = create_app(config)
    scrape = f"http://127.0.0.1:{port}/metrics"
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://svc") as public,
            httpx.AsyncClient() as sidecar,
        ):
            user = (
                await public.post("/users", json={"name": "A", "email": "a@example.com"})
            ).json()
            assert await public.post("/change-name", json={"user_id": user["id"], "name": "B"})
            homing: Homing = app.state.homing
            assert isinstance(homing.publisher, MemoryPublisher)
            [(message_id, message)] = homing.publisher.due()  # not the follow-up
            body = homing.publisher.envelope(message_id, message)
            assert (await public.post("/events", content=body)).status_code == 204

            before = await sidecar.get(scrape)
            assert before.status_code == 200
            assert 'homing_pushes_total{event_type="user.name.changed",outcome="done"} 1.0' in (
                before.text
            )
            for method in ("GET", "HEAD", "POST"):
                answer = await public.request(method, "/metrics")
                assert answer.status_code in (404, 405), method
                assert "homing_" not in answer.text
            after = await sidecar.get(scrape)
    assert after.text == before.text  # the public requests counted nothing, nor the scrapes
    await refused(scrape)  # closed with the service


def test_several_workers_cannot_share_the_metrics_port(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [name for name in os.environ if name.startswith("HOMING_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/none")
    monkeypatch.setenv("WEB_CONCURRENCY", "2")
    monkeypatch.setenv("HOMING_METRICS_PORT", "9464")
    assert command.main() == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("users_api: error: HOMING_METRICS_PORT with WEB_CONCURRENCY=2: ")
