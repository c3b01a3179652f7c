"""``effects="database"`` handlers: the effect and the done mark commit together, once.

Run on SQLite and PostgreSQL through the real push pipeline (``Homing.handle_push``), with the
SQLAlchemy stores and with Django's (``DjangoDedupeStore``: the effect written with Django's
ORM in the handler's ``atomic()`` block).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from homing import Delivery, Drop, Homing, KeyRing, Signer
from homing.errors import ConfigurationError, EventRegistrationError
from homing.stores import DedupeStore, QuarantineStore
from homing.stores.sql import SQLDedupeStore, SQLQuarantineStore, create_engine
from homing.testing import push_body
from tests.conftest import POSTGRES_URL, SQL_BACKENDS, OrderPlaced, open_sql_engine
from tests.support.djangoproject import DJANGO_BACKENDS, django_database

effects = MetaData()
orders = Table(
    "test_orders",
    effects,
    Column("id", Integer, primary_key=True),
    Column("event_id", String(255), nullable=False),
    Column("order_id", Integer, nullable=False),
)


Write = Callable[[Delivery, int], Awaitable[None]]


class Handler:
    """Writes one row per run in the delivery's transaction; misbehaves when asked to."""

    def __init__(self, write: Write) -> None:
        self.write = write
        self.runs = 0
        self.hold: asyncio.Event | None = None  # set: the handler waits for it mid-transaction
        self.entered = asyncio.Event()

    async def __call__(self, event: OrderPlaced, delivery: Delivery) -> None:
        self.runs += 1
        await self.write(delivery, event.order_id)
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        if event.order_id == -2:
            raise Drop("asked to drop")
        if event.order_id == -3:
            raise RuntimeError("handler bug after its write")


@dataclass
class Backend:
    """A database and its stores, as the handler writes to it and the test counts from it."""

    stores: Callable[[], tuple[DedupeStore, QuarantineStore]]  # an instance's own
    write: Write
    count: Callable[[str], Awaitable[int]]


@pytest.fixture(params=[*SQL_BACKENDS, *DJANGO_BACKENDS])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param.startswith("django"):
        yield await _django(request.param)
        return
    async with open_sql_engine(request.param, tmp_path) as engine:
        async with engine.begin() as connection:
            await connection.run_sync(effects.drop_all)
            await connection.run_sync(effects.create_all)

        async def write(delivery: Delivery, order_id: int) -> None:
            await delivery.connection.execute(
                insert(orders).values(event_id=delivery.event_id, order_id=order_id)
            )

        yield Backend(
            lambda: (SQLDedupeStore(engine), SQLQuarantineStore(engine)),
            write,
            lambda event_id: _rows(engine, event_id),
        )


async def _django(kind: str) -> Backend:
    """Django's database: the effect is a row of the test app's, written with the ORM."""
    alias = await sync_to_async(django_database)(kind, POSTGRES_URL)  # configures Django

    from homing.django import DjangoDedupeStore, DjangoQuarantineStore, run_in
    from tests.django.testapp.models import Notification

    rows = Notification.objects.using(alias)

    async def write(delivery: Delivery, order_id: int) -> None:
        await run_in(delivery, rows.create, event_id=delivery.event_id, text=str(order_id))

    async def count(event_id: str) -> int:
        return int(await rows.filter(event_id=event_id).acount())

    return Backend(lambda: (DjangoDedupeStore(alias), DjangoQuarantineStore(alias)), write, count)


@pytest.fixture
def handler(backend: Backend) -> Handler:
    return Handler(backend.write)


def _service(backend: Backend, handler: Handler) -> Homing:
    """A service instance of its own: no in-process memory shared with another one."""
    dedupe, quarantine = backend.stores()
    homing = Homing(
        signer=Signer(KeyRing({"k": "a-secret-of-enough-length"})),
        dedupe=dedupe,
        quarantine=quarantine,
    )
    homing.events.register("order.placed", OrderPlaced)
    homing.handler(OrderPlaced, effects="database")(handler)
    return homing


async def _rows(engine: AsyncEngine, event_id: str) -> int:
    async with engine.connect() as connection:
        query = select(func.count()).where(orders.c.event_id == event_id)
        return int(await connection.scalar(query) or 0)


async def test_the_effect_and_the_done_mark_commit_together(
    backend: Backend, handler: Handler
) -> None:
    homing = _service(backend, handler)
    body = push_body(homing, OrderPlaced(order_id=1, total_cents=5), event_id="e1")
    result = await homing.handle_push(body)
    assert (result.status, result.outcome) == (204, "done")
    assert await backend.count("e1") == 1
    # Another instance (no in-process memory) finds the mark in the database.
    again = await _service(backend, handler).handle_push(body)
    assert (again.status, again.outcome) == (204, "duplicate")
    assert handler.runs == 1
    assert await backend.count("e1") == 1


async def test_a_failing_handler_rolls_back_its_effect_and_the_mark(
    backend: Backend, handler: Handler
) -> None:
    homing = _service(backend, handler)
    failing = push_body(homing, OrderPlaced(order_id=-3, total_cents=5), event_id="e2")
    result = await homing.handle_push(failing)
    assert (result.status, result.outcome) == (500, "handler_failed")
    assert await backend.count("e2") == 0
    assert not homing.dedupe.known_done("e2")
    # Nothing was committed, so the redelivery runs the handler again.
    fixed = push_body(homing, OrderPlaced(order_id=2, total_cents=5), event_id="e2")
    assert (await homing.handle_push(fixed)).outcome == "done"
    assert await backend.count("e2") == 1


async def test_drop_rolls_back_the_effect_and_keeps_the_envelope(
    backend: Backend, handler: Handler
) -> None:
    homing = _service(backend, handler)
    body = push_body(homing, OrderPlaced(order_id=-2, total_cents=5), event_id="e3")
    result = await homing.handle_push(body)
    assert (result.status, result.outcome) == (200, "quarantined")
    assert await backend.count("e3") == 0
    assert (await homing.quarantine.get("e3")) is not None
    # Not handled, so not marked done: a redelivery drops again, into the same entry.
    assert (await _service(backend, handler).handle_push(body)).outcome == "quarantined"
    assert [entry.id for entry in await homing.quarantine.list()] == ["e3"]


async def test_concurrent_deliveries_make_one_effect_and_no_failure(
    backend: Backend, handler: Handler
) -> None:
    body = push_body(
        _service(backend, handler), OrderPlaced(order_id=4, total_cents=5), event_id="e4"
    )
    instances = [_service(backend, handler) for _ in range(10)]  # as ten service instances
    results = await asyncio.gather(*(homing.handle_push(body) for homing in instances))
    assert sorted(r.outcome for r in results) == ["done"] + ["duplicate"] * 9
    assert {r.status for r in results} == {204}
    assert await backend.count("e4") == 1


async def test_the_loser_of_a_race_waits_for_the_winner_and_is_a_duplicate(
    backend: Backend, handler: Handler
) -> None:
    first, second = _service(backend, handler), _service(backend, handler)
    body = push_body(first, OrderPlaced(order_id=5, total_cents=5), event_id="e5")
    handler.hold = asyncio.Event()
    winner = asyncio.create_task(first.handle_push(body))
    await handler.entered.wait()  # the winner is inside its transaction, not committed
    loser = asyncio.create_task(second.handle_push(body))
    await asyncio.sleep(0.2)
    assert not loser.done()  # it waits on the winner's row (or the database's one writer)
    handler.hold.set()
    assert (await winner).outcome == "done"
    assert (await loser).outcome == "duplicate"
    assert handler.runs == 1
    assert await backend.count("e5") == 1


@pytest.fixture(params=SQL_BACKENDS)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with open_sql_engine(request.param, tmp_path) as engine:
        async with engine.begin() as connection:
            await connection.run_sync(effects.drop_all)
            await connection.run_sync(effects.create_all)
        yield engine


async def test_an_orm_handler_writes_through_delivery_session(engine: AsyncEngine) -> None:
    homing = Homing(signer=Signer(KeyRing({"k": "a-secret-of-enough-length"})))
    homing.dedupe = SQLDedupeStore(engine)
    homing.events.register("order.placed", OrderPlaced)
    seen: list[object] = []

    @homing.handler(OrderPlaced, effects="database")
    async def handle(event: OrderPlaced, delivery: Delivery) -> None:
        seen.append(delivery.session)
        await delivery.session.execute(
            insert(orders).values(event_id=delivery.event_id, order_id=event.order_id)
        )
        await delivery.mark_done(delivery.session)  # already marked: allowed, changes nothing
        with pytest.raises(ConfigurationError, match=r"delivery\.session"):
            await delivery.mark_done(object())

    body = push_body(homing, OrderPlaced(order_id=6, total_cents=5), event_id="e6")
    assert (await homing.handle_push(body)).outcome == "done"
    assert await _rows(engine, "e6") == 1
    assert len(seen) == 1


async def test_a_database_that_refuses_connections_answers_503_and_runs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = create_engine("postgresql+asyncpg://homing:a-db-password@127.0.0.1:9/nowhere")
    handler = Handler(_never_written)
    try:
        stores = Backend(
            lambda: (SQLDedupeStore(engine), SQLQuarantineStore(engine)),
            _never_written,
            _never_counted,
        )
        homing = _service(stores, handler)
        body = push_body(homing, OrderPlaced(order_id=7, total_cents=5), event_id="e7")
        with caplog.at_level(logging.ERROR, logger="homing"):
            result = await homing.handle_push(body)
    finally:
        await engine.dispose()
    assert (result.status, result.outcome) == (503, "store_unavailable")
    assert handler.runs == 0
    assert "a-db-password" not in caplog.text
    assert "the database failed" in caplog.text


async def _never_written(delivery: Delivery, order_id: int) -> None:
    raise AssertionError("the handler ran")


async def _never_counted(event_id: str) -> int:
    raise AssertionError("nothing to count")


def test_database_effects_need_a_store_with_transactions() -> None:
    homing = Homing(signer=Signer(KeyRing({"k": "a-secret-of-enough-length"})))
    homing.events.register("order.placed", OrderPlaced)
    with pytest.raises(ConfigurationError, match="SQLDedupeStore"):
        homing.handler(OrderPlaced, effects="database")


def test_effects_is_checked() -> None:
    homing = Homing(signer=Signer(KeyRing({"k": "a-secret-of-enough-length"})))
    homing.events.register("order.placed", OrderPlaced)
    with pytest.raises(EventRegistrationError, match="'external' or 'database'"):
        homing.handler(OrderPlaced, effects="somewhere")(Handler(_never_written))  # type: ignore[call-overload]
