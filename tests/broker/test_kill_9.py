"""A broker killed with -9 under load, then restarted, delivers every message it acknowledged."""

from __future__ import annotations

import asyncio
import base64
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
import uvicorn
from google.api_core import exceptions as api
from google.api_core.retry import Retry, if_exception_type
from google.cloud import pubsub_v1
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.ports import free_port
from tests.support.processes import running
from tests.support.waiting import eventually_async

pytestmark = pytest.mark.e2e

PROJECT = "homing-local"
TOPIC = f"projects/{PROJECT}/topics/load"


@contextmanager
def _broker(data: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "homing.cli", "broker", "--port", str(port)]
    # Any free port for the web page: --port + 1 may be held by a closed connection (TIME_WAIT)
    # on a machine busy with other tests.
    command += ["--data", str(data), "--http-port", "0"]
    with running(
        command,
        log,
        lambda: f"on 127.0.0.1:{port}" in log.read_text(),
        timeout=20,
        what="homing broker",
    ) as process:
        yield process


async def test_kill_9_under_load_loses_nothing_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: list[str] = []

    async def events(request: Request) -> Response:
        body = orjson.loads(await request.body())
        await asyncio.sleep(0.002)
        received.append(base64.b64decode(body["message"]["data"]).decode())
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
    port, data, log = free_port(), tmp_path / "broker.sqlite3", tmp_path / "broker.log"
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{port}")
    try:
        with _broker(data, port, log) as first:
            # The client retries a publish the dead broker did not answer; quickly, here.
            retry = Retry(
                initial=0.1,
                maximum=0.5,
                timeout=20,
                predicate=if_exception_type(api.ServiceUnavailable, api.DeadlineExceeded),
            )
            publisher = pubsub_v1.PublisherClient(
                publisher_options=pubsub_v1.types.PublisherOptions(retry=retry)
            )
            subscriber = pubsub_v1.SubscriberClient()
            await asyncio.to_thread(publisher.create_topic, name=TOPIC)
            await asyncio.to_thread(
                subscriber.create_subscription,
                request={
                    "name": f"projects/{PROJECT}/subscriptions/load-push",
                    "topic": TOPIC,
                    "push_config": {"push_endpoint": f"http://127.0.0.1:{receiver_port}/events"},
                    "retry_policy": {
                        "minimum_backoff": {"seconds": 0},
                        "maximum_backoff": {"seconds": 1},
                    },
                },
            )
            subscriber.close()
            futures: dict[str, Future[str]] = {}
            for i in range(2000):
                futures[f"m{i}"] = publisher.publish(TOPIC, f"m{i}".encode())
                if i % 100 == 99:
                    await asyncio.sleep(0.01)
                if i == 1000:
                    # Under load: messages published, some pushed, more on the way.
                    first.send_signal(signal.SIGKILL)
                    first.wait()
                    assert len(received) < 1000  # most were still owed when it died
                    break
        with _broker(data, port, log):
            acknowledged = set()
            for name, future in futures.items():
                try:
                    await asyncio.wrap_future(future)
                except Exception:  # noqa: S112 - refused while the broker was down: not acked
                    continue
                acknowledged.add(name)
            assert len(acknowledged) > 500
            await eventually_async(
                lambda: acknowledged <= set(received),
                timeout=30,
                explain=lambda: sorted(acknowledged - set(received))[:10],
            )
            await asyncio.to_thread(publisher.stop)
            publisher.transport.close()
    finally:
        server.should_exit = True
        await serving
