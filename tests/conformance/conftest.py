"""One push-semantics suite, two brokers: homing's local broker and the official emulator.

Both run as real processes on loopback and are driven the same way: google-cloud-pubsub with
``PUBSUB_EMULATOR_HOST``, pushes to a receiver served by the test process. Where the emulator is
known to differ from production (docs/broker.md), the test asserts what the emulator does
instead, so a change in either is noticed.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from google.cloud import pubsub_v1
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homing.broker.cli import child_broker
from tests.support.emulator import required_emulator, running_emulator
from tests.support.waiting import eventually

PROJECT = "homing-conformance"

# Of the final statuses (102 is an interim answer a receiver cannot give as the last one).
_PRODUCTION_ACKS = frozenset({200, 201, 202, 204})
_EMULATOR_ACKS = frozenset({200, 201, 203, 204})


@dataclass
class Push:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A push endpoint served in a thread: records pushes, answers per path as told."""

    url: str = ""
    pushes: list[Push] = field(default_factory=list)
    answers: dict[str, Callable[[int], int]] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def endpoint(self, answer: Callable[[int], int] = lambda _n: 204, delay: float = 0.0) -> str:
        """A fresh path; ``answer(n)`` is the status of its n-th push (1-based)."""
        path = f"/push/{uuid.uuid4().hex}"
        self.answers[path] = answer
        self.delays[path] = delay
        return self.url + path

    def at(self, url: str) -> list[Push]:
        path = url.removeprefix(self.url)
        with self.lock:
            return [p for p in self.pushes if p.path == path]

    def wait(self, url: str, count: int, seconds: float = 20.0) -> list[Push]:
        def enough() -> list[Push]:
            found = self.at(url)
            return found if len(found) >= count else []

        return eventually(
            enough, seconds, explain=lambda: f"{len(self.at(url))} of {count} pushes to {url}"
        )


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    async def push(request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        with state.lock:
            state.pushes.append(Push(path, dict(request.headers), body, time.monotonic()))
            n = sum(1 for p in state.pushes if p.path == path)
        delay = state.delays.get(path, 0.0)
        if delay:
            await asyncio.sleep(delay)
        answer = state.answers.get(path)
        return Response(status_code=answer(n) if answer is not None else 204)

    config = uvicorn.Config(
        Starlette(routes=[Route("/push/{id}", push, methods=["POST"])]),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    eventually(lambda: server.started)
    state.url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    yield state
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="session")
def local_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("broker")
    with child_broker(str(directory / "broker.sqlite3")) as addresses:
        yield addresses["grpc"]


@dataclass
class Target:
    """A broker under test, and the google-cloud-pubsub clients talking to it."""

    kind: str
    host: str
    publisher: Any
    subscriber: Any

    @property
    def emulator(self) -> bool:
        return self.kind == "emulator"

    def acks(self, status: int) -> bool:
        """Whether this broker takes ``status`` as an ack: 200, 201, 202 and 204 in production
        and in the local broker (and 102); the emulator acks 203 and nacks 202 instead."""
        return status in (_EMULATOR_ACKS if self.emulator else _PRODUCTION_ACKS)

    def topic(self) -> str:
        name = f"projects/{PROJECT}/topics/t-{uuid.uuid4().hex[:10]}"
        self.publisher.create_topic(name=name)
        return name

    def subscription(self, topic: str, endpoint: str | None, **settings: Any) -> str:
        name = f"projects/{PROJECT}/subscriptions/s-{uuid.uuid4().hex[:10]}"
        request: dict[str, Any] = {"name": name, "topic": topic, **settings}
        if endpoint is not None:
            push = request.setdefault("push_config", {})
            push["push_endpoint"] = endpoint
        self.subscriber.create_subscription(request=request)
        return name


@pytest.fixture(scope="session", params=["broker", "emulator"])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    if request.param == "broker":
        host = request.getfixturevalue("local_broker")
        yield from _clients("broker", host)
        return
    log: Path = tmp_path_factory.mktemp("emulator") / "emulator.log"
    with running_emulator(required_emulator(), log) as host:
        yield from _clients("emulator", host)


def _clients(kind: str, host: str) -> Iterator[Target]:
    previous = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = host
    try:
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
    finally:
        if previous is None:
            del os.environ["PUBSUB_EMULATOR_HOST"]
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = previous
    try:
        yield Target(kind, host, publisher, subscriber)
    finally:
        subscriber.close()
        publisher.stop()
        publisher.transport.close()
