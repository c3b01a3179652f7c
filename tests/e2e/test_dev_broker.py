"""`make run`'s default: the reference service served by `homing dev` with the local broker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT
from tests.support.ports import free_port
from tests.support.processes import answers, launch, wait_ready
from tests.support.waiting import eventually_async

pytestmark = pytest.mark.e2e


def _start(tmp_path: Path, port: int, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMING_")}
    env.pop("PUBSUB_EMULATOR_HOST", None)
    env.update(
        extra,
        PORT=str(port),
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/users.db",
        PYTHONPATH=str(ROOT / "examples"),
        # Redeliveries after the restart come quickly, and are not dead-lettered meanwhile.
        HOMING_MIN_BACKOFF="1",
        HOMING_MAX_BACKOFF="2",
        HOMING_MAX_DELIVERY_ATTEMPTS="30",
    )
    process = launch(
        [
            sys.executable,
            "-m",
            "homing.cli",
            "dev",
            "--app",
            "users_api.app:create_app",
            "--data",
            str(tmp_path / "broker.sqlite3"),
        ],
        log,
        env=env,
        cwd=tmp_path,
        group=True,
    )
    wait_ready(
        process,
        log,
        lambda: answers(f"http://127.0.0.1:{port}/healthz", 200),
        timeout=40,
        what="homing dev",
    )
    return process


async def _rename(client: httpx.AsyncClient, n: int) -> str | None:
    try:
        response = await client.post("/change-name", json={"user_id": 1, "name": f"n{n}"})
    except httpx.TransportError:
        return None
    if response.status_code == 200 and response.headers["x-event-status"] == "published":
        return response.headers["x-event-id"]
    return None


async def test_kill_9_under_load_then_restart_one_effect_each(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "dev.log"
    process = _start(tmp_path, port, log)
    published: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            created = await client.post("/users", json={"name": "a", "email": "a@example.com"})
            assert created.status_code == 201
            for batch in range(6):
                if batch == 4:
                    os.killpg(process.pid, signal.SIGKILL)  # the app and its broker, mid-load
                    process.wait()
                found = await asyncio.gather(*(_rename(client, batch * 10 + i) for i in range(10)))
                published += [event_id for event_id in found if event_id]
        assert len(published) >= 30
        process = _start(tmp_path, port, log)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            async def every_event_shown() -> Counter[str]:
                notes = (await client.get("/users/1/notifications")).json()
                shown = Counter(note["event_id"] for note in notes)
                return shown if set(published) <= set(shown) else Counter()

            shown = await eventually_async(
                every_event_shown, timeout=30, interval=0.2, explain=log.read_text
            )
        assert max(shown.values()) == 1  # one effect per event, redeliveries or not
        output = log.read_text()
        assert "Traceback" not in output
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(20)


async def test_the_summary_line_names_the_publishing_requests_trace(tmp_path: Path) -> None:
    """Through the broker (OIDC and homing's signature), in Cloud Logging's JSON."""
    port, log = free_port(), tmp_path / "dev.log"
    process = _start(tmp_path, port, log, HOMING_LOG_FORMAT="json")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            created = await client.post("/users", json={"name": "a", "email": "a@example.com"})
            assert created.status_code == 201
            renamed = await client.post(
                "/change-name",
                json={"user_id": 1, "name": "b"},
                headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
            )
            assert renamed.status_code == 200
            event_id = renamed.headers["x-event-id"]

            async def notified() -> bool:
                return bool((await client.get("/users/1/notifications")).json())

            await eventually_async(notified, timeout=20, interval=0.1, explain=log.read_text)

        def summaries() -> list[dict[str, object]]:
            return [
                json.loads(line)
                for line in log.read_text().splitlines()
                if line.startswith("{") and '"logger":"homing.push"' in line
            ]

        [summary] = await eventually_async(summaries, timeout=5, interval=0.1)
        assert summary["event_id"] == event_id
        assert summary["outcome"] == "done"
        assert summary["delivery_attempt"] == 1
        assert summary["trace_id"] == trace_id  # no GOOGLE_CLOUD_PROJECT: the bare id
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)


async def test_a_new_users_followup_comes_through_the_brokers_cloud_tasks_after_its_delay(
    tmp_path: Path,
) -> None:
    """`make run` as is: homing dev makes the queue, the service stages the delayed event in the
    user's transaction, the broker's Cloud Tasks API holds it and pushes it with its token."""
    port, log = free_port(), tmp_path / "dev.log"
    process = _start(tmp_path, port, log, HOMING_FOLLOWUP_DELAY="2")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            before = datetime.now(UTC)
            created = await client.post("/users", json={"name": "Ann", "email": "a@example.com"})
            assert created.status_code == 201
            assert created.headers["x-event-status"] == "published"
            user_id = created.json()["id"]

            async def notified() -> list[dict[str, str]]:
                return (await client.get(f"/users/{user_id}/notifications")).json()  # type: ignore[no-any-return]

            [note] = await eventually_async(
                notified, timeout=20, interval=0.1, explain=log.read_text
            )
        assert note["event_id"] == created.headers["x-event-id"]
        assert "Ann" in note["text"]
        arrived = datetime.fromisoformat(note["created_at"]).replace(tzinfo=UTC)  # SQLite: naive
        assert arrived - before >= timedelta(seconds=2), (before, arrived)
        assert arrived - before < timedelta(seconds=2 + 5)
        output = log.read_text()
        queue = "projects/homing-local/locations/us-central1/queues/homing-tasks"
        assert f"queue {queue}: created" in output
        assert "Traceback" not in output
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
