"""The loopback publisher from the article: POST the push envelope back to the service itself.

For local development without Google (the article's simplest option; ``homing dev`` runs the
local push broker instead, with OIDC, retries and dead letters as in production). Each message
is delivered in the background as the real signed, wrapped push envelope, with Pub/Sub's ack
rules: only 102/200/201/202/204 acknowledge; any other status or a connection error is retried
with exponential backoff and jitter. A delivery that keeps failing is logged at WARNING with the
URL it tried. A message that cannot be delivered is kept (in
:attr:`LoopbackPublisher.undelivered`, and in a quarantine store when one is given), never lost
silently.

With a ``journal`` (a SQLite file), :meth:`~LoopbackPublisher.publish` returns only once the
message is committed to it, and :meth:`~LoopbackPublisher.resume` delivers what a killed process
left behind: nothing acknowledged is lost to a kill -9. Without one, messages under delivery live
in memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from datetime import UTC, datetime
from pathlib import Path

import httpx

from homing.errors import PublishFailed
from homing.ingress.wrapped import ACK_STATUSES, build_push
from homing.publishers.base import OutgoingMessage, Publisher
from homing.publishers.journal import Journal
from homing.stores.base import QuarantinedMessage, QuarantineStore

logger = logging.getLogger("homing.publishers.loopback")

#: Failed attempts of one message before each WARNING (then every this many more).
WARN_AFTER = 3


class LoopbackPublisher(Publisher):
    """Delivers each message to ``endpoint`` (the service's own ``POST /events``).

    Args:
        endpoint: the push endpoint URL, e.g. ``http://127.0.0.1:8080/events``; ``None`` to
            learn it from the first request the service serves (:meth:`serving_at`, called by
            :class:`~homing.asgi.PushFastPath` and :class:`~homing.asgi.PushEndpoint`).
        client: an httpx client to deliver with (a seam for tests); one is made otherwise.
        max_attempts: give up after this many attempts (``None``: retry while running).
        initial_backoff, max_backoff: the retry delay doubles from the first to the second.
        shutdown_grace: how long :meth:`aclose` waits for deliveries still under way.
        keep: where undeliverable messages go, besides :attr:`undelivered`.
        journal: a SQLite file where each message is committed before :meth:`publish` returns
            and removed once delivered (or kept); :meth:`resume` delivers what it holds.
    """

    local = True

    def __init__(
        self,
        endpoint: str | None,
        *,
        client: httpx.AsyncClient | None = None,
        subscription: str = "projects/local/subscriptions/homing-loopback",
        max_attempts: int | None = None,
        initial_backoff: float = 0.1,
        max_backoff: float = 10.0,
        timeout: float = 10.0,
        shutdown_grace: float = 5.0,
        keep: QuarantineStore | None = None,
        journal: str | Path | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.subscription = subscription
        self.max_attempts = max_attempts
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.shutdown_grace = shutdown_grace
        self.keep = keep
        self.journal = None if journal is None else str(journal)
        self.undelivered: list[OutgoingMessage] = []
        self.delivered = 0
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(int(datetime.now(UTC).timestamp() * 1000))
        self._journal_file: Journal | None = None
        self._resumed = False

    def _journal(self) -> Journal | None:
        if self.journal is None:
            return None
        if self._journal_file is None:
            self._journal_file = Journal(self.journal)
        return self._journal_file

    async def resume(self) -> int:
        """Start delivering what the journal holds from an earlier run; return how many."""
        journal = self._journal()
        if journal is None or self._resumed:
            return 0
        self._resumed = True
        pending = await journal.load()
        for entry in pending:
            message = OutgoingMessage(
                data=b"", attributes={}, event_type=entry.event_type, event_id=entry.event_id
            )
            self._start(message, entry.body, entry.seq)
        if pending:
            logger.info("loopback: delivering %d events left in %s", len(pending), self.journal)
        return len(pending)

    def serving_at(self, scheme: str, host: str, port: int, path: str = "/events") -> None:
        """Where the service was found to listen; sets the endpoint if none was given."""
        if self.endpoint is None:
            if host in ("0.0.0.0", "::"):  # noqa: S104 - listening everywhere: loopback reaches it
                host = "127.0.0.1"
            shown = f"[{host}]" if ":" in host else host
            self.endpoint = f"{scheme}://{shown}:{port}{path}"
            logger.info("loopback: delivering to %s, where this service listens", self.endpoint)

    async def _send(self, message: OutgoingMessage) -> str:
        if self.endpoint is None:
            raise PublishFailed(
                "the loopback publisher does not know where this service listens yet: set "
                "HOMING_LOOPBACK_URL (or PORT), or serve the app through PushFastPath, which "
                "tells it",
                event_type=message.event_type,
                event_id=message.event_id,
            )
        message_id = str(next(self._ids))
        body = build_push(
            message.data,
            message.attributes,
            message_id=message_id,
            subscription=self.subscription,
            ordering_key=message.ordering_key,
        )
        seq = None
        journal = self._journal()
        if journal is not None:
            await self.resume()
            seq = await journal.append(
                body, event_type=message.event_type, event_id=message.event_id
            )
        self._start(message, body, seq)
        return message_id

    def _start(self, message: OutgoingMessage, body: bytes, seq: int | None) -> None:
        task = asyncio.create_task(
            self._deliver(message, body, seq), name=f"homing-loopback-{message.event_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _done(self, seq: int | None) -> None:
        if seq is not None and self._journal_file is not None:
            self._journal_file.forget(seq)

    async def _deliver(self, message: OutgoingMessage, body: bytes, seq: int | None) -> None:
        delay = self.initial_backoff
        last = "not attempted"
        try:
            for attempt in itertools.count(1):
                try:
                    if self.endpoint is None:  # resumed before the service served a request
                        raise httpx.TransportError("where this service listens is not known yet")
                    response = await self._client.post(
                        self.endpoint, content=body, headers={"content-type": "application/json"}
                    )
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                else:
                    if response.status_code in ACK_STATUSES:
                        self.delivered += 1
                        self._done(seq)
                        return
                    last = f"status {response.status_code}"
                if self.max_attempts is not None and attempt >= self.max_attempts:
                    break
                level = logging.WARNING if attempt % WARN_AFTER == 0 else logging.INFO
                logger.log(
                    level,
                    "loopback delivery of %s (%s) to %s failed %d time(s) (%s); retrying in %.1fs",
                    message.event_type,
                    message.event_id,
                    self.endpoint,
                    attempt,
                    last,
                    delay,
                )
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
                delay = min(delay * 2, self.max_backoff)
        except asyncio.CancelledError:
            if seq is None:  # with a journal, it stays there for the next run
                await self._keep(message, body, f"still undelivered at shutdown ({last})")
            raise
        await self._keep(message, body, f"gave up after {self.max_attempts} attempts ({last})")
        self._done(seq)

    async def _keep(self, message: OutgoingMessage, body: bytes, reason: str) -> None:
        self.undelivered.append(message)
        logger.error(
            "loopback publisher keeps undelivered %s (%s) for %s: %s",
            message.event_type,
            message.event_id,
            self.endpoint,
            reason,
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
        if self._journal_file is not None:
            await asyncio.to_thread(self._journal_file.close)
            self._journal_file = None
        if self._own_client:
            await self._client.aclose()
