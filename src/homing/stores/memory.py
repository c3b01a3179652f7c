"""In-memory stores: for tests, and for a single process that may forget on restart."""

from __future__ import annotations

import time
from collections.abc import Callable

from homing.stores.base import Claim, DedupeStore, QuarantinedMessage, QuarantineStore

_DONE = -1.0


class MemoryDedupeStore(DedupeStore):
    """Handled ids in a dict, the oldest forgotten beyond ``max_entries`` (memory stays flat)."""

    def __init__(
        self, *, max_entries: int = 1_000_000, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(clock=clock)
        self._entries: dict[str, float] = {}  # event id -> lease end, or _DONE
        self._max = max_entries

    async def _claim(self, event_id: str, now: float, lease: float) -> Claim:
        state = self._entries.get(event_id)
        if state == _DONE:
            return Claim.DUPLICATE
        if state is not None and state > now:
            return Claim.IN_PROGRESS
        self._entries[event_id] = now + lease
        if len(self._entries) > self._max:
            del self._entries[next(iter(self._entries))]
        return Claim.CLAIMED

    async def _renew_claim(self, event_id: str, until: float) -> bool:
        state = self._entries.get(event_id)
        if state is None or state == _DONE:
            return False
        self._entries[event_id] = until
        return True

    def known_done(self, event_id: str) -> bool:
        return self._entries.get(event_id) == _DONE

    async def done(self, event_id: str) -> None:
        self._entries[event_id] = _DONE

    async def release(self, event_id: str) -> None:
        if self._entries.get(event_id, _DONE) != _DONE:
            del self._entries[event_id]


class MemoryQuarantineStore(QuarantineStore):
    def __init__(self) -> None:
        self._entries: dict[str, QuarantinedMessage] = {}

    async def add(self, message: QuarantinedMessage) -> bool:
        if message.id in self._entries:
            return False
        self._entries[message.id] = message
        return True

    async def get(self, entry_id: str) -> QuarantinedMessage | None:
        return self._entries.get(entry_id)

    async def list(self, *, limit: int = 100) -> list[QuarantinedMessage]:
        newest = sorted(self._entries.values(), key=lambda m: m.received_at, reverse=True)
        return newest[:limit]

    async def delete(self, entry_id: str) -> bool:
        return self._entries.pop(entry_id, None) is not None
