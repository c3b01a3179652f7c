"""Replaying quarantined messages: verified again, run again, removed only on success."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from homing import Drop, Homing, HomingError, KeyRing, Signer
from homing.testing import push_body


class Charge(BaseModel):
    amount: int


class Toggle:
    def __init__(self) -> None:
        self.broken = True
        self.ran: list[int] = []

    async def __call__(self, event: Charge) -> None:
        if self.broken:
            raise Drop("the payment provider rejected the key")
        self.ran.append(event.amount)


def _homing(keys: KeyRing, handler: Toggle, now: float | None = None) -> Homing:
    signer = Signer(keys) if now is None else Signer(keys, clock=lambda: now)
    homing = Homing(signer=signer)
    homing.events.register("charge.requested", Charge)
    homing.handler(Charge)(handler)
    return homing


async def test_a_fixed_handler_runs_the_replayed_event_once(keys: KeyRing) -> None:
    handler = Toggle()
    homing = _homing(keys, handler)
    body = push_body(homing, Charge(amount=5), event_id="e-1")
    assert (await homing.handle_push(body)).outcome == "quarantined"
    assert (await homing.handle_push(body)).outcome == "quarantined"  # redelivered: not handled

    handler.broken = False
    result = await homing.replay("e-1")
    assert (result.status, result.outcome) == (204, "done")
    assert handler.ran == [5]
    assert await homing.quarantine.get("e-1") is None
    assert (await homing.handle_push(body)).outcome == "duplicate"
    assert handler.ran == [5]


async def test_a_replay_that_fails_again_stays_with_the_new_reason(keys: KeyRing) -> None:
    homing = _homing(keys, Toggle())
    await homing.handle_push(push_body(homing, Charge(amount=5), event_id="e-2"))
    result = await homing.replay("e-2")
    assert result.outcome == "quarantined"
    entry = await homing.quarantine.get("e-2")
    assert entry is not None
    assert entry.reason.startswith("replay: dropped by the handler")
    assert "(was: dropped by the handler" in entry.reason


async def test_an_entry_that_no_longer_verifies_stays_quarantined(keys: KeyRing) -> None:
    handler = Toggle()
    homing = _homing(keys, handler)
    await homing.handle_push(push_body(homing, Charge(amount=5), event_id="e-3"))
    handler.broken = False
    # The key that signed it has been rotated out since.
    rotated = _homing(KeyRing({"k-newest": "a-brand-new-secret-value"}), handler)
    rotated.quarantine = homing.quarantine
    result = await rotated.replay("e-3")
    assert (result.status, result.outcome) == (401, "unauthenticated")
    assert handler.ran == []
    entry = await homing.quarantine.get("e-3")
    assert entry is not None
    assert "not in the ring" in entry.reason


async def test_old_entries_replay_beyond_the_signature_window(keys: KeyRing) -> None:
    handler = Toggle()
    signed_then = 1_800_000_000.0
    old = _homing(keys, handler, now=signed_then)
    await old.handle_push(push_body(old, Charge(amount=9), event_id="e-4"))
    handler.broken = False
    month_later = _homing(keys, handler, now=signed_then + 30 * 86400)
    month_later.quarantine = old.quarantine
    assert (await month_later.replay("e-4")).outcome == "done"
    assert handler.ran == [9]


async def test_replaying_an_unknown_entry_is_an_error(keys: KeyRing) -> None:
    with pytest.raises(HomingError, match="no quarantined message 'nope'"):
        await _homing(keys, Toggle()).replay("nope")
