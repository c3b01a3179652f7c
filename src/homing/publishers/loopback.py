"""The loopback publisher from the article: POST the push envelope back to the service itself.

For local development without Google (the article's simplest option; ``homing dev`` runs the
local push broker instead, with retries, dead letters and OIDC). Each message is delivered as the
real signed, wrapped push envelope, with Pub/Sub's ack rules: only 102/200/201/202/204
acknowledge; any other status or a connection error is retried with exponential backoff and
jitter.

:meth:`LoopbackPublisher.publish` returns only once the message is delivered, or, when every
attempt failed, stored durably in the ``keep`` quarantine store (from where ``homing quarantine
replay`` delivers it). Without a store it raises :class:`~homing.errors.PublishFailed`, so the
caller (or its outbox) keeps the event: nothing waits in memory, so a kill -9 loses nothing that
was acknowledged. A failed delivery is logged at WARNING with the URL it tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from datetime import UTC, datetime

import httpx

from homing.envelope import ACK_STATUSES, build_push
from homing.errors import PublishFailed
from homing.publishers.base import OutgoingMessage, Publisher
from homing.stores.base import QuarantinedMessage, QuarantineStore

logger = logging.getLogger("homing.publishers.loopback")


class LoopbackPublisher(Publisher):
    """Delivers each message to ``endpoint`` (the service's own ``POST /events``) before
    :meth:`publish` returns.

    Args:
        endpoint: the push endpoint URL, e.g. ``http://127.0.0.1:8080/events``.
        client: an httpx client to deliver with (a seam for tests); one is made otherwise.
        max_attempts: attempts before the message is kept (or the publish fails).
        initial_backoff, max_backoff: the retry delay doubles from the first to the second.
        shutdown_grace: how long :meth:`aclose` waits for deliveries still under way.
        keep: the durable store undeliverable messages go to (the publish then succeeds);
            without one, an undeliverable message fails the publish.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        client: httpx.AsyncClient | None = None,
        subscription: str = "projects/local/subscriptions/homing-loopback",
        max_attempts: int = 5,
        initial_backoff: float = 0.1,
        max_backoff: float = 1.0,
        timeout: float = 10.0,
        shutdown_grace: float = 5.0,
        keep: QuarantineStore | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.subscription = subscription
        self.max_attempts = max_attempts
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.shutdown_grace = shutdown_grace
        self.keep = keep
        self.undelivered: list[OutgoingMessage] = []
        self.delivered = 0
        self.last_failure: str | None = None
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._tasks: set[asyncio.Task[bool]] = set()
        self._ids = itertools.count(int(datetime.now(UTC).timestamp() * 1000))

    async def _send(self, message: OutgoingMessage) -> str:
        message_id = str(next(self._ids))
        body = build_push(
            message.data,
            message.attributes,
            message_id=message_id,
            subscription=self.subscription,
            ordering_key=message.ordering_key,
        )
        task = asyncio.create_task(
            self._deliver(message, body), name=f"homing-loopback-{message_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if not await task:
            raise PublishFailed(
                f"loopback delivery to {self.endpoint} failed {self.max_attempts} times "
                f"({self.last_failure}); is the service listening there?",
                event_type=message.event_type,
                event_id=message.event_id,
            )
        return message_id

    async def _deliver(self, message: OutgoingMessage, body: bytes) -> bool:
        """Deliver; ``True`` once acked or kept durably, ``False`` if the publish must fail."""
        delay = self.initial_backoff
        last = "not attempted"
        try:
            for attempt in itertools.count(1):
                try:
                    response = await self._client.post(
                        self.endpoint, content=body, headers={"content-type": "application/json"}
                    )
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                else:
                    if response.status_code in ACK_STATUSES:
                        self.delivered += 1
                        return True
                    last = f"status {response.status_code}"
                self.last_failure = last
                if attempt >= self.max_attempts:
                    break
                logger.info(
                    "loopback delivery of %s (%s) attempt %d failed (%s); retrying in %.1fs",
                    message.event_type,
                    message.event_id,
                    attempt,
                    last,
                    delay,
                )
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
                delay = min(delay * 2, self.max_backoff)
        except asyncio.CancelledError:
            await self._keep(message, body, f"still undelivered at shutdown ({last})")
            raise
        return await self._keep(
            message, body, f"gave up after {self.max_attempts} attempts ({last})"
        )

    async def _keep(self, message: OutgoingMessage, body: bytes, reason: str) -> bool:
        self.undelivered.append(message)
        logger.warning(
            "loopback delivery of %s (%s) to %s failed: %s; %s",
            message.event_type,
            message.event_id,
            self.endpoint,
            reason,
            "kept in the quarantine store (homing quarantine replay delivers it)"
            if self.keep is not None
            else "the publish fails",
        )
        if self.keep is not None:
            await self.keep.add(
                QuarantinedMessage(
                    id=message.event_id,
                    reason=f"loopback: {reason}",
                    body=body,
                    received_at=datetime.now(UTC),
                    event_type=message.event_type,
                    event_id=message.event_id,
                )
            )
            return True
        return False

    @property
    def pending(self) -> int:
        """Deliveries under way."""
        return len(self._tasks)

    async def join(self) -> None:
        """Wait until every delivery under way has ended (acked or given up)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        await super().aclose()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.shutdown_grace):
                await self.join()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._own_client:
            await self._client.aclose()
