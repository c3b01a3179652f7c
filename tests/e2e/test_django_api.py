"""examples/django_api served for real: uvicorn on SQLite and PostgreSQL (loopback delivery),
and `homing dev` (the local broker, OIDC on). Rename a user, see one notification; create a
user, see its `@task` run by push."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from homing import KeyRing
from tests.conftest import POSTGRES_URL
from tests.support import ROOT
from tests.support.djangoproject import postgres_answers, postgres_settings
from tests.support.ports import free_port
from tests.support.required import missing
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

SCHEMA = "django_api_e2e"


class Service:
    def __init__(self, port: int, log: Path, database: str) -> None:
        self.url, self.log, self.database = f"http://127.0.0.1:{port}", log, database

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.database == "postgres":
            settings = postgres_settings(POSTGRES_URL)
            with psycopg.connect(
                dbname=str(settings["NAME"]),
                user=str(settings["USER"]),
                host=str(settings["HOST"]),
                port=str(settings["PORT"]),
                options=f"-c search_path={SCHEMA}",
            ) as connection:
                return list(connection.execute(sql).fetchall())
        with closing(sqlite3.connect(self.database)) as connection:  # (a with only commits)
            return list(connection.execute(sql).fetchall())


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(command: Sequence[str], database: str, **env: str) -> Service:
        port = free_port()
        environ = {k: v for k, v in os.environ.items() if not k.startswith("HOMING_")}
        for name in ("PUBSUB_EMULATOR_HOST", "DATABASE_URL", "DJANGO_SETTINGS_MODULE"):
            environ.pop(name, None)
        environ.update(
            env,
            PYTHONPATH=str(ROOT / "examples"),
            PYTHONUNBUFFERED="1",
            DJANGO_SETTINGS_MODULE="django_api.settings",
            HOMING_SIGNING_KEYS=KeyRing.generate().signing_key_id + ":" + "e2e-" * 8,
            PORT=str(port),
        )
        if database == "postgres":
            url = POSTGRES_URL.replace("+asyncpg", "")
            environ.update(DATABASE_URL=url, DJANGO_API_SCHEMA=SCHEMA)
        else:
            environ["DJANGO_API_SQLITE"] = database
        log = tmp_path / f"served-{port}.log"
        migrate = subprocess.run(
            [sys.executable, "-m", "django_api", "migrate", "--verbosity", "0"],
            env=environ,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert migrate.returncode == 0, migrate.stderr
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", *[part.format(port=port) for part in command]],
                cwd=tmp_path,
                env=environ,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(process)
        service = Service(port, log, database)

        def up() -> bool:
            assert process.poll() is None, service.text()
            try:
                return httpx.get(f"{service.url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        eventually(up, 40, interval=0.1, explain=service.text)
        return service

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(20)


def _database(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return str(tmp_path / "django_api.sqlite3")
    if not postgres_answers(POSTGRES_URL, fresh_schema=SCHEMA):
        missing(f"PostgreSQL does not answer at {POSTGRES_URL}")
    return "postgres"


def _exercise(service: Service) -> None:
    created = httpx.post(
        f"{service.url}/users", json={"name": "Ann", "email": "ann@example.com"}, timeout=10
    )
    assert created.status_code == 201, service.text()
    user = created.json()
    assert user == {"id": user["id"], "name": "Ann", "email": "ann@example.com"}
    assert httpx.get(f"{service.url}/users/{user['id']}", timeout=10).json() == user
    assert httpx.get(f"{service.url}/users/999999", timeout=10).status_code == 404
    invalid = httpx.post(f"{service.url}/users", json={"name": "", "email": "x"}, timeout=10)
    assert invalid.status_code == 422

    renamed = httpx.post(
        f"{service.url}/change-name", json={"user_id": user["id"], "name": "Bea"}, timeout=10
    )
    assert renamed.status_code == 200, service.text()
    assert renamed.json() == {**user, "name": "Bea"}
    assert renamed.headers["x-event-status"] == "published"

    def notified() -> list[Any]:
        answer = httpx.get(f"{service.url}/users/{user['id']}/notifications", timeout=10)
        return list(answer.json())

    [notification] = eventually(notified, 20, explain=service.text)
    assert notification == {
        "event_id": renamed.headers["x-event-id"],
        "text": "Your name was changed from 'Ann' to 'Bea'.",
    }

    def welcomed() -> list[tuple[Any, ...]]:
        return service.query("SELECT status, return_value FROM homing_task_results")

    [(_, value)] = eventually(
        lambda: [row for row in welcomed() if row[0] == "SUCCESSFUL"], 20, explain=service.text
    )
    assert f"welcomed {user['id']}" in str(value)
    assert service.query("SELECT text FROM welcomes") == [("Welcome, Ann!",)]


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_under_uvicorn_with_loopback_delivery(serve: Any, tmp_path: Path, kind: str) -> None:
    database = _database(kind, tmp_path)
    command = ["uvicorn", "django_api.asgi:application", "--port", "{port}"]
    _exercise(serve(command, database))


def test_under_homing_dev_through_the_local_broker(serve: Any, tmp_path: Path) -> None:
    database = _database("sqlite", tmp_path)
    command = ["homing.cli", "dev", "--app", "django_api.asgi:application", "--port", "{port}"]
    command += ["--data", str(tmp_path / "broker.sqlite3")]
    service = serve(command, database)
    _exercise(service)
    assert "with the local broker" in service.text()
