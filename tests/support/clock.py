"""A clock a test moves by hand, for code that takes one (``clock=``) or a time (``now``)."""

from __future__ import annotations

NOW = 1_800_000_000.0


class Clock:
    """``clock()`` is :attr:`now`, which only the test changes."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
