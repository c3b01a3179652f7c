"""``effects="external"`` handlers run under a short claim that is renewed while they run.

The stores here tell a claim's age by a clock the test moves (``clock=``), so "past the
lease" is a fact, not a sleep that a busy machine may stretch. Renewals still come on the
event loop's timer, every third of ``LEASE``; the test waits for them rather than for an
amount of time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from homing import Delivery, Homing, KeyRing, Signer
from homing.stores import Claim, DedupeStore, MemoryDedupeStore
from homing.stores.sql import SQLDedupeStore
from homing.testing import push_body
from tests.conftest import OrderPlaced, open_sql_engine
from tests.support.clock import Clock
from tests.support.waiting import eventually_async

LEASE = 0.3  # seconds of the test's clock; also sets how often the handler's claim is renewed


class _ClockedClaims(DedupeStore):
    """Claims and renewals timed by the test's clock; every renewal's new lease end is kept."""

    clock: Clock
    renewed_until: list[float]

    async def renew(self, event_id: str, *, lease: float) -> bool:
        until = self.clock() + lease
        renewed = await self._renew_claim(event_id, until)
        if renewed:
            self.renewed_until.append(until)
        return renewed


class ClockedMemoryDedupe(_ClockedClaims, MemoryDedupeStore):
    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.renewed_until = []


class ClockedSQLDedupe(_ClockedClaims, SQLDedupeStore):
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        super().__init__(engine, clock=clock)
        self.renewed_until = []


async def _check(dedupe: _ClockedClaims) -> None:
    clock = dedupe.clock
    homing = Homing(signer=Signer(KeyRing({"k": "a-secret-of-enough-length"})), lease=LEASE)
    homing.dedupe = dedupe
    homing.events.register("order.placed", OrderPlaced)
    started, release = asyncio.Event(), asyncio.Event()
    runs = 0

    @homing.handler(OrderPlaced)
    async def slow(event: OrderPlaced, delivery: Delivery) -> None:
        nonlocal runs
        runs += 1
        started.set()
        await release.wait()

    body = push_body(homing, OrderPlaced(order_id=1, total_cents=1), event_id="slow")
    claimed_at = clock()
    first = asyncio.create_task(homing.handle_push(body))
    await started.wait()
    # Two thirds into the claim, a renewal made from then on carries it past its first end.
    clock.advance(LEASE * 2 / 3)
    await eventually_async(lambda: any(u > claimed_at + LEASE for u in dedupe.renewed_until))
    clock.now = claimed_at + LEASE  # the first lease is over: only the renewal holds the claim
    async with asyncio.timeout(10):  # were the claim lost, the handler would run (and wait)
        redelivered = await homing.handle_push(body)
    assert (redelivered.status, redelivered.outcome) == (409, "in_progress")
    release.set()
    assert (await first).outcome == "done"
    assert (await homing.handle_push(body)).outcome == "duplicate"
    assert runs == 1

    # A claim nobody renews (its process died) frees the event once its lease is over.
    assert await dedupe.claim("orphan", lease=LEASE) is Claim.CLAIMED
    orphan = push_body(homing, OrderPlaced(order_id=2, total_cents=1), event_id="orphan")
    assert (await homing.handle_push(orphan)).outcome == "in_progress"
    clock.advance(LEASE)
    assert (await homing.handle_push(orphan)).outcome == "done"


async def test_a_live_handler_keeps_its_claim_and_a_dead_one_frees_it_in_memory() -> None:
    await _check(ClockedMemoryDedupe(Clock()))


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def test_a_live_handler_keeps_its_claim_and_a_dead_one_frees_it_in_sql(
    kind: str, tmp_path: Path
) -> None:
    async with open_sql_engine(kind, tmp_path) as engine:
        await _check(ClockedSQLDedupe(engine, Clock()))
