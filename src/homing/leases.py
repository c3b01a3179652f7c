"""Keeping the claims of running handlers alive: one timer per event loop, not one per handler.

An ``effects="external"`` handler runs under a claim that lapses after its lease, so that a
process that died frees its event for a redelivery. While the handler runs, its claim is
renewed every third of the lease. Most handlers finish long before that, so a claim held costs
an entry in a set; a timer per event loop looks at the set every sixth of the lease and renews
the claims that are due. (A timer per handler, made and cancelled on every new event, was about
5% of a busy server's CPU on uvloop.)

A claim is first renewed between a third and a half of its lease after it was taken, then at
the same pace, each renewal on a task of its own: a renewal is never later than half a lease,
so a live handler never loses its claim.
"""

from __future__ import annotations

import asyncio
import logging
import time

from homing.errors import StoreError
from homing.stores.base import DedupeStore

logger = logging.getLogger("homing")


class Held:
    """One running handler's claim, until :meth:`LeaseKeeper.release`."""

    __slots__ = ("_dedupe", "_key", "_lease", "_loop", "_renewed", "_task")

    def __init__(self, loop: _LoopClaims, dedupe: DedupeStore, key: str, lease: float) -> None:
        self._loop, self._dedupe, self._key, self._lease = loop, dedupe, key, lease
        self._renewed = time.monotonic()  # when the claim was taken or last renewed
        self._task: asyncio.Task[None] | None = None

    def release(self) -> None:
        """The handler is over: no renewal from now on (one under way is cancelled)."""
        self._loop.held.discard(self)
        if self._task is not None:
            self._task.cancel()

    async def _renew(self) -> None:
        try:
            if not await self._dedupe.renew(self._key, lease=self._lease):
                logger.warning("the claim on %s was lost while its handler ran", self._key)
        except StoreError as exc:
            logger.warning("could not renew the claim on %s: %s", self._key, exc)
        finally:
            self._task = None


class _LoopClaims:
    """The claims held on one event loop, and that loop's timer while any is held."""

    __slots__ = ("held", "loop", "period", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.period = 0.0  # a sixth of the lease
        self.held: set[Held] = set()
        self.timer: asyncio.TimerHandle | None = None

    def sweep(self) -> None:
        self.timer = None
        if not self.held:
            return  # the next claim starts the timer again
        now = time.monotonic()
        for held in self.held:
            if held._task is None and now - held._renewed >= held._lease / 3:
                held._renewed = now
                held._task = self.loop.create_task(held._renew())
        self.timer = self.loop.call_later(self.period, self.sweep)


class LeaseKeeper:
    """The claims of a pipeline's running handlers, renewed while they run."""

    __slots__ = ("_claims", "_last")

    def __init__(self) -> None:
        self._claims: dict[asyncio.AbstractEventLoop, _LoopClaims] = {}
        self._last: _LoopClaims | None = None  # the loop most pushes come on

    def hold(self, dedupe: DedupeStore, key: str, lease: float) -> Held:
        """Keep ``key``'s claim (taken just now, for ``lease`` seconds) until released."""
        loop = asyncio.get_running_loop()
        claims = self._last
        if claims is None or claims.loop is not loop:
            claims = self._for(loop)
        held = Held(claims, dedupe, key, lease)
        claims.held.add(held)
        if claims.timer is None:
            claims.period = lease / 6
            claims.timer = loop.call_later(claims.period, claims.sweep)
        return held

    def _for(self, loop: asyncio.AbstractEventLoop) -> _LoopClaims:
        for old in [old for old in self._claims if old.is_closed()]:
            del self._claims[old]  # a closed loop runs nothing again
        claims = self._claims.get(loop)
        if claims is None:
            claims = self._claims[loop] = _LoopClaims(loop)
        self._last = claims
        return claims
