"""The reference service in-process, on SQLite and PostgreSQL, with the memory publisher.

The black-box tests of its HTTP API (``api``) run against the Django reference service
(``examples/django_api``) too: the same requests, the same answers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from asgiref.sync import sync_to_async
from fastapi import FastAPI

from homing import ConfigurationError, KeyRing, MemoryPublisher, Settings
from homing.testing import RecordingPublisher, assert_handled, push
from tests.conftest import POSTGRES_URL, SQL_BACKENDS, open_sql_engine
from tests.support.djangoproject import django_database
from tests.test_outbox import Switchable
from users_api import ServiceConfig, create_app
from users_api.app import UserNameChanged, WelcomeFollowup
from users_api.db import Base


@asynccontextmanager
async def _users_api(kind: str, tmp_path: Path) -> AsyncIterator[FastAPI]:
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/service.db"
    else:
        url = POSTGRES_URL
        async with open_sql_engine("postgresql", tmp_path) as engine, engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
    config = ServiceConfig(database_url=url, homing=Settings(signing_keys=KeyRing.generate()))
    recorder = RecordingPublisher()
    app = create_app(config, publisher=recorder)  # the service's publisher and its outbox's
    recorder.homing = app.state.homing
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture(params=SQL_BACKENDS)
async def service(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FastAPI]:
    async with _users_api(request.param, tmp_path) as app:
        yield app


@dataclass
class Api:
    """A reference service's HTTP API in process, and what it published (not yet pushed)."""

    client: httpx.AsyncClient
    published: MemoryPublisher

    async def deliver(self) -> list[int]:
        """Push what it published to its own ``POST /events``; the statuses."""
        return [response.status_code for response in await self.published.deliver(self.client)]


@pytest.fixture(
    params=[
        "users_api-sqlite",
        pytest.param("users_api-postgresql", marks=pytest.mark.postgres),
        "django_api",
    ]
)
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Api]:
    """Each reference service's API: users_api (SQLite, PostgreSQL) and django_api (SQLite)."""
    if request.param == "django_api":
        async with _django_api() as served:
            yield served
        return
    async with _users_api(request.param.partition("-")[2], tmp_path) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            yield Api(client, _recorder(app))


@asynccontextmanager
async def _django_api() -> AsyncIterator[Api]:
    """examples/django_api on the Django tests' SQLite database, with the memory publisher."""
    await sync_to_async(django_database)("django-sqlite", POSTGRES_URL)  # configures Django
    from django.core.handlers.asgi import ASGIHandler
    from django.test import override_settings

    from homing.django import config

    homing = {"APP": "django_api.events:create", "PUBLISHER": "memory"}
    config.forget()
    with override_settings(ROOT_URLCONF="django_api.urls", HOMING=homing):
        publisher = config.service().publisher
        assert isinstance(publisher, MemoryPublisher)
        transport = httpx.ASGITransport(app=ASGIHandler())
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield Api(client, publisher)
    config.forget()


@pytest.fixture
async def client(service: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=service)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
        yield c


def _recorder(app: FastAPI) -> RecordingPublisher:
    recorder = app.state.homing.publisher
    assert isinstance(recorder, RecordingPublisher)
    return recorder


async def test_users_can_be_created_and_read(api: Api) -> None:
    client = api.client
    created = await client.post("/users", json={"name": "Ann", "email": "ann@example.com"})
    assert created.status_code == 201
    user = created.json()
    assert user == {"id": user["id"], "name": "Ann", "email": "ann@example.com"}
    assert (await client.get(f"/users/{user['id']}")).json() == user
    assert (await client.get("/users/999999")).status_code == 404
    assert (await client.get("/healthz")).status_code == 200


async def test_change_name_publishes_and_the_handler_notifies_once(
    client: httpx.AsyncClient, service: FastAPI
) -> None:
    user = (await client.post("/users", json={"name": "Ann", "email": "a@example.com"})).json()
    recorder = _recorder(service)
    recorder.clear()  # the welcome follow-up (test_a_new_user_gets_a_followup_later)
    response = await client.post("/change-name", json={"user_id": user["id"], "name": "Bea"})
    assert response.status_code == 200
    assert response.json() == {**user, "name": "Bea"}
    assert response.headers["x-event-status"] == "published"
    assert await service.state.outbox.count() == 0

    recorder.assert_published(UserNameChanged(user_id=user["id"], old_name="Ann", new_name="Bea"))
    [message] = recorder.published
    assert message.event_type == "user.name.changed"
    assert message.data == (b'{"user_id":%d,"old_name":"Ann","new_name":"Bea"}' % user["id"])
    assert (await client.get(f"/users/{user['id']}/notifications")).json() == []

    [(message_id, _)] = recorder.messages
    body = recorder.envelope(message_id, message)
    [delivered] = await recorder.run_handlers(service)  # POST /events through the app
    assert_handled(delivered, status=204)
    for _ in range(2):  # redelivered twice: acknowledged, nothing runs again
        assert_handled(await push(service, body), status=204)
    notes = (await client.get(f"/users/{user['id']}/notifications")).json()
    assert [{k: note[k] for k in ("event_id", "text")} for note in notes] == [
        {"event_id": message.event_id, "text": "Your name was changed from 'Ann' to 'Bea'."}
    ]


async def test_a_new_user_gets_a_followup_later(
    client: httpx.AsyncClient, service: FastAPI
) -> None:
    before = datetime.now(UTC)
    created = await client.post("/users", json={"name": "Zoë", "email": "z@example.com"})
    user = created.json()

    assert created.headers["x-event-status"] == "published"
    recorder = _recorder(service)
    recorder.assert_published(WelcomeFollowup(user_id=user["id"], name="Zoë"))
    [message] = recorder.published
    assert message.event_type == "user.welcome.followup"
    assert message.event_id == created.headers["x-event-id"]
    assert message.deliver_at is not None
    # HOMING_FOLLOWUP_DELAY: 30 seconds by default.
    assert timedelta(seconds=30) <= message.deliver_at - before <= timedelta(seconds=31)
    assert recorder.due() == []  # kept until its time
    assert len(recorder.due(message.deliver_at)) == 1

    [delivered] = await recorder.run_handlers(service)
    assert_handled(delivered, status=204)
    [note] = (await client.get(f"/users/{user['id']}/notifications")).json()
    assert note["event_id"] == message.event_id
    assert note["text"] == "Welcome aboard, Zoë! How are your first minutes going?"


async def test_without_a_transport_that_can_delay_the_followup_is_off_and_said_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = ServiceConfig(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db",
        homing=Settings(signing_keys=KeyRing.generate(), loopback_url="http://127.0.0.1:9/e"),
    )
    with caplog.at_level(logging.WARNING, logger="users_api"):
        app = create_app(config)
    assert (
        "user.welcome.followup is off: LoopbackPublisher cannot deliver an event later; set "
        "HOMING_TASKS_QUEUE (Cloud Tasks), or run under `homing dev`"
    ) in caplog.text
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            created = await client.post("/users", json={"name": "A", "email": "a@x.io"})
    assert created.status_code == 201
    assert "x-event-id" not in created.headers
    assert await app.state.outbox.count() == 0


def test_the_followup_delay_is_a_setting() -> None:
    config = ServiceConfig.from_env({"HOMING_FOLLOWUP_DELAY": "2"})
    assert config.homing.followup_delay == 2.0
    with pytest.raises(ConfigurationError, match="HOMING_FOLLOWUP_DELAY: must be a positive"):
        ServiceConfig.from_env({"HOMING_FOLLOWUP_DELAY": "-2"})


async def test_a_rename_is_published_and_notified_once_however_often_it_is_pushed(
    api: Api,
) -> None:
    client = api.client
    user = (await client.post("/users", json={"name": "Ann", "email": "a@example.com"})).json()
    api.published.messages.clear()  # what creating the user published (django_api: a task)
    response = await client.post("/change-name", json={"user_id": user["id"], "name": "Bea"})
    assert response.status_code == 200
    assert response.json() == {**user, "name": "Bea"}
    assert response.headers["x-event-status"] == "published"
    [(message_id, message)] = api.published.messages
    assert message.event_type == "user.name.changed"
    assert message.event_id == response.headers["x-event-id"]
    assert (await client.get(f"/users/{user['id']}/notifications")).json() == []

    api.published.messages.append((message_id, message))  # pushed twice: Pub/Sub redelivers
    assert await api.deliver() == [204, 204]
    notes = (await client.get(f"/users/{user['id']}/notifications")).json()
    assert [{k: note[k] for k in ("event_id", "text")} for note in notes] == [
        {"event_id": message.event_id, "text": "Your name was changed from 'Ann' to 'Bea'."}
    ]


async def test_change_name_errors(api: Api) -> None:
    client = api.client
    assert (
        await client.post("/change-name", json={"user_id": 424242, "name": "X"})
    ).status_code == 404
    for bad in ({}, {"user_id": "x", "name": "X"}, {"user_id": 1, "name": ""}):
        assert (await client.post("/change-name", json=bad)).status_code == 422
    assert (await client.post("/change-name", content=b"not json")).status_code == 422
    assert (await client.get("/users/424242/notifications")).status_code == 404
    assert api.published.messages == []


@pytest.mark.parametrize(
    ("defect", "status", "outcome"),
    [
        ("unsigned", 401, "unauthenticated"),
        ("wrong_key", 401, "unauthenticated"),
        ("tampered", 401, "unauthenticated"),
        ("expired", 401, "unauthenticated"),
        ("malformed", 400, "malformed"),
    ],
)
async def test_bad_pushes_never_reach_the_handler(
    client: httpx.AsyncClient, service: FastAPI, defect: str, status: int, outcome: str
) -> None:
    user = (await client.post("/users", json={"name": "Ann", "email": "a@example.com"})).json()
    event = UserNameChanged(user_id=user["id"], old_name="Ann", new_name="Eve")
    result = await push(service, event, defect=defect)  # type: ignore[arg-type]
    assert_handled(result, outcome, status=status)
    assert (await client.get(f"/users/{user['id']}/notifications")).json() == []
    assert await service.state.homing.quarantine.list() == []


def test_config_from_env() -> None:
    config = ServiceConfig.from_env(
        {"PORT": "9001", "DATABASE_URL": "sqlite+aiosqlite:///x.db", "HOMING_AUTH": "hmac"}
    )
    assert (config.port, config.database_url) == (9001, "sqlite+aiosqlite:///x.db")
    assert "x.db" not in repr(config)  # a database URL may hold a password


@pytest.mark.parametrize("port", ["http", "0", "70000"])
def test_bad_port_is_refused(port: str) -> None:
    from homing import ConfigurationError

    with pytest.raises(ConfigurationError, match="PORT"):
        ServiceConfig.from_env({"PORT": port})


def test_oidc_modes_need_audience_and_accounts(tmp_path: Path) -> None:
    from homing import ConfigurationError

    config = ServiceConfig(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db",
        homing=Settings(auth="both", signing_keys=KeyRing.generate()),
    )
    with pytest.raises(
        ConfigurationError,
        match=r"(?s)HOMING_PUSH_ENDPOINT or HOMING_OIDC_AUDIENCE.*"
        r"HOMING_PUSH_SERVICE_ACCOUNT or HOMING_OIDC_SERVICE_ACCOUNTS",
    ):
        create_app(config)


async def test_oidc_mode_refuses_pushes_without_a_token(tmp_path: Path) -> None:
    config = ServiceConfig(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db",
        homing=Settings(
            auth="both",
            signing_keys=KeyRing.generate(),
            publisher="memory",
            push_endpoint="https://svc.example.com/events",
            push_service_account="push@p.iam.gserviceaccount.com",
        ),
    )
    app = create_app(config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            response = await client.post("/events", content=b"{}")
    assert response.status_code == 401
    assert "Authorization" in response.json()["detail"]


async def test_an_unpublished_event_waits_in_the_outbox_until_flushed(tmp_path: Path) -> None:
    config = ServiceConfig(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db",
        homing=Settings(
            publisher="memory", signing_keys=KeyRing.generate(), flush_token="flush-token-1234"
        ),
    )
    broker = Switchable()
    app = create_app(config, publisher=broker)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            user = (await client.post("/users", json={"name": "A", "email": "a@x.io"})).json()
            broker.up = False
            response = await client.post("/change-name", json={"user_id": user["id"], "name": "B"})
            assert response.status_code == 200  # the rename committed, with its event
            assert response.headers["x-event-status"] == "pending"
            assert (await client.get(f"/users/{user['id']}")).json()["name"] == "B"
            assert await app.state.outbox.count() == 1

            broker.up = True
            unauthorized = await client.post("/outbox/flush")
            assert unauthorized.status_code == 401
            flushed = await client.post(
                "/outbox/flush", headers={"authorization": "Bearer flush-token-1234"}
            )
            assert flushed.json() == {"published": 1, "failed": 0, "pending": 0}
            [message] = broker.sent
            assert message.event_id == response.headers["x-event-id"]


async def test_the_api_description_is_off_unless_asked(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert (await client.get(path)).status_code == 404
    config = ServiceConfig.from_env(
        {"API_DOCS": "on", "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/docs.db"}
    )
    app = create_app(config, publisher=RecordingPublisher())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as described:
        assert (await described.get("/openapi.json")).status_code == 200
