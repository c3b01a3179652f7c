"""The in-memory publisher: keeps every message, for tests and for inspection."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import httpx

from homing.ingress.wrapped import build_push
from homing.publishers.base import OutgoingMessage, Publisher


class MemoryPublisher(Publisher):
    """Keeps published messages in :attr:`messages`; :meth:`deliver` pushes them to an app.

    Example::

        publisher = MemoryPublisher()
        ...  # code under test publishes
        responses = await publisher.deliver(client)  # POSTs each message to /events

    It keeps delayed messages too (as far ahead as Cloud Tasks allows, 30 days):
    :meth:`deliver` leaves each until its time.
    """

    local = True
    max_delay = timedelta(days=30)

    def __init__(self, *, subscription: str = "projects/local/subscriptions/homing-memory"):
        self.messages: list[tuple[str, OutgoingMessage]] = []
        self.subscription = subscription
        self._ids = itertools.count(1)

    async def _send(self, message: OutgoingMessage) -> str:
        message_id = str(next(self._ids))
        self.messages.append((message_id, message))
        return message_id

    def envelope(self, message_id: str, message: OutgoingMessage) -> bytes:
        """The wrapped push body Pub/Sub would POST for ``message``."""
        return build_push(
            message.data,
            message.attributes,
            message_id=message_id,
            subscription=self.subscription,
            ordering_key=message.ordering_key,
        )

    def due(self, now: datetime | None = None) -> list[tuple[str, OutgoingMessage]]:
        """The kept messages whose time has come by ``now`` (default: the clock's now)."""
        now = now or datetime.now(UTC)
        return [
            (message_id, message)
            for message_id, message in self.messages
            if message.deliver_at is None or message.deliver_at <= now
        ]

    async def deliver(
        self, client: httpx.AsyncClient, path: str = "/events", *, now: datetime | None = None
    ) -> list[httpx.Response]:
        """POST every kept message that is due by ``now`` to ``path`` in order, forget them,
        and return the responses; delayed messages not yet due stay."""
        pending = self.due(now)
        sent = {id(message) for _, message in pending}
        self.messages = [entry for entry in self.messages if id(entry[1]) not in sent]
        return [
            await client.post(
                path,
                content=self.envelope(message_id, message),
                headers={"content-type": "application/json"},
            )
            for message_id, message in pending
        ]
