"""Delayed events: ``publish(delay=...)`` / ``at=``, each event type's transport, the outbox."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from homing import (
    ConfigurationError,
    Homing,
    InvalidDelay,
    KeyRing,
    LoopbackPublisher,
    MemoryPublisher,
    OutgoingMessage,
    Publisher,
    Signer,
)
from homing.outbox import SQLOutbox
from homing.stores.sql import create_engine, create_tables
from tests.conftest import SQL_BACKENDS, OrderPlaced, Recorder, open_sql_engine


class Followup(BaseModel):
    user_id: int


class Production(Publisher):
    """A broker elsewhere that cannot delay (as Pub/Sub), kept as a list."""

    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []

    async def _send(self, message: OutgoingMessage) -> str:
        self.sent.append(message)
        return str(len(self.sent))


def _homing(publisher: Publisher, **transports: Publisher) -> Homing:
    homing = Homing(
        signer=Signer(KeyRing({"k": "a-secret-of-enough-length"})),
        publisher=publisher,
        transports=transports,
    )
    homing.event("user.welcome.followup", transport="tasks")(Followup)
    homing.event("order.placed")(OrderPlaced)
    return homing


async def test_a_delayed_event_is_kept_until_its_time(
    homing: Homing, publisher: MemoryPublisher, client: httpx.AsyncClient, recorder: Recorder
) -> None:
    before = datetime.now(UTC)
    event_id = await homing.publish(
        OrderPlaced(order_id=1, total_cents=5), delay=timedelta(seconds=60)
    )
    [(_, message)] = publisher.messages
    assert message.event_id == event_id
    assert message.deliver_at is not None
    assert (
        before + timedelta(seconds=60)
        <= message.deliver_at
        <= datetime.now(UTC) + timedelta(seconds=60)
    )
    assert await publisher.deliver(client) == []  # not yet
    assert recorder.seen == []
    [response] = await publisher.deliver(client, now=message.deliver_at)
    assert response.status_code == 204
    assert [event.order_id for event, _ in recorder.seen] == [1]
    assert publisher.messages == []


async def test_at_is_a_time_and_delay_zero_is_now(
    homing: Homing, publisher: MemoryPublisher
) -> None:
    at = datetime.now(UTC) + timedelta(hours=2)
    await homing.publish(OrderPlaced(order_id=1, total_cents=5), at=at)
    await homing.publish(OrderPlaced(order_id=2, total_cents=5), delay=timedelta(0))
    await homing.publish(OrderPlaced(order_id=3, total_cents=5))
    first, second, third = (message for _, message in publisher.messages)
    assert first.deliver_at == at
    assert second.deliver_at is not None
    assert second.deliver_at <= datetime.now(UTC)
    assert third.deliver_at is None
    assert [m.event_id for _, m in publisher.due()] == [second.event_id, third.event_id]


@pytest.mark.parametrize(
    ("when", "match"),
    [
        ({"delay": timedelta(seconds=-1)}, "delay must not be negative"),
        ({"at": datetime.now(UTC) - timedelta(minutes=5)}, "at is in the past"),
        ({"at": datetime(2030, 1, 1)}, "at must be timezone-aware"),
        ({"delay": 30}, "delay must be a datetime.timedelta"),
        ({"delay": timedelta(seconds=1), "at": datetime.now(UTC)}, "not both"),
        ({"delay": timedelta(days=31)}, "at most 30 days ahead; this event is 31 days ahead"),
    ],
)
async def test_a_bad_delay_is_refused_at_publish(
    homing: Homing, publisher: MemoryPublisher, when: dict[str, object], match: str
) -> None:
    with pytest.raises(InvalidDelay, match=match):
        await homing.publish(OrderPlaced(order_id=1, total_cents=5), **when)  # type: ignore[arg-type]
    assert publisher.messages == []


async def test_a_transport_that_cannot_delay_refuses_at_publish() -> None:
    production = Production()
    homing = _homing(production)
    with pytest.raises(InvalidDelay, match="Production cannot delay an event"):
        await homing.publish(OrderPlaced(order_id=1, total_cents=5), delay=timedelta(seconds=5))
    async with LoopbackPublisher("http://127.0.0.1:9/events") as loopback:
        homing.publisher = loopback
        with pytest.raises(InvalidDelay, match="LoopbackPublisher cannot delay an event"):
            await homing.publish(OrderPlaced(order_id=1, total_cents=5), delay=timedelta(seconds=1))
        assert loopback.pending == 0
    assert production.sent == []
    # Straight to the publisher (an outbox drain), the publisher itself refuses.
    message = OutgoingMessage(
        data=b"{}", attributes={}, event_type="x", event_id="e1", deliver_at=datetime.now(UTC)
    )
    with pytest.raises(InvalidDelay, match="Production cannot delay"):
        await production.publish(message)


async def test_each_event_type_goes_to_its_declared_transport() -> None:
    production, tasks = Production(), MemoryPublisher()
    homing = _homing(production, tasks=tasks)
    await homing.publish(Followup(user_id=7), delay=timedelta(seconds=30))
    await homing.publish(OrderPlaced(order_id=1, total_cents=5))
    assert [m.event_type for _, m in tasks.messages] == ["user.welcome.followup"]
    assert [m.event_type for m in production.sent] == ["order.placed"]
    assert homing.transports.transport_of("user.welcome.followup") == "tasks"
    await homing.aclose()
    with pytest.raises(Exception, match="MemoryPublisher is closed"):
        await tasks.publish(homing.sign(Followup(user_id=1)))


async def test_a_missing_transport_is_an_error_unless_the_default_is_local() -> None:
    homing = _homing(Production())
    with pytest.raises(ConfigurationError, match=r"bound to transport 'tasks'.*HOMING_TASKS_QUEUE"):
        await homing.publish(Followup(user_id=7))
    local = MemoryPublisher()
    homing.publisher = local  # tests and development: the local publisher stands in
    await homing.publish(Followup(user_id=7), delay=timedelta(seconds=2))
    assert [m.event_type for _, m in local.messages] == ["user.welcome.followup"]


def test_the_default_transport_name_is_reserved() -> None:
    with pytest.raises(ConfigurationError, match="'default' is the default publisher's"):
        Homing(signer=None, auth="none", transports={"default": MemoryPublisher()})


@pytest.fixture(params=SQL_BACKENDS)
async def engine(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    async with open_sql_engine(request.param, tmp_path) as engine:
        yield engine


async def test_the_outbox_keeps_the_delivery_time(engine: AsyncEngine, homing: Homing) -> None:
    broker = MemoryPublisher()
    outbox = SQLOutbox(engine, broker)
    at = datetime.now(UTC) + timedelta(minutes=10)
    message = homing.sign(OrderPlaced(order_id=1, total_cents=5), at=at)
    async with engine.begin() as connection:
        await outbox.stage(connection, message)
    [waiting] = await outbox.pending()
    assert waiting.deliver_at == at
    report = await outbox.flush()
    assert report.published == 1
    [(_, published)] = broker.messages
    assert published.deliver_at == at
    await outbox.aclose()


async def test_the_outbox_refuses_to_stage_what_its_transport_cannot_delay(homing: Homing) -> None:
    homing.publisher = Production()
    with pytest.raises(InvalidDelay, match="cannot delay"):
        homing.sign(OrderPlaced(order_id=1, total_cents=5), delay=timedelta(seconds=1))


async def test_an_outbox_table_from_before_gains_the_column(tmp_path: Path, homing: Homing) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/old.db")
    async with engine.begin() as connection:  # the table as homing 0.1 created it
        await connection.execute(
            text(
                "CREATE TABLE homing_outbox (event_id VARCHAR(255) PRIMARY KEY, event_type "
                "VARCHAR(255) NOT NULL, data BLOB NOT NULL, attributes TEXT NOT NULL, "
                "ordering_key VARCHAR(1024), created_at DATETIME NOT NULL, attempts INTEGER "
                "NOT NULL, last_error TEXT)"
            )
        )
        await connection.execute(
            text(
                "INSERT INTO homing_outbox VALUES ('old-1', 'order.placed', X'7B7D', '{}', "
                "NULL, '2026-01-01 00:00:00', 0, NULL)"
            )
        )
    await create_tables(engine)
    await create_tables(engine)  # idempotent
    outbox = SQLOutbox(engine, MemoryPublisher())
    (old,) = await outbox.pending()
    assert (old.event_id, old.deliver_at) == ("old-1", None)
    at = datetime.now(UTC) + timedelta(minutes=1)
    async with engine.begin() as connection:
        await outbox.stage(connection, homing.sign(OrderPlaced(order_id=2, total_cents=1), at=at))
    assert [m.deliver_at for m in await outbox.pending()] == [None, at]
    await outbox.aclose()
    await engine.dispose()
