"""The one base every publisher shares: ``publish()`` around the backend's ``_send()``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import ClassVar, Self

from homing.errors import PublishFailed
from homing.scheduling import check_schedule


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A signed message ready for a broker: data plus attributes (signature included).

    ``deliver_at`` (UTC) asks the broker to deliver it no earlier than then (``None``: at
    once); only a publisher with a :attr:`Publisher.max_delay` takes it.
    """

    data: bytes = field(repr=False)
    attributes: Mapping[str, str] = field(repr=False)
    event_type: str
    event_id: str
    ordering_key: str | None = None
    deliver_at: datetime | None = None


class Publisher(ABC):
    """Hands signed messages to a broker.

    Subclasses implement :meth:`_send`; errors it raises reach the caller as
    :class:`~homing.errors.PublishFailed` carrying the event type and id.
    """

    #: ``True`` for a publisher that delivers within this machine (tests, development): a
    #: service on any other is production-like, and in-memory stores there warn at start-up.
    local: ClassVar[bool] = False
    #: How far ahead this publisher can schedule a delivery; ``None``: it cannot delay, and a
    #: message with a ``deliver_at`` is refused (:class:`~homing.errors.InvalidDelay`).
    max_delay: ClassVar[timedelta | None] = None
    _closed = False

    async def publish(self, message: OutgoingMessage) -> str:
        """Hand ``message`` to the broker and return the broker's message id.

        Returns only once the broker has accepted the message, so a request handler that
        awaits it may answer safely (Cloud Run takes the CPU once the response is sent).

        Raises:
            InvalidDelay: ``message.deliver_at`` is set and this publisher cannot delay, or
                not that far ahead.
            PublishFailed: the broker did not take it.
        """
        if message.deliver_at is not None:
            self.check_delay(message.deliver_at)
        if self._closed:
            raise PublishFailed(
                f"{type(self).__name__} is closed",
                event_type=message.event_type,
                event_id=message.event_id,
            )
        try:
            return await self._send(message)
        except PublishFailed:
            raise
        except Exception as exc:
            raise PublishFailed(
                f"{type(self).__name__} could not publish: {type(exc).__name__}: {exc}",
                event_type=message.event_type,
                event_id=message.event_id,
            ) from exc

    def check_delay(self, when: datetime) -> None:
        """Raise :class:`~homing.errors.InvalidDelay` unless this publisher can deliver at
        ``when``."""
        check_schedule(when, limit=self.max_delay, transport=type(self).__name__)

    @abstractmethod
    async def _send(self, message: OutgoingMessage) -> str: ...

    async def aclose(self) -> None:
        """Flush what is pending and release connections; later publishes fail."""
        self._closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
