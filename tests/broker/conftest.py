"""Fixtures for the broker's tests: a broker whose pushes go to an in-test receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from google.pubsub_v1 import types as pubsub

from homing.broker import Broker

TOPIC = "projects/local/topics/events"
SUBSCRIPTION = "projects/local/subscriptions/events-push"
DEAD_TOPIC = "projects/local/topics/events-dead"
ENDPOINT = "http://receiver.test/events"

Answer = Callable[[httpx.Request], Awaitable[httpx.Response]]


@dataclass
class Receiver:
    """Records every push; ``answer`` decides the response (200 unless replaced)."""

    requests: list[httpx.Request] = field(default_factory=list)
    answer: Answer | None = None
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        async with self.changed:
            self.requests.append(request)
            self.changed.notify_all()
        if self.answer is not None:
            return await self.answer(request)
        return httpx.Response(200)

    async def wait_for(self, count: int, seconds: float = 10.0) -> list[httpx.Request]:
        async with asyncio.timeout(seconds), self.changed:
            await self.changed.wait_for(lambda: len(self.requests) >= count)
        return self.requests


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
async def broker(tmp_path: Path, receiver: Receiver) -> AsyncIterator[Broker]:
    """Pushes time out after the subscription's ack deadline (10 s by default), as in
    production: a loaded machine makes no answer late."""
    client = httpx.AsyncClient(transport=httpx.MockTransport(receiver))
    async with client, Broker(tmp_path / "broker.sqlite3", client=client) as b:
        yield b


def subscription(
    *,
    name: str = SUBSCRIPTION,
    topic: str = TOPIC,
    endpoint: str = ENDPOINT,
    dead_letter: int | None = None,
    backoff: float | None = 0.0,
    ordering: bool = False,
    **push: object,
) -> pubsub.Subscription:
    """A push subscription; by default retried at once (a zero RetryPolicy backoff)."""
    made = pubsub.Subscription(
        name=name,
        topic=topic,
        push_config=pubsub.PushConfig(push_endpoint=endpoint, **push),
        enable_message_ordering=ordering,
    )
    if backoff is not None:
        made.retry_policy = pubsub.RetryPolicy(
            minimum_backoff=timedelta(seconds=backoff), maximum_backoff=timedelta(seconds=backoff)
        )
    if dead_letter is not None:
        made.dead_letter_policy = pubsub.DeadLetterPolicy(
            dead_letter_topic=DEAD_TOPIC, max_delivery_attempts=dead_letter
        )
    return made


@pytest.fixture
async def topic(broker: Broker) -> str:
    await broker.create_topic(pubsub.Topic(name=TOPIC))
    return TOPIC
