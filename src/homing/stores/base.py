"""What every store does, whatever keeps its state."""

from __future__ import annotations

import contextlib
import enum
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from homing.errors import ConfigurationError


class Claim(enum.Enum):
    """The answer to "may I run the handler for this event id?"."""

    CLAIMED = "claimed"  #: yes: nobody has, or an earlier claim's lease ran out
    DUPLICATE = "duplicate"  #: no: the event was already handled
    IN_PROGRESS = "in_progress"  #: not now: another delivery holds an unexpired claim


class Transaction:
    """An open database transaction whose first statement marked an event done.

    ``claim`` is :attr:`Claim.CLAIMED` when the mark is this transaction's to commit, and
    ``connection`` is then the open connection (SQLAlchemy's ``AsyncConnection``); ``session``
    an ``AsyncSession`` on it, made when first asked for. Otherwise
    (:attr:`Claim.DUPLICATE`, :attr:`Claim.IN_PROGRESS`) nothing is open.
    """

    __slots__ = ("_session", "claim", "connection")

    def __init__(self, claim: Claim, connection: Any = None) -> None:
        self.claim = claim
        self.connection = connection
        self._session: Any = None

    @property
    def session(self) -> Any:
        if self._session is None:
            if self.connection is None:
                raise ConfigurationError(f"no transaction is open ({self.claim.value})")
            self._session = self._open_session()
        return self._session

    def _open_session(self) -> Any:
        raise ConfigurationError(f"{type(self).__name__} has no ORM session")


@contextlib.asynccontextmanager
async def _no_transaction(store: str) -> AsyncIterator[Transaction]:
    raise ConfigurationError(
        f"{store} keeps no database transaction; effects='database' handlers need SQLDedupeStore"
    )
    yield  # pragma: no cover - makes this an async generator


class DedupeStore(ABC):
    """Remembers which event ids were handled, with leased claims for those in flight.

    A claim expires after its lease, so a handler that crashed does not block redelivery; a
    live handler keeps its claim by renewing it (:meth:`renew`).

    Args:
        clock: the time in seconds since the epoch that leases are measured by. Wall time,
            not ``time.monotonic``: a lease end is kept in the store and read by every instance
            that shares it. Tests pass a clock they move.
    """

    #: ``True`` when :meth:`transaction` can run a handler's effect and the done mark in one
    #: database transaction (``effects="database"`` handlers).
    transactional: bool = False
    #: ``True`` when :meth:`run_threaded` can run a plain ``def`` ``effects="database"``
    #: handler: the transaction opened, the handler run and the commit made on one worker
    #: thread (stores whose driver is synchronous, such as Django's).
    threaded_transactions: bool = False

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock

    async def claim(self, event_id: str, *, lease: float) -> Claim:
        """Claim ``event_id`` for ``lease`` seconds."""
        return await self._claim(event_id, self.clock(), lease)

    @abstractmethod
    async def _claim(self, event_id: str, now: float, lease: float) -> Claim: ...

    async def renew(self, event_id: str, *, lease: float) -> bool:
        """Extend a claim held on ``event_id`` to ``lease`` seconds from now.

        ``False`` when there is no such claim any more (done, released, or never taken).
        """
        return await self._renew_claim(event_id, self.clock() + lease)

    @abstractmethod
    async def _renew_claim(self, event_id: str, until: float) -> bool: ...

    def known_done(self, event_id: str) -> bool:
        """``True`` when this process knows ``event_id`` was handled, without asking anyone.

        A cheap check before :meth:`claim` on every push (most redeliveries are duplicates of
        recent events): ``False`` only means "ask the store".
        """
        return False

    @abstractmethod
    async def done(self, event_id: str) -> None:
        """Mark ``event_id`` handled: every later delivery is a duplicate."""

    @abstractmethod
    async def release(self, event_id: str) -> None:
        """Give up a claim (the handler asked for a retry) so the next delivery can run."""

    async def done_in(self, transaction: Any, event_id: str) -> None:
        """Mark ``event_id`` handled inside the caller's open database transaction."""
        raise ConfigurationError(
            f"{type(self).__name__} cannot join a database transaction; use SQLDedupeStore"
        )

    async def run_threaded(
        self,
        event_id: str,
        function: Callable[[Transaction], object],
        *,
        force: bool = False,
    ) -> Claim:
        """Open ``event_id``'s transaction, call ``function(transaction)`` in it and commit, all
        in one call on a worker thread (:attr:`threaded_transactions`); roll back if it raises.

        Returns how the transaction opened: ``function`` runs only for :attr:`Claim.CLAIMED`.
        """
        raise ConfigurationError(f"{type(self).__name__} runs no transaction on a thread")

    def transaction(
        self, event_id: str, *, force: bool = False
    ) -> contextlib.AbstractAsyncContextManager[Transaction]:
        """A database transaction that marks ``event_id`` done first and commits at the end.

        Of two deliveries of one event, one commits; the other finds the mark (a unique key)
        and gets :attr:`Claim.DUPLICATE`. An exception in the body rolls back the effect and
        the mark together. ``force`` (a replay by an operator) claims even an event marked
        done.
        """
        return _no_transaction(type(self).__name__)

    def note_done(self, event_id: str) -> None:  # noqa: B027 - optional hook
        """Told once a transaction that called :meth:`done_in` for ``event_id`` committed."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the store holds."""


@dataclass(frozen=True, slots=True)
class QuarantinedMessage:
    """A push that was acknowledged without being handled, kept for a person to inspect."""

    id: str
    reason: str
    body: bytes = field(repr=False)
    received_at: datetime
    event_type: str | None = None
    event_id: str | None = None


class QuarantineStore(ABC):
    """Keeps the raw envelopes of dropped messages: nothing is dropped silently."""

    @abstractmethod
    async def add(self, message: QuarantinedMessage) -> bool:
        """Keep ``message``; ``False`` when an entry with its id is already kept."""

    @abstractmethod
    async def get(self, entry_id: str) -> QuarantinedMessage | None: ...

    @abstractmethod
    async def list(self, *, limit: int = 100) -> list[QuarantinedMessage]:
        """The newest entries first."""

    @abstractmethod
    async def delete(self, entry_id: str) -> bool: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the store holds."""
