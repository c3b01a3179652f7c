"""A pool with every connection in use: a push is answered 503 with ``Retry-After`` within the
pool's timeout, runs no handler and changes nothing; once a connection is free it goes through.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from homing import Delivery, Homing, KeyRing, MemoryPublisher, Signer, StoreBusy
from homing.dispatch import Effects
from homing.starlette import push_route
from homing.stores.sql import SQLDedupeStore, create_engine, create_tables
from homing.testing import push_body
from tests.conftest import POSTGRES_URL, SQL_BACKENDS, OrderPlaced, open_sql_engine

#: Short, so the test is quick; the default is 5 s on PostgreSQL.
POOL_TIMEOUT = 0.3


@pytest.fixture(params=SQL_BACKENDS)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """An engine of one pooled connection that waits ``POOL_TIMEOUT`` for it."""
    async with open_sql_engine(request.param, tmp_path):  # the tables, made fresh
        pass
    url = f"sqlite+aiosqlite:///{tmp_path}/homing.db" if request.param == "sqlite" else POSTGRES_URL
    engine = create_engine(url, pool_size=1, max_overflow=0, pool_timeout=POOL_TIMEOUT)
    await create_tables(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.mark.parametrize("effects", ["external", "database"])
async def test_a_push_meeting_an_exhausted_pool_is_503_with_retry_after_at_once(
    engine: AsyncEngine, effects: Effects
) -> None:
    ran: list[str] = []
    homing = Homing(
        signer=Signer(KeyRing({"k": "a-secret-of-enough-length"})),
        publisher=MemoryPublisher(),
        dedupe=SQLDedupeStore(engine),
    )
    homing.events.register("order.placed", OrderPlaced)

    @homing.handler(OrderPlaced, effects=effects)
    async def handle(event: OrderPlaced, delivery: Delivery) -> None:
        ran.append(delivery.event_id)

    body = push_body(homing, OrderPlaced(order_id=1, total_cents=1), event_id="busy-1")
    app = Starlette(routes=[push_route(homing, "/events")])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        async with engine.connect() as held:  # the pool's only connection, taken
            await held.exec_driver_sql("SELECT 1")
            started = time.perf_counter()
            busy = await client.post("/events", content=body)
            waited = time.perf_counter() - started
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "1"
        assert busy.json() == {
            "outcome": "store_unavailable",
            "detail": "every database connection is in use",
        }
        assert POOL_TIMEOUT <= waited < POOL_TIMEOUT + 5  # the pool's wait, not a hang
        assert ran == []  # no handler ran, and nothing was marked
        freed = await client.post("/events", content=body)
        assert freed.status_code == 204
        assert ran == ["busy-1"]


async def test_the_store_says_busy_not_down(engine: AsyncEngine) -> None:
    store = SQLDedupeStore(engine)
    async with engine.connect() as held:
        await held.exec_driver_sql("SELECT 1")
        with pytest.raises(StoreBusy, match="no pooled database connection came free"):
            await store.claim("busy-2", lease=5)


def test_postgresql_waits_5_seconds_for_a_connection_by_default() -> None:
    engine = create_engine(POSTGRES_URL)
    assert engine.pool.timeout() == 5  # type: ignore[attr-defined]
