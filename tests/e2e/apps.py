"""Small apps the end-to-end tests serve as real processes (``uvicorn tests.e2e.apps:NAME``)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import BaseModel
from sqlalchemy import Column, Integer, MetaData, String, Table
from starlette.applications import Starlette

from homing import Delivery, Homing, KeyRing, Retry, Signer
from homing.starlette import push_route
from homing.stores.sql import SQLDedupeStore, create_engine, create_tables

logger = logging.getLogger("tests.e2e.apps")


class Flaky(BaseModel):
    n: int


def always_retry() -> Starlette:
    """Every delivery asks for a retry, so Pub/Sub redelivers until it dead-letters."""
    homing = Homing(signer=Signer(KeyRing.from_string(os.environ["HOMING_SIGNING_KEYS"])))
    homing.events.register("test.flaky", Flaky)

    @homing.handler(Flaky)
    async def fail(event: Flaky) -> None:
        print(f"attempt for event {event.n}", flush=True)
        raise Retry("this handler always asks for a retry")

    return Starlette(routes=[push_route(homing, "/events")])


class SlowWork(BaseModel):
    n: int


def slow_effect() -> Starlette:
    """A handler slower than the ack deadline: it sleeps ``SLOW_SECONDS``, then writes one row
    per run into ``effects`` and marks its event done in the same transaction (``DATABASE_URL``,
    SQL dedupe store on the same database)."""
    engine = create_engine(os.environ["DATABASE_URL"])
    tables = MetaData()
    effects = Table(
        "effects",
        tables,
        Column("id", Integer, primary_key=True),
        Column("event_id", String(255), nullable=False),  # not unique: a second run shows
    )
    seconds = float(os.environ.get("SLOW_SECONDS", "14"))
    homing = Homing(
        signer=Signer(KeyRing.from_string(os.environ["HOMING_SIGNING_KEYS"])),
        dedupe=SQLDedupeStore(engine),
    )
    homing.events.register("test.slow", SlowWork)

    @homing.handler(SlowWork)
    async def work(event: SlowWork, delivery: Delivery) -> None:
        print(f"run started for event {delivery.event_id}", flush=True)
        await asyncio.sleep(seconds)
        async with engine.begin() as connection:
            await connection.execute(effects.insert().values(event_id=delivery.event_id))
            await delivery.mark_done(connection)
        print(f"run finished for event {delivery.event_id}", flush=True)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await create_tables(engine)
        async with engine.begin() as connection:
            await connection.run_sync(tables.create_all)
        try:
            async with homing:
                yield
        finally:
            await engine.dispose()

    return Starlette(routes=[push_route(homing, "/events")], lifespan=lifespan)
