"""Ten copies of one signed envelope arrive at once: one delivery runs the handler, the others
are told to come back (409) or that it is done (204); exactly one notification. Against both
reference services (users_api, and django_api on homing.django)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from homing.signing import EVENT_ID
from tests.faults.conftest import (
    KEYS,
    Database,
    Services,
    Tally,
    create_users,
    notifications_seen,
    service_env,
)
from tests.support.services import REFERENCE_SERVICES, homing_envelope
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

COPIES = 10


def _envelope(user_id: int) -> tuple[bytes, str]:
    """One signed push body, made by ``homing envelope`` as an operator would; and its event id."""
    body = homing_envelope(
        "user.name.changed", f'{{"user_id": {user_id}, "old_name": "a", "new_name": "b"}}', KEYS
    )
    event_id: str = orjson.loads(body)["message"]["attributes"][EVENT_ID]
    return body, event_id


async def _post_all(base: str, body: bytes) -> list[int]:
    """POST ``body`` ``COPIES`` times at once: every copy is sent but its last byte, then the
    last bytes all leave together, so the server sees ten complete pushes at the same moment."""
    sent_but_last = 0
    go = asyncio.Event()

    async def parts() -> AsyncIterator[bytes]:
        nonlocal sent_but_last
        yield body[:-1]
        sent_but_last += 1
        if sent_but_last == COPIES:
            go.set()
        await go.wait()
        yield body[-1:]

    headers = {"content-length": str(len(body)), "content-type": "application/json"}
    limits = httpx.Limits(max_connections=COPIES)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        posts = (client.post("/events", content=parts(), headers=headers) for _ in range(COPIES))
        answers = await asyncio.gather(*posts)
    return [answer.status_code for answer in answers]


@pytest.mark.parametrize("reference_service", REFERENCE_SERVICES)
def test_ten_concurrent_deliveries_of_one_envelope(database: Database, services: Services) -> None:
    started = time.monotonic()
    service = services.start(service_env(database))
    (user_id,) = create_users(service, 1)
    body, event_id = _envelope(user_id)

    statuses = asyncio.run(_post_all(service.url, body))
    assert set(statuses) <= {204, 409}, statuses
    redelivered = eventually(
        lambda: httpx.post(f"{service.url}/events", content=body).status_code == 204,
        timeout=10,
        interval=0.1,
    )
    assert redelivered
    tally = Tally.of([event_id], notifications_seen(service, [user_id]))
    print(
        f"\n[10 concurrent, {database.kind}, {services.which}] {tally.line()} "
        f"(answers: {sorted(statuses)}, {time.monotonic() - started:.1f}s)"
    )
    assert Tally.of([event_id], database.notifications_by_event()) == tally
    marks = "SELECT state FROM homing_handled_events WHERE event_id = $1"
    assert database.rows(marks, event_id) == [("done",)]  # (django_api's welcome task has one)
    assert tally.lost == 0
    assert tally.doubled == 0
