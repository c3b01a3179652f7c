"""A broker killed with -9 while Cloud Tasks are scheduled, then restarted, runs every task it
accepted, none before its time."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
from google.cloud import tasks_v2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homing.publishers.cloudtasks import emulator_client
from tests.broker.test_kill_9 import _broker
from tests.support.ports import free_port
from tests.support.waiting import eventually_async

pytestmark = pytest.mark.e2e

PARENT = "projects/homing-local/locations/us-central1"
QUEUE = f"{PARENT}/queues/later"


async def test_kill_9_with_tasks_scheduled_loses_none(tmp_path: Path) -> None:
    arrived: dict[str, float] = {}  # task id -> first arrival

    async def events(request: Request) -> Response:
        arrived.setdefault(request.headers["x-cloudtasks-taskname"], time.time())
        return Response(status_code=204)

    receiver_port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Route("/events", events, methods=["POST"])]),
            port=receiver_port,
            log_level="warning",
            lifespan="off",
        )
    )
    serving = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{receiver_port}/events"
    port, data, log = free_port(), tmp_path / "broker.sqlite3", tmp_path / "broker.log"
    due: dict[str, float] = {}
    try:
        with _broker(data, port, log) as first:
            client = emulator_client(f"127.0.0.1:{port}")
            await client.create_queue(parent=PARENT, queue=tasks_v2.Queue(name=QUEUE))
            start = datetime.now(UTC)
            for i in range(300):
                # A third due at once (some run, some are in flight at the kill), the rest
                # scheduled 3 to 5 seconds ahead: still waiting when the broker dies.
                at = start + timedelta(seconds=0 if i % 3 == 0 else 3 + (i % 20) / 10)
                task = tasks_v2.Task(
                    name=f"{QUEUE}/tasks/t-{i}",
                    schedule_time=at,
                    http_request=tasks_v2.HttpRequest(url=url, body=b"{}"),
                )
                await client.create_task(parent=QUEUE, task=task)  # answered once committed
                due[f"t-{i}"] = at.timestamp()
            await client.transport.close()  # type: ignore[no-untyped-call]
            first.send_signal(signal.SIGKILL)
            first.wait()
        killed_at = time.time()
        scheduled = {name for name, at in due.items() if at > killed_at}
        assert len(scheduled) > 150, "the tasks ran before the kill: nothing was tested"
        assert not scheduled & set(arrived)
        with _broker(data, port, log):
            await eventually_async(
                lambda: set(due) <= set(arrived),
                timeout=30,
                explain=lambda: sorted(set(due) - set(arrived))[:10],
            )
        early = {name: due[name] - at for name, at in arrived.items() if at < due[name]}
        assert early == {}, "run before their schedule time"
    finally:
        server.should_exit = True
        await serving
