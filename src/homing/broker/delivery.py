"""The delivery loop: one worker per push subscription, Pub/Sub's push rules.

- A push acknowledges only on 102, 200, 201, 202 or 204. Any other status, a refused or reset
  connection, or no answer within the ack deadline is a nack; the request is cancelled at the
  deadline, so a late 2xx never counts.
- A nacked message comes back after the subscription's RetryPolicy backoff (exponential from
  ``minimumBackoff`` to ``maximumBackoff``, with jitter); without a policy, after a short
  exponential backoff (0.1 s to 10 s) rather than in a tight loop.
- With a dead-letter policy, the body carries ``deliveryAttempt``, and the message is
  dead-lettered once ``maxDeliveryAttempts`` attempts have failed.
- With ordering on, one message per ordering key is in flight; other keys proceed.
- How many pushes are in flight follows a slow-start window: it grows with each success and
  halves on each failure, so a failing endpoint gets little traffic and a healthy one a lot.
- Each subscription has its own worker and window: one bad endpoint never stalls another.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from homing.broker.model import Delivery
from homing.broker.storage import Pending, Storage
from homing.broker.transport import Pusher, PushFailed, PushTimeout
from homing.ingress.wrapped import ACK_STATUSES, build_push

if TYPE_CHECKING:
    from homing.broker.oidc import TokenIssuer

logger = logging.getLogger("homing.broker")

#: Backoff when a subscription has no RetryPolicy ("as soon as possible", but not a hot loop).
NO_POLICY_BACKOFF = (0.1, 10.0)
#: Seconds between two warnings about one subscription's failing deliveries.
WARNING_INTERVAL = 10.0
#: Seconds one signed push token is reused for (it is valid for an hour).
TOKEN_REUSE = 60.0


class SlowStart:
    """The number of pushes a subscription may have in flight.

    Starts at ``initial``, doubles per round of successes up to the first failure (each success
    adds one), then grows by about one per round; each failure halves it (never below one).
    """

    def __init__(self, initial: int = 4, limit: int = 1000) -> None:
        self.limit = limit
        self.size = float(min(initial, limit))
        self.threshold = float(limit)

    @property
    def allowed(self) -> int:
        return max(1, int(self.size))

    def success(self) -> None:
        step = 1.0 if self.size < self.threshold else 1.0 / self.size
        self.size = min(float(self.limit), self.size + step)

    def failure(self) -> None:
        self.threshold = max(self.size / 2, 1.0)
        self.size = self.threshold


def backoff(delivery: Delivery, attempts: int) -> float:
    """Seconds before attempt ``attempts + 1``, jittered within the policy's bounds."""
    low, high = (
        (delivery.min_backoff, delivery.max_backoff) if delivery.retry_policy else NO_POLICY_BACKOFF
    )
    delay = min(high, low * 2.0 ** max(attempts - 1, 0))
    jittered = delay * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not secrecy
    return min(high, max(low, jittered))


@functools.lru_cache(maxsize=256)  # a publish's messages share one time: format it once
def _rfc3339(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


#: Headers that frame or route the push request itself: an attribute of one of these names is
#: not written as a header.
_FRAMING = frozenset(
    {
        "connection",
        "content-length",
        "content-type",
        "expect",
        "host",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def push_request(
    delivery: Delivery, pending: Pending, attempt: int
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one push, as production sends them."""
    message = pending.message
    headers = {"user-agent": "CloudPubSub-Google"}
    if not delivery.no_wrapper:
        body = build_push(
            message.data,
            message.attributes,
            message_id=message.message_id,
            subscription=delivery.name,
            publish_time=_rfc3339(message.publish_time),
            ordering_key=message.ordering_key or None,
            delivery_attempt=attempt if delivery.dead_letter_topic else None,
        )
        headers["content-type"] = "application/json"
        if delivery.cloudevents:  # as an Eventarc Pub/Sub trigger sends it: binary mode
            headers["ce-id"] = message.message_id
            headers["ce-source"] = f"//pubsub.googleapis.com/{message.topic}"
            headers["ce-specversion"] = "1.0"
            headers["ce-type"] = "google.cloud.pubsub.topic.v1.messagePublished"
            headers["ce-time"] = _rfc3339(message.publish_time)
        return body, headers
    if delivery.write_metadata:
        for key, value in message.attributes.items():
            # Never the request's own framing (an attribute named content-length would
            # re-frame the push); content-type is set from its attribute below.
            if key.lower() not in _FRAMING:
                headers[key] = value
        headers["x-goog-pubsub-message-id"] = message.message_id
        headers["x-goog-pubsub-publish-time"] = _rfc3339(message.publish_time)
        headers["x-goog-pubsub-subscription-name"] = delivery.name
        if message.ordering_key:
            headers["x-goog-pubsub-ordering-key"] = message.ordering_key
    content_type = message.attributes.get("Content-Type") or message.attributes.get("content-type")
    headers["content-type"] = content_type or "application/octet-stream"
    return message.data, headers


def _slot(ack_id: str) -> tuple[int, int]:
    seq, order = ack_id.split("-")
    return int(seq), int(order)


class SubscriptionWorker:
    """Pushes one subscription's messages; see the module docstring for the rules."""

    def __init__(
        self,
        delivery: Delivery,
        *,
        storage: Storage,
        pusher: Pusher,
        issuer: TokenIssuer,
        dead_letter: Callable[[SubscriptionWorker, Pending], Awaitable[None]],
        push_timeout: float | None = None,
        window: SlowStart | None = None,
    ) -> None:
        self.delivery = delivery
        self.window = window or SlowStart()
        self.in_flight: dict[tuple[int, int], Pending] = {}
        self.dead: dict[int, Pending] = {}
        self.acked = 0
        self.nacked = 0
        self.last_failure: str | None = None
        self._storage = storage
        self._pusher = pusher
        self._issuer = issuer
        self._dead_letter = dead_letter
        self._heap: list[tuple[float, int, Pending]] = []
        self._keys: dict[str, deque[Pending]] = {}
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._failures_since_warning = 0
        self._warned_at = 0.0
        self._leases: dict[str, tuple[Pending, float]] = {}
        self._deadline = push_timeout or delivery.ack_deadline
        self._pushes: dict[tuple[int, int], asyncio.Future[int]] = {}
        self._acks: list[int] = []
        self._stopped = False
        self._sleep_until = math.inf
        self._bearer: tuple[str, float] | None = None

    # Queue ------------------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Messages owed and not in flight (ordered ones waiting behind their key included)."""
        return len(self.waiting())

    def waiting(self) -> list[Pending]:
        """Messages owed and not in flight, soonest first."""
        found = {id(p): p for _, _, p in self._heap}
        for queue in self._keys.values():
            for p in queue:
                found.setdefault(id(p), p)
        in_flight = {id(p) for p in self.in_flight.values()}
        return sorted(
            (p for key, p in found.items() if key not in in_flight),
            key=lambda p: (p.due, p.message.seq),
        )

    def _is_keyed(self, pending: Pending) -> bool:
        return self.delivery.ordered and bool(pending.message.ordering_key)

    def add(self, pending: Pending) -> None:
        """Owe ``pending`` to this subscription (a new publish, a replay, or loaded at start)."""
        if pending.dead:
            self.dead[pending.message.seq] = pending
            return
        if self._is_keyed(pending):
            queue = self._keys.setdefault(pending.message.ordering_key, deque())
            queue.append(pending)
            if len(queue) > 1:
                return  # waits until the messages before it on its key are done
        heapq.heappush(self._heap, (pending.due, next(self._order), pending))
        if pending.due < self._sleep_until and len(self.in_flight) < self.window.allowed:
            self._wake.set()

    def _finished(self, pending: Pending) -> None:
        """``pending`` is acked or dead-lettered: the next message on its key may go."""
        if not self._is_keyed(pending):
            return
        queue = self._keys[pending.message.ordering_key]
        queue.popleft()
        if queue:
            head = queue[0]
            head.due = max(head.due, time.time())
            heapq.heappush(self._heap, (head.due, next(self._order), head))
        else:
            del self._keys[pending.message.ordering_key]

    # Loop -------------------------------------------------------------------------------
    #
    # Pushes are started by _pump and finished by _pushed, a callback on the pusher's future:
    # no task per push, and a finished push starts the next one without waking the runner,
    # which only sleeps until the next message falls due (or is woken by add()).

    def start(self) -> None:
        if self._runner is None and self.delivery.endpoint:
            self._runner = asyncio.create_task(
                self._run(), name=f"homing-broker {self.delivery.name}"
            )

    async def stop(self) -> None:
        """Stop pushing; pushes under way are cancelled (and so not acknowledged)."""
        self._stopped = True
        for future in self._pushes.values():
            future.cancel()
        tasks = [t for t in (self._runner, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runner = None

    async def _run(self) -> None:
        while True:
            self._sleep_until = -math.inf  # awake: _pump need not wake it
            self._pump()
            heap = self._heap
            timeout = None
            if heap and len(self.in_flight) < self.window.allowed:
                timeout = max(heap[0][0] - time.time(), 0.0)
            self._sleep_until = math.inf if timeout is None else time.time() + timeout
            self._wake.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _pump(self) -> None:
        """Start the pushes that are due, as far as the window allows."""
        if self._runner is None or self._stopped:
            return
        heap = self._heap
        if not heap:
            return
        now = time.time()
        allowed = self.window.allowed
        in_flight = self.in_flight
        while heap and heap[0][0] <= now and len(in_flight) < allowed:
            _, order, pending = heapq.heappop(heap)
            if pending.message.publish_time + self.delivery.retention < now:
                self._expired(pending)
                continue
            self._dispatch(pending, (pending.message.seq, order))
        if heap and len(in_flight) < allowed and heap[0][0] < self._sleep_until:
            self._wake.set()  # the runner sleeps past the next due message

    def _dispatch(self, pending: Pending, slot: tuple[int, int]) -> None:
        delivery = self.delivery
        assert delivery.endpoint is not None
        self.in_flight[slot] = pending
        attempt = pending.attempts + 1
        try:
            body, headers = push_request(delivery, pending, attempt)
            if delivery.oidc_email:
                headers["authorization"] = self._authorization(delivery.oidc_email)
            future = self._pusher.push(delivery.endpoint, body, headers, self._deadline)
        except Exception as exc:  # a bug here must not strand the message: a failed push
            future = asyncio.get_running_loop().create_future()
            future.set_exception(exc)
        self._pushes[slot] = future
        future.add_done_callback(functools.partial(self._pushed, pending, slot, attempt))

    def _pushed(
        self, pending: Pending, slot: tuple[int, int], attempt: int, future: asyncio.Future[int]
    ) -> None:
        if self._stopped:  # stopped while under way: still owed, and handed on by the broker
            if not future.cancelled():
                future.exception()  # retrieved: never reported as "never retrieved"
            return
        del self.in_flight[slot]
        del self._pushes[slot]
        pending.attempts = attempt
        error: str | None = None
        exc = None if future.cancelled() else future.exception()
        if future.cancelled():
            error = "the push was cancelled"
        elif exc is None:
            status = future.result()
            if status not in ACK_STATUSES:
                error = f"HTTP {status}"
        elif isinstance(exc, PushTimeout):
            error = f"no answer within the ack deadline ({self._deadline:g} s)"
        elif isinstance(exc, PushFailed):
            error = str(exc)
        else:
            logger.error(
                "push of message %s failed inside the broker", pending.message.seq, exc_info=exc
            )
            error = f"the broker failed to push: {type(exc).__name__}: {exc}"
        if error is None:
            self.window.success()
            self.acked += 1
            self._ack(pending.message.seq)
            self._finished(pending)
        else:
            self._nacked(pending, error)
        self._pump()

    def _authorization(self, email: str) -> str:
        """A bearer token, signed anew once the last is :data:`TOKEN_REUSE` seconds old.

        Signing costs ~0.2 ms of CPU, several times a push; a token stays valid for an hour.
        """
        now = time.time()
        if self._bearer is None or now - self._bearer[1] >= TOKEN_REUSE:
            audience = self.delivery.oidc_audience or self.delivery.endpoint or ""
            self._bearer = (f"Bearer {self._issuer.token(email, audience, now=now)}", now)
        return self._bearer[0]

    def _ack(self, seq: int) -> None:
        """Record an ack with the others of this loop turn, in one storage operation."""
        if not self._acks:
            asyncio.get_running_loop().call_soon(self._store_acks)
        self._acks.append(seq)

    def _store_acks(self) -> None:
        seqs, self._acks = self._acks, []
        self._storage.later(Storage.acks(self.delivery.name, seqs))

    def _expired(self, pending: Pending) -> None:
        """Older than the subscription's retention: Pub/Sub deletes it, and so does the broker."""
        logger.warning(
            "message %s of %s is older than the retention (%g s) after %d attempts: deleted",
            pending.message.message_id,
            self.delivery.name,
            self.delivery.retention,
            pending.attempts,
        )
        self._storage.later(Storage.ack(self.delivery.name, pending.message.seq))
        self._finished(pending)

    def _nacked(self, pending: Pending, error: str) -> None:
        delivery = self.delivery
        self.window.failure()
        self.nacked += 1
        self.last_failure = error
        pending.last_error = error
        self._warn(pending, error)
        if delivery.dead_letter_topic and pending.attempts >= delivery.max_delivery_attempts:
            task = asyncio.create_task(self._dead_lettered(pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        pending.due = time.time() + backoff(delivery, pending.attempts)
        self._storage.later(Storage.nack(pending))
        heapq.heappush(self._heap, (pending.due, next(self._order), pending))

    async def _dead_lettered(self, pending: Pending) -> None:
        await self._dead_letter(self, pending)
        self._finished(pending)
        self._pump()

    # Pull -------------------------------------------------------------------------------

    def pull(self, max_messages: int) -> list[tuple[str, Pending]]:
        """Lease up to ``max_messages`` due messages for the ack deadline; ``(ack_id, p)``."""
        now = time.time()
        for ack_id, (pending, expires) in list(self._leases.items()):
            if expires <= now:  # not acknowledged in time: a nack
                del self._leases[ack_id]
                del self.in_flight[_slot(ack_id)]
                pending.attempts += 1
                self.nacked += 1
                pending.due = now
                heapq.heappush(self._heap, (pending.due, next(self._order), pending))
        leased: list[tuple[str, Pending]] = []
        while self._heap and self._heap[0][0] <= now and len(leased) < max_messages:
            _, order, pending = heapq.heappop(self._heap)
            ack_id = f"{pending.message.seq}-{order}"
            self.in_flight[(pending.message.seq, order)] = pending
            self._leases[ack_id] = (pending, now + self.delivery.ack_deadline)
            leased.append((ack_id, pending))
        return leased

    def acknowledge(self, ack_ids: list[str]) -> None:
        """End the leases named (unknown or expired ones are ignored, as Pub/Sub does)."""
        for ack_id in ack_ids:
            lease = self._leases.pop(ack_id, None)
            if lease is None:
                continue
            pending = lease[0]
            del self.in_flight[_slot(ack_id)]
            pending.attempts += 1
            self.acked += 1
            self._storage.later(Storage.ack(self.delivery.name, pending.message.seq))
            self._finished(pending)

    def modify_deadline(self, ack_ids: list[str], seconds: int) -> None:
        """Extend (or with 0, end as a nack) the leases named."""
        for ack_id in ack_ids:
            lease = self._leases.get(ack_id)
            if lease is not None:
                self._leases[ack_id] = (lease[0], time.time() + seconds)

    def _warn(self, pending: Pending, error: str) -> None:
        self._failures_since_warning += 1
        now = time.monotonic()
        if now - self._warned_at < WARNING_INTERVAL:
            return
        logger.warning(
            "push to %s for subscription %s failed %d time(s) since the last report; "
            "last: message %s attempt %d: %s",
            self.delivery.endpoint,
            self.delivery.name,
            self._failures_since_warning,
            pending.message.message_id,
            pending.attempts,
            error,
        )
        self._warned_at = now
        self._failures_since_warning = 0
