"""PostgreSQL: a handler's transaction opens with its done mark in BEGIN's round trip.

The mark then goes out as SQL text (the simple query protocol takes no parameters), its values
quoted by SQLAlchemy's literal processor: the quoting is checked here against the server
itself, over generated text, beside the bound-parameter form. Then the round trips are
counted, and a transaction the server aborted is never reported done.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from homing import Claim, Delivery, Homing, KeyRing, MemoryPublisher, Signer
from homing.stores.sql import SQLDedupeStore, create_engine
from homing.stores.sql.engine import InlineStatement
from homing.testing import push_body
from tests.conftest import POSTGRES_URL, OrderPlaced, open_sql_engine
from tests.support.proxy import cuttable_proxy

pytestmark = pytest.mark.postgres


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with open_sql_engine("postgresql", tmp_path) as engine:
        async with engine.begin() as connection:
            await connection.exec_driver_sql("DROP TABLE IF EXISTS inline_effects")
            await connection.exec_driver_sql("CREATE TABLE inline_effects (id TEXT PRIMARY KEY)")
        yield engine


#: Any text PostgreSQL stores (no NUL), with the characters quoting is about made likely.
TEXT = st.lists(
    st.one_of(
        st.sampled_from(["'", "\\", '"', "$1", "$", ";", "--", "/*", "\n", "E'", "%", "''"]),
        st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]),
    ),
    max_size=20,
).map("".join)


async def test_the_inline_mark_quotes_any_text_as_the_server_reads_it(engine: AsyncEngine) -> None:
    store = SQLDedupeStore(engine)
    inline = InlineStatement(engine, store._state)  # SELECT state ... WHERE event_id = <id>
    async with engine.connect() as connection:
        raw: Any = (await connection.get_raw_connection()).driver_connection

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(TEXT)
        def check(value: str) -> None:
            literal = inline(event_id=value).rpartition("= ")[2]  # the id's literal alone
            inline_read = asyncio.run_coroutine_threadsafe(
                raw.fetchval(f"SELECT {literal}"), loop
            ).result()
            bound_read = asyncio.run_coroutine_threadsafe(
                raw.fetchval("SELECT $1::text", value), loop
            ).result()
            assert inline_read == bound_read == value

        loop = asyncio.get_running_loop()
        await asyncio.to_thread(check)


@given(TEXT)
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_a_value_is_never_read_as_a_placeholder(value: str) -> None:
    """A ``$1`` inside a value stays text: placeholders are found in the statement only."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    inline = InlineStatement(engine, SQLDedupeStore(engine)._done_first)
    sql = inline(event_id=value, now=1.5)
    assert sql.count("$") == value.count("$")
    assert "<= 1.5::FLOAT" in sql


def _homing(store: SQLDedupeStore, effects: list[str], *, swallow: bool = False) -> Homing:
    homing = Homing(
        signer=Signer(KeyRing({"k": "a-secret-of-enough-length"})),
        publisher=MemoryPublisher(),
        dedupe=store,
    )
    homing.events.register("order.placed", OrderPlaced)
    insert = text("INSERT INTO inline_effects (id) VALUES (:id)")

    @homing.handler(OrderPlaced, effects="database")
    async def record(event: OrderPlaced, delivery: Delivery) -> None:
        await delivery.connection.execute(insert, {"id": delivery.event_id})
        if swallow:  # a failing statement, its error swallowed: the server aborted it all
            with contextlib.suppress(DBAPIError):
                await delivery.connection.exec_driver_sql("SELECT 1/0")
        effects.append(delivery.event_id)

    return homing


async def test_a_new_event_costs_three_round_trips_where_begin_alone_took_one_more(
    engine: AsyncEngine,
) -> None:
    """Counted on the wire, through a proxy: BEGIN with the mark, the effect, COMMIT."""
    url = make_url(POSTGRES_URL)
    assert url.host is not None
    with cuttable_proxy((url.host, url.port or 5432)) as proxy:
        counted = create_engine(
            url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        )
        try:

            async def round_trips(store: SQLDedupeStore, event_id: str) -> int:
                homing = _homing(store, [])
                warm = push_body(homing, OrderPlaced(order_id=2, total_cents=1))
                assert (await homing.handle_push(warm)).outcome == "done"  # prepared, pooled
                body = push_body(homing, OrderPlaced(order_id=1, total_cents=1), event_id=event_id)
                before = proxy.requests
                assert (await homing.handle_push(body)).outcome == "done"
                return proxy.requests - before

            inline = await round_trips(SQLDedupeStore(counted), "new-1")
            classic_store = SQLDedupeStore(counted)
            classic_store._inline = None  # the path every other database takes
            classic = await round_trips(classic_store, "new-2")
        finally:
            await counted.dispose()
    assert (inline, classic) == (3, 4)


async def test_a_transaction_the_server_aborted_is_never_reported_done(
    engine: AsyncEngine,
) -> None:
    effects: list[str] = []
    store = SQLDedupeStore(engine)
    homing = _homing(store, effects, swallow=True)
    body = push_body(homing, OrderPlaced(order_id=1, total_cents=1), event_id="aborted-1")
    result = await homing.handle_push(body)
    assert (result.status, result.outcome) == (503, "store_unavailable")
    assert effects == ["aborted-1"]  # the handler returned, and yet nothing committed
    async with engine.connect() as connection:
        written = await connection.scalar(text("SELECT count(*) FROM inline_effects"))
    assert written == 0
    assert await SQLDedupeStore(engine).claim("aborted-1", lease=5) is Claim.CLAIMED
