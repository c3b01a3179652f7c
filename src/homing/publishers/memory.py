"""The in-memory publisher: keeps every message, for tests and for inspection."""

from __future__ import annotations

import itertools

import httpx

from homing.ingress.wrapped import build_push
from homing.publishers.base import OutgoingMessage, Publisher


class MemoryPublisher(Publisher):
    """Keeps published messages in :attr:`messages`; :meth:`deliver` pushes them to an app.

    Example::

        publisher = MemoryPublisher()
        ...  # code under test publishes
        responses = await publisher.deliver(client)  # POSTs each message to /events
    """

    local = True

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

    async def deliver(
        self, client: httpx.AsyncClient, path: str = "/events"
    ) -> list[httpx.Response]:
        """POST every kept message to ``path`` in order, forget them, return the responses."""
        pending, self.messages = self.messages, []
        return [
            await client.post(
                path,
                content=self.envelope(message_id, message),
                headers={"content-type": "application/json"},
            )
            for message_id, message in pending
        ]
