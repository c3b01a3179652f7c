"""``homing.leases``: the claims of running handlers, renewed by one timer per event loop.

The keeper reads time from ``time.monotonic``, which these tests replace with a clock they
move, and its timer's callback (``sweep``) is called by hand at the times chosen; the loop's
own timer is checked to exist, and to stop once nothing is held.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from homing.errors import StoreError
from homing.leases import Held, LeaseKeeper
from homing.stores import Claim, MemoryDedupeStore
from tests.support.clock import Clock

LEASE = 15.0


class Renewals(MemoryDedupeStore):
    """A memory store that records each renewal, and can hold one open or fail it."""

    def __init__(self) -> None:
        super().__init__()
        self.renewed: list[str] = []
        self.gate: asyncio.Event | None = None  # set: renewals wait for it
        self.failing = False

    async def renew(self, event_id: str, *, lease: float) -> bool:
        self.renewed.append(event_id)
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise StoreError("the database is away")
        return await super().renew(event_id, lease=lease)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(1000.0)
    monkeypatch.setattr("homing.leases.time.monotonic", clock)
    return clock


async def _settle() -> None:
    for _ in range(5):  # the renewal tasks the sweep started run to their end
        await asyncio.sleep(0)


async def _held(store: Renewals, keeper: LeaseKeeper, key: str = "e1") -> tuple[Held, Any]:
    assert await store.claim(key, lease=LEASE) is Claim.CLAIMED
    held = keeper.hold(store, key, LEASE)
    return held, keeper._last


async def test_a_claim_is_renewed_every_third_of_its_lease_from_the_first_third_on(
    clock: Clock,
) -> None:
    store, keeper = Renewals(), LeaseKeeper()
    held, claims = await _held(store, keeper)
    assert claims is not None
    assert claims.timer is not None
    assert claims.period == LEASE / 6

    clock.advance(LEASE / 6)
    claims.sweep()
    await _settle()
    assert store.renewed == []  # a sixth in: not due

    clock.advance(LEASE / 6)
    claims.sweep()
    await _settle()
    assert store.renewed == ["e1"]  # a third in: renewed

    clock.advance(LEASE / 6)
    claims.sweep()
    await _settle()
    assert store.renewed == ["e1"]  # a sixth after the renewal: not yet

    clock.advance(LEASE / 6)
    claims.sweep()
    await _settle()
    assert store.renewed == ["e1", "e1"]
    held.release()


async def test_a_quick_handler_costs_no_renewal_and_the_timer_stops_when_nothing_is_held(
    clock: Clock,
) -> None:
    store, keeper = Renewals(), LeaseKeeper()
    held, claims = await _held(store, keeper)
    held.release()
    clock.advance(LEASE)
    claims.sweep()
    await _settle()
    assert store.renewed == []
    assert claims.timer is None
    assert not claims.held
    # The next claim starts it again.
    again = keeper.hold(store, "e2", LEASE)
    assert claims.timer is not None
    again.release()
    claims.timer.cancel()


async def test_release_cancels_a_renewal_under_way(clock: Clock) -> None:
    store, keeper = Renewals(), LeaseKeeper()
    store.gate = asyncio.Event()
    held, claims = await _held(store, keeper)
    clock.advance(LEASE / 3)
    claims.sweep()
    await _settle()
    task = held._task
    assert task is not None
    assert store.renewed == ["e1"]
    held.release()
    await _settle()
    assert task.cancelled()
    claims.timer.cancel()


async def test_a_failed_renewal_is_logged_and_tried_again_at_the_next_third(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    store, keeper = Renewals(), LeaseKeeper()
    store.failing = True
    held, claims = await _held(store, keeper)
    with caplog.at_level(logging.WARNING, "homing"):
        clock.advance(LEASE / 3)
        claims.sweep()
        await _settle()
    assert "could not renew the claim on e1: the database is away" in caplog.text
    store.failing = False
    clock.advance(LEASE / 3)
    claims.sweep()
    await _settle()
    assert store.renewed == ["e1", "e1"]
    held.release()
    claims.timer.cancel()


async def test_a_claim_that_is_gone_is_logged_as_lost(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    store, keeper = Renewals(), LeaseKeeper()
    held, claims = await _held(store, keeper)
    await store.release("e1")  # someone else's doing: the claim is no more
    with caplog.at_level(logging.WARNING, "homing"):
        clock.advance(LEASE / 3)
        claims.sweep()
        await _settle()
    assert "the claim on e1 was lost while its handler ran" in caplog.text
    held.release()
    claims.timer.cancel()


def test_each_event_loop_keeps_its_own_claims_and_a_closed_one_is_forgotten() -> None:
    keeper = LeaseKeeper()
    store = Renewals()
    seen: list[Any] = []

    async def hold(key: str) -> None:
        held = keeper.hold(store, key, LEASE)
        seen.append(keeper._last)
        held.release()
        seen[-1].timer.cancel()

    asyncio.run(hold("a"))
    thread = threading.Thread(target=asyncio.run, args=(hold("b"),))
    thread.start()
    thread.join()
    assert len(seen) == 2
    assert seen[0] is not seen[1]
    assert seen[0].loop is not seen[1].loop
    asyncio.run(hold("c"))  # both earlier loops are closed now
    assert list(keeper._claims) == [seen[2].loop]
