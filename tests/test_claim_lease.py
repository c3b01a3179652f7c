"""``effects="external"`` handlers run under a short claim that is renewed while they run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from homing import Delivery, Homing, KeyRing, Signer
from homing.stores import Claim, DedupeStore, MemoryDedupeStore
from homing.stores.sql import SQLDedupeStore
from homing.testing import push_body
from tests.conftest import OrderPlaced, open_sql_engine

LEASE = 0.3


async def _check(dedupe: DedupeStore) -> None:
    homing = Homing(signer=Signer(KeyRing({"k": "a-secret-of-enough-length"})), lease=LEASE)
    homing.dedupe = dedupe
    homing.events.register("order.placed", OrderPlaced)
    release = asyncio.Event()
    runs = 0

    @homing.handler(OrderPlaced)
    async def slow(event: OrderPlaced, delivery: Delivery) -> None:
        nonlocal runs
        runs += 1
        await release.wait()

    body = push_body(homing, OrderPlaced(order_id=1, total_cents=1), event_id="slow")
    first = asyncio.create_task(homing.handle_push(body))
    await asyncio.sleep(LEASE * 3)  # well past the first lease: kept only by renewal
    redelivered = await homing.handle_push(body)
    assert (redelivered.status, redelivered.outcome) == (409, "in_progress")
    release.set()
    assert (await first).outcome == "done"
    assert (await homing.handle_push(body)).outcome == "duplicate"
    assert runs == 1

    # A claim nobody renews (its process died) frees the event within one lease.
    assert await dedupe.claim("orphan", lease=LEASE) is Claim.CLAIMED
    orphan = push_body(homing, OrderPlaced(order_id=2, total_cents=1), event_id="orphan")
    assert (await homing.handle_push(orphan)).outcome == "in_progress"
    await asyncio.sleep(LEASE + 0.1)
    release.set()
    assert (await homing.handle_push(orphan)).outcome == "done"


async def test_a_live_handler_keeps_its_claim_and_a_dead_one_frees_it_in_memory() -> None:
    await _check(MemoryDedupeStore())


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def test_a_live_handler_keeps_its_claim_and_a_dead_one_frees_it_in_sql(
    kind: str, tmp_path: Path
) -> None:
    async with open_sql_engine(kind, tmp_path) as engine:
        await _check(SQLDedupeStore(engine))
