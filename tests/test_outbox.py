"""The transactional outbox on SQLite and PostgreSQL."""

from __future__ import annotations

import types
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from homing import ConfigurationError, Homing, MemoryPublisher, OutgoingMessage, Publisher
from homing.outbox import FlushEndpoint, SQLOutbox
from tests.conftest import SQL_BACKENDS, OrderPlaced, open_sql_engine
from tests.support.clock import Clock
from tests.support.waiting import eventually_async


class Switchable(Publisher):
    """A broker that can be taken down and brought back."""

    def __init__(self) -> None:
        self.up = True
        self.sent: list[OutgoingMessage] = []

    async def _send(self, message: OutgoingMessage) -> str:
        if not self.up:
            raise ConnectionError("broker down")
        self.sent.append(message)
        return str(len(self.sent))


@pytest.fixture(params=SQL_BACKENDS)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with open_sql_engine(request.param, tmp_path) as engine:
        yield engine


@pytest.fixture
def broker() -> Switchable:
    return Switchable()


@pytest.fixture
def outbox(engine: AsyncEngine, broker: Switchable) -> SQLOutbox:
    return SQLOutbox(engine, broker)


def _message(homing: Homing, n: int = 1) -> OutgoingMessage:
    return homing.sign(OrderPlaced(order_id=n, total_cents=n))


async def test_a_committed_event_is_sent_once(
    outbox: SQLOutbox, engine: AsyncEngine, broker: Switchable, homing: Homing
) -> None:
    async with engine.begin() as connection:
        staged = await outbox.stage(connection, _message(homing))
    assert await outbox.count() == 1
    assert await outbox.send(staged) is True
    assert await outbox.send(staged) is False  # nothing left to send
    assert [m.event_id for m in broker.sent] == [staged.event_id]
    assert await outbox.count() == 0


async def test_a_rolled_back_event_is_never_sent(
    outbox: SQLOutbox, engine: AsyncEngine, broker: Switchable, homing: Homing
) -> None:
    staged = _message(homing)
    async with engine.connect() as connection:
        transaction = await connection.begin()
        await outbox.stage(connection, staged)
        await transaction.rollback()  # the state change failed
    assert await outbox.send(staged) is False
    assert broker.sent == []
    assert await outbox.count() == 0


async def test_an_event_waits_while_the_broker_is_down_then_flushes_unchanged(
    outbox: SQLOutbox, engine: AsyncEngine, broker: Switchable, homing: Homing
) -> None:
    broker.up = False
    async with engine.begin() as connection:
        staged = await outbox.stage(connection, _message(homing, 1))
        await outbox.stage(connection, _message(homing, 2))
    assert await outbox.send(staged) is False
    report = await outbox.flush()
    assert (report.published, report.failed) == (0, 1)  # stops at the first refusal
    assert "broker down" in report.errors[0]
    [first, _] = await outbox.pending()
    assert first.event_id == staged.event_id
    assert first.attributes == staged.attributes  # signed once; republished as it was

    broker.up = True
    report = await outbox.flush()
    assert (report.published, report.failed) == (2, 0)
    assert broker.sent[0].event_id == staged.event_id
    assert broker.sent[0].data == staged.data
    assert broker.sent[0].attributes == staged.attributes
    assert await outbox.count() == 0


async def test_failures_are_recorded_on_the_row(
    outbox: SQLOutbox, engine: AsyncEngine, broker: Switchable, homing: Homing
) -> None:
    from sqlalchemy import select

    from homing.stores.sql import outbox as table

    broker.up = False
    async with engine.begin() as connection:
        staged = await outbox.stage(connection, _message(homing))
    await outbox.send(staged)
    await outbox.flush()
    async with engine.connect() as connection:
        row = (await connection.execute(select(table))).mappings().one()
    assert row["attempts"] == 2
    assert "broker down" in row["last_error"]


async def test_the_flush_route_needs_credentials(
    outbox: SQLOutbox, engine: AsyncEngine, broker: Switchable, homing: Homing
) -> None:
    async with engine.begin() as connection:
        await outbox.stage(connection, _message(homing))
    route = FlushEndpoint(outbox, token="a-flush-token-for-tests")
    transport = httpx.ASGITransport(app=route)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post("/")).status_code == 401
        wrong = {"authorization": "Bearer not-the-token"}
        assert (await client.post("/", headers=wrong)).status_code == 401
        assert broker.sent == []
        right = {"authorization": "Bearer a-flush-token-for-tests"}
        response = await client.post("/", headers=right)
        assert response.status_code == 200
        assert response.json() == {"published": 1, "failed": 0, "pending": 0}
        refused = await client.get("/", headers=right)
        assert (refused.status_code, refused.headers["allow"]) == (405, "POST")
        assert refused.json() == {"outcome": "method_not_allowed"}
    assert len(broker.sent) == 1


async def test_a_backlog_drains_with_the_first_send_after_the_broker_returns(
    outbox: SQLOutbox, engine: AsyncEngine, broker: Switchable, homing: Homing
) -> None:
    broker.up = False
    staged = []
    for n in range(3):
        async with engine.begin() as connection:
            staged.append(await outbox.stage(connection, _message(homing, n)))
    assert [await outbox.send(m) for m in staged[:2]] == [False, False]
    broker.up = True
    assert await outbox.send(staged[2]) is True
    assert sorted(m.event_id for m in broker.sent) == sorted(m.event_id for m in staged)
    assert await outbox.count() == 0


async def test_a_database_failure_in_send_is_an_answer_not_an_exception(
    outbox: SQLOutbox, engine: AsyncEngine, broker: Switchable, homing: Homing
) -> None:
    from homing.stores.sql import outbox as table

    async with engine.begin() as connection:
        staged = await outbox.stage(connection, _message(homing))
        await connection.run_sync(table.drop)  # the database loses the table under us
    assert await outbox.send(staged) is False
    assert broker.sent == []


async def _rows(engine: AsyncEngine) -> set[str]:
    """The outbox's rows as they are, without the sweep that ``count()`` does first."""
    from sqlalchemy import select

    from homing.stores.sql import outbox as table

    async with engine.connect() as connection:
        return set((await connection.scalars(select(table.c.event_id))).all())


async def test_a_published_row_is_deleted_by_the_next_stage_without_a_commit_of_its_own(
    engine: AsyncEngine, broker: Switchable, homing: Homing
) -> None:
    # No timed sweep in this test, and no time kept for committed() to look.
    outbox = SQLOutbox(engine, broker, sweep_delay=60, keep_published=0)
    async with engine.begin() as connection:
        first = await outbox.stage(connection, _message(homing, 1))
    assert await outbox.send(first) is True
    assert await _rows(engine) == {first.event_id}  # published; its row waits for a ride
    async with engine.begin() as connection:
        second = await outbox.stage(connection, _message(homing, 2))
    assert await _rows(engine) == {second.event_id}
    assert await outbox.send(second) is True
    assert [m.event_id for m in broker.sent] == [first.event_id, second.event_id]
    await outbox.aclose()
    assert await _rows(engine) == set()


async def test_a_rolled_back_stage_does_not_lose_the_deletes_it_carried(
    engine: AsyncEngine, broker: Switchable, homing: Homing
) -> None:
    outbox = SQLOutbox(engine, broker, sweep_delay=0.05, keep_published=0)
    async with engine.begin() as connection:
        first = await outbox.stage(connection, _message(homing, 1))
    assert await outbox.send(first) is True
    async with engine.connect() as connection:
        transaction = await connection.begin()
        await outbox.stage(connection, _message(homing, 2))
        await transaction.rollback()
    assert await _rows(engine) == {first.event_id}

    async def swept() -> bool:  # by the timed sweep instead
        return not await _rows(engine)

    await eventually_async(swept)
    assert [m.event_id for m in broker.sent] == [first.event_id]
    await outbox.aclose()


async def test_a_drain_leaves_a_row_younger_than_the_drain_age(
    engine: AsyncEngine, broker: Switchable, homing: Homing
) -> None:
    clock = Clock()
    killed = SQLOutbox(engine, broker, clock=clock)
    async with engine.begin() as connection:
        left = await killed.stage(connection, _message(homing, 1))  # committed, never sent
    successor = SQLOutbox(engine, broker, drain_age=10.0, clock=clock)
    clock.advance(9.5)
    report = await successor.flush(older_than=successor.drain_age)  # as start()'s drains do
    assert (report.published, broker.sent) == (0, [])  # its own request may still send it
    clock.advance(0.5)
    assert (await successor.flush(older_than=successor.drain_age)).published == 1
    assert [m.event_id for m in broker.sent] == [left.event_id]
    await successor.aclose()
    assert await _rows(engine) == set()


async def test_start_publishes_what_a_killed_process_left(
    engine: AsyncEngine, broker: Switchable, homing: Homing
) -> None:
    clock = Clock()
    killed = SQLOutbox(engine, broker, clock=clock)
    async with engine.begin() as connection:
        left = await killed.stage(connection, _message(homing, 1))  # committed, never sent
    successor = SQLOutbox(engine, broker, clock=clock)
    clock.advance(successor.drain_age)
    await successor.start()
    await eventually_async(lambda: broker.sent)
    assert [m.event_id for m in broker.sent] == [left.event_id]
    await successor.aclose()
    assert await _rows(engine) == set()


async def test_a_send_drains_rows_another_instance_left_once_per_interval(
    engine: AsyncEngine, broker: Switchable, homing: Homing
) -> None:
    other = SQLOutbox(engine, broker)
    async with engine.begin() as connection:
        orphan = await other.stage(connection, _message(homing, 1))
    outbox = SQLOutbox(engine, broker, drain_age=0, drain_interval=0)
    async with engine.begin() as connection:
        mine = await outbox.stage(connection, _message(homing, 2))
    assert await outbox.send(mine) is True
    assert sorted(m.event_id for m in broker.sent) == sorted([orphan.event_id, mine.event_id])
    await outbox.aclose()


async def test_the_flush_route_answers_503_when_the_database_fails(
    engine: AsyncEngine, broker: Switchable
) -> None:
    from homing.stores.sql import outbox as table

    async with engine.begin() as connection:
        await connection.run_sync(table.drop)
    route = FlushEndpoint(SQLOutbox(engine, broker), token="a-flush-token-for-tests")
    transport = httpx.ASGITransport(app=route)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        right = {"authorization": "Bearer a-flush-token-for-tests"}
        response = await client.post("/", headers=right)
    assert response.status_code == 503
    assert response.json() == {"outcome": "store_unavailable"}


async def test_committed_tells_an_in_doubt_commit_from_a_rollback(
    engine: AsyncEngine, outbox: SQLOutbox, homing: Homing
) -> None:
    async with engine.begin() as connection:
        kept = await outbox.stage(connection, _message(homing, 1))
    async with engine.connect() as connection:
        transaction = await connection.begin()
        undone = await outbox.stage(connection, _message(homing, 2))
        await transaction.rollback()
    assert await outbox.committed(kept) is True
    assert await outbox.committed(undone) is False


async def test_committed_gives_up_after_its_time_while_the_database_is_away(
    broker: Switchable, homing: Homing
) -> None:
    from homing.stores.sql import create_engine

    engine = create_engine("postgresql+asyncpg://postgres@127.0.0.1:9/nowhere")
    try:
        outbox = SQLOutbox(engine, broker)
        assert await outbox.committed(_message(homing), within=0.3) is False
    finally:
        await engine.dispose()


async def test_a_row_another_instance_published_is_kept_for_an_in_doubt_commit(
    engine: AsyncEngine, broker: Switchable, homing: Homing
) -> None:
    in_doubt = SQLOutbox(engine, broker)
    async with engine.begin() as connection:
        staged = await in_doubt.stage(connection, _message(homing, 1))
    # Meanwhile another instance drains it (its connection works; this one's COMMIT answer
    # was lost) and sweeps what it published.
    other = SQLOutbox(engine, broker, drain_age=0, drain_interval=0, sweep_delay=0.01)
    async with engine.begin() as connection:
        mine = await other.stage(connection, _message(homing, 2))
    assert await other.send(mine) is True
    assert staged.event_id in {m.event_id for m in broker.sent}
    await other.sweep()
    assert await in_doubt.committed(staged) is True
    await other.aclose()
    await in_doubt.aclose()


async def test_start_drains_batch_after_batch(
    engine: AsyncEngine, broker: Switchable, homing: Homing
) -> None:
    clock = Clock()
    killed = SQLOutbox(engine, broker, clock=clock)
    async with engine.begin() as connection:
        left = [await killed.stage(connection, _message(homing, n)) for n in range(7)]
    successor = SQLOutbox(engine, broker, backlog_limit=3, clock=clock)
    clock.advance(successor.drain_age)
    await successor.start()
    await eventually_async(lambda: len(broker.sent) == len(left))
    assert sorted(m.event_id for m in broker.sent) == sorted(m.event_id for m in left)
    await successor.aclose()


def test_the_package_exports_exactly_all() -> None:
    import homing.outbox

    exported = {
        name
        for name, value in vars(homing.outbox).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert exported == set(homing.outbox.__all__) == {"FlushEndpoint", "FlushReport", "SQLOutbox"}


async def test_a_flush_token_needs_16_bytes(engine: AsyncEngine) -> None:
    with pytest.raises(ConfigurationError, match="flush token is shorter than 16 bytes"):
        FlushEndpoint(SQLOutbox(engine, MemoryPublisher()), token="short")
