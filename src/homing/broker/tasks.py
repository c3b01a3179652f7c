"""The broker's Cloud Tasks: queues, HTTP tasks, their schedule, retries and OIDC tokens.

What it does, as Cloud Tasks documents it (tests/broker/test_tasks.py states each):

- a task runs no earlier than its ``schedule_time`` (at most 30 days ahead), as a request to
  its URL with its method, headers and body, its OIDC token (signed by the broker's key, checked
  against ``/certs``), and the ``X-CloudTasks-*`` headers;
- any 2xx completes it; anything else (a refused connection, no answer within the dispatch
  deadline, 15 s to 30 min, default 10 min) is retried after the queue's backoff — from
  ``min_backoff``, doubling ``max_doublings`` times, then linearly, up to ``max_backoff``; a
  task is deleted after ``max_attempts`` attempts (``-1``: unlimited) or once
  ``max_retry_duration`` has passed;
- a 429 or 503 with ``Retry-After`` (seconds or an HTTP date) slows the queue: it starts no
  request until then (at most ``max_backoff`` ahead), and the task is retried no earlier;
- a task's name is taken while it exists and for an hour after it ran or was deleted:
  creating it again is ``ALREADY_EXISTS``;
- ``max_concurrent_dispatches`` bounds the requests in flight per queue, and
  ``max_dispatches_per_second`` spaces their starts.

Queues and tasks live in the broker's SQLite file: a create is answered once it has committed,
so a broker killed with -9 loses no task it accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import heapq
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud.tasks_v2 import types as tasks

from homing.broker.errors import AlreadyExists, InvalidArgument, NotFound
from homing.broker.oidc import TokenIssuer
from homing.broker.storage import Storage
from homing.broker.transport import Pusher, PushFailed, PushTimeout

logger = logging.getLogger("homing.broker.tasks")

SCHEMA = """
CREATE TABLE IF NOT EXISTS cloud_queues (name TEXT PRIMARY KEY, proto BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS cloud_tasks (
    name TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    proto BLOB NOT NULL,
    due REAL NOT NULL,
    first_attempt REAL,
    gone_at REAL
);
"""

MAX_SCHEDULE = timedelta(days=30)
MIN_DEADLINE, MAX_DEADLINE = timedelta(seconds=15), timedelta(minutes=30)
DEFAULT_DEADLINE = timedelta(minutes=10)
MAX_TASK_BYTES = 1024 * 1024
#: How long a task's name stays taken after it ran or was deleted.
NAME_KEPT = 3600.0
_ACK = range(200, 300)
#: The statuses whose Retry-After slows the queue.
_SLOW_DOWN = (429, 503)

#: Cloud Tasks' defaults for a queue that sets none.
DEFAULT_RETRY = tasks.RetryConfig(
    max_attempts=100,
    min_backoff=timedelta(seconds=0.1),
    max_backoff=timedelta(seconds=3600),
    max_doublings=16,
)
DEFAULT_RATE = tasks.RateLimits(
    max_dispatches_per_second=500, max_burst_size=100, max_concurrent_dispatches=1000
)


def _id_ok(text: str, limit: int) -> bool:
    return 0 < len(text) <= limit and all(c.isascii() and (c.isalnum() or c in "-_") for c in text)


def check_queue_name(name: str) -> None:
    parts = name.split("/")
    if (
        len(parts) != 6
        or parts[0] != "projects"
        or parts[2] != "locations"
        or parts[4] != "queues"
        or not all(parts[1::2])
        or not _id_ok(parts[5], 100)
        or "_" in parts[5]
    ):
        raise InvalidArgument(
            f"queue name {name!r} must be projects/P/locations/L/queues/Q (Q: letters, digits, "
            "hyphens; at most 100)"
        )


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (a number of seconds, or an HTTP date);
    ``None`` when there is none or it cannot be read."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - now, 0.0)


def backoff(retry: tasks.RetryConfig, retries: int) -> float:
    """Seconds before retry number ``retries`` (1-based): doubling ``max_doublings`` times
    from ``min_backoff``, then growing by the last step, capped at ``max_backoff``."""
    low = retry.min_backoff.total_seconds()
    high = retry.max_backoff.total_seconds()
    doublings = retry.max_doublings
    if retries - 1 <= doublings:
        delay = low * 2 ** (retries - 1)
    else:
        top = low * 2**doublings
        delay = top + (retries - 1 - doublings) * top
    return float(min(delay, high))


@dataclass(order=True, slots=True)
class _Due:
    due: float
    name: str = field(compare=False)


class CloudTasks:
    """The queues and tasks of one broker, and the dispatch loop that runs them.

    Args:
        storage: the broker's SQLite file.
        pusher: sends the requests (the broker's).
        issuer: signs the OIDC tokens (the broker's).
        request_timeout: overrides every task's dispatch deadline (tests that cannot wait).
        clock: the time, in seconds since the epoch.
    """

    def __init__(
        self,
        storage: Storage,
        pusher: Pusher,
        issuer: TokenIssuer,
        *,
        request_timeout: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.pusher = pusher
        self.issuer = issuer
        self.request_timeout = request_timeout
        self.clock = clock
        self.queues: dict[str, tasks.Queue] = {}
        self.tasks: dict[str, tasks.Task] = {}
        self._first: dict[str, float] = {}
        self._gone: dict[str, float] = {}
        self._heap: list[_Due] = []
        self._in_flight: dict[str, int] = {}
        self._last_start: dict[str, float] = {}
        #: Per queue, when it may start requests again (a 429/503's Retry-After).
        self.held_until: dict[str, float] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self.dispatched = 0

    # Life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the tables, load queues and tasks, and start dispatching."""

        def load(connection: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            # One statement at a time: executescript would commit the writer's transaction.
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            queues = connection.execute("SELECT proto FROM cloud_queues").fetchall()
            rows = connection.execute(
                "SELECT name, proto, due, first_attempt, gone_at FROM cloud_tasks"
            ).fetchall()
            return queues, rows

        queues, rows = await self.storage.run(load)
        for (raw,) in queues:
            queue = tasks.Queue.deserialize(raw)
            self.queues[queue.name] = queue
        now = self.clock()
        for name, raw, due, first, gone_at in rows:
            if gone_at is not None:
                if now - gone_at < NAME_KEPT:
                    self._gone[name] = gone_at
                continue
            self.tasks[name] = tasks.Task.deserialize(raw)
            if first is not None:
                self._first[name] = first
            heapq.heappush(self._heap, _Due(due, name))
        if self.tasks:
            logger.info("broker: %d Cloud Tasks owed", len(self.tasks))
        self._loop = asyncio.create_task(self._dispatch_loop(), name="homing-broker-cloud-tasks")

    async def aclose(self) -> None:
        """Stop dispatching; tasks under way stay owed (as a crash would leave them)."""
        for task in [self._loop, *self._running]:
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in [self._loop, *self._running] if t is not None), return_exceptions=True
        )
        self._loop = None

    # Queues --------------------------------------------------------------------------------

    async def create_queue(self, parent: str, queue: tasks.Queue) -> tasks.Queue:
        check_queue_name(queue.name)
        if not queue.name.startswith(parent + "/queues/"):
            raise InvalidArgument(f"queue {queue.name!r} is not in {parent!r}")
        if queue.name in self.queues:
            raise AlreadyExists(f"queue {queue.name} exists already")
        return await self._save_queue(self._with_defaults(queue))

    def get_queue(self, name: str) -> tasks.Queue:
        queue = self.queues.get(name)
        if queue is None:
            raise NotFound(f"queue {name} does not exist")
        return queue

    def list_queues(self, parent: str) -> list[tasks.Queue]:
        return [q for name, q in sorted(self.queues.items()) if name.startswith(parent + "/")]

    async def update_queue(self, queue: tasks.Queue, paths: list[str]) -> tasks.Queue:
        """Change the fields named in ``paths`` (all when empty); create a missing queue."""
        check_queue_name(queue.name)
        existing = self.queues.get(queue.name)
        if existing is None:
            return await self._save_queue(self._with_defaults(queue))
        updated = tasks.Queue.deserialize(tasks.Queue.serialize(existing))
        for path in paths or ["rate_limits", "retry_config", "http_target"]:
            top, _, rest = path.partition(".")
            if top not in ("rate_limits", "retry_config", "http_target", "state"):
                raise InvalidArgument(f"update_mask path {path!r} cannot be updated here")
            if not rest:
                setattr(updated, top, getattr(queue, top))
            else:
                setattr(getattr(updated, top), rest, getattr(getattr(queue, top), rest))
        return await self._save_queue(self._with_defaults(updated))

    async def delete_queue(self, name: str) -> None:
        self.get_queue(name)
        del self.queues[name]
        doomed = [task for task in self.tasks if task.startswith(name + "/tasks/")]
        for task in doomed:
            self.tasks.pop(task, None)

        def delete(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM cloud_queues WHERE name = ?", (name,))
            connection.execute("DELETE FROM cloud_tasks WHERE queue = ?", (name,))

        await self.storage.run(delete)

    def _with_defaults(self, queue: tasks.Queue) -> tasks.Queue:
        retry = queue.retry_config
        if retry.max_attempts == 0:
            retry.max_attempts = DEFAULT_RETRY.max_attempts
        if not retry.min_backoff:
            retry.min_backoff = DEFAULT_RETRY.min_backoff
        if not retry.max_backoff:
            retry.max_backoff = DEFAULT_RETRY.max_backoff
        if retry.max_doublings == 0:  # proto3 cannot tell 0 from unset: Cloud Tasks' default
            retry.max_doublings = DEFAULT_RETRY.max_doublings
        rate = queue.rate_limits
        if not rate.max_dispatches_per_second:
            rate.max_dispatches_per_second = DEFAULT_RATE.max_dispatches_per_second
        if not rate.max_concurrent_dispatches:
            rate.max_concurrent_dispatches = DEFAULT_RATE.max_concurrent_dispatches
        rate.max_burst_size = rate.max_burst_size or DEFAULT_RATE.max_burst_size
        if retry.min_backoff > retry.max_backoff:
            raise InvalidArgument("retry_config.min_backoff is greater than max_backoff")
        queue.state = tasks.Queue.State.RUNNING  # type: ignore[assignment]
        return queue

    async def _save_queue(self, queue: tasks.Queue) -> tasks.Queue:
        raw = tasks.Queue.serialize(queue)
        await self.storage.run(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO cloud_queues (name, proto) VALUES (?, ?)", (queue.name, raw)
            )
        )
        self.queues[queue.name] = queue
        self._wake.set()
        return queue

    # Tasks ---------------------------------------------------------------------------------

    async def create_task(self, parent: str, task: tasks.Task) -> tasks.Task:
        """Validate, store (committed before this returns) and schedule ``task``."""
        self.get_queue(parent)
        now = self.clock()
        if task.name:
            prefix, _, task_id = task.name.rpartition("/tasks/")
            if prefix != parent or not _id_ok(task_id, 500):
                raise InvalidArgument(
                    f"task name {task.name!r} must be {parent}/tasks/ID (ID: letters, digits, "
                    "hyphens, underscores; at most 500)"
                )
            gone = self._gone.get(task.name)
            if task.name in self.tasks or (gone is not None and now - gone < NAME_KEPT):
                raise AlreadyExists(f"task {task.name} exists, or ran or was deleted lately")
        else:
            task.name = f"{parent}/tasks/{secrets.randbelow(10**19):019d}"
        if "http_request" not in task:
            raise InvalidArgument("the local broker runs HTTP tasks only (http_request)")
        request = task.http_request
        if not request.url.startswith(("http://", "https://")):
            raise InvalidArgument("http_request.url must be an http(s) URL")
        if len(tasks.Task.serialize(task)) > MAX_TASK_BYTES:
            raise InvalidArgument(f"the task is larger than {MAX_TASK_BYTES} bytes")
        created = datetime.fromtimestamp(now, UTC)
        if "schedule_time" in task:
            if task.schedule_time - created > MAX_SCHEDULE:
                raise InvalidArgument("schedule_time is more than 30 days ahead")
        else:
            task.schedule_time = created
        if "dispatch_deadline" in task:
            if not MIN_DEADLINE <= task.dispatch_deadline <= MAX_DEADLINE:
                raise InvalidArgument("dispatch_deadline must be 15 s to 30 min")
        else:
            task.dispatch_deadline = DEFAULT_DEADLINE
        if not request.http_method:
            request.http_method = tasks.HttpMethod.POST  # type: ignore[assignment]
        task.create_time = created
        task.dispatch_count = 0
        task.response_count = 0
        task.view = tasks.Task.View.FULL  # type: ignore[assignment]
        due = task.schedule_time.timestamp()
        raw = tasks.Task.serialize(task)
        name = task.name
        await self.storage.run(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO cloud_tasks (name, queue, proto, due) VALUES (?, ?, ?, ?)",
                (name, parent, raw, due),
            )
        )
        self._gone.pop(name, None)
        self.tasks[name] = task
        heapq.heappush(self._heap, _Due(due, name))
        self._wake.set()
        return task

    def get_task(self, name: str) -> tasks.Task:
        task = self.tasks.get(name)
        if task is None:
            raise NotFound(f"task {name} does not exist")
        return task

    def list_tasks(self, parent: str) -> list[tasks.Task]:
        self.get_queue(parent)
        prefix = parent + "/tasks/"
        return sorted(
            (t for name, t in self.tasks.items() if name.startswith(prefix)),
            key=lambda t: (t.schedule_time, t.name),
        )

    async def delete_task(self, name: str) -> None:
        self.get_task(name)
        await self._forget(name, "deleted")

    async def _forget(self, name: str, why: str) -> None:
        self.tasks.pop(name, None)
        self._first.pop(name, None)
        now = self.clock()
        self._gone[name] = now
        await self.storage.run(
            lambda c: c.execute(
                "UPDATE cloud_tasks SET gone_at = ?, proto = X'' WHERE name = ?", (now, name)
            )
        )
        logger.debug("task %s %s", name, why)

    # Dispatch ------------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            self._wake.clear()
            now = self.clock()
            wait: float | None = None
            deferred: list[_Due] = []
            while self._heap and self._heap[0].due <= now:
                entry = heapq.heappop(self._heap)
                task = self.tasks.get(entry.name)
                if task is None or abs(task.schedule_time.timestamp() - entry.due) > 1e-3:
                    continue  # gone, or rescheduled (a newer entry stands for it)
                queue_name = entry.name.rpartition("/tasks/")[0]
                queue = self.queues.get(queue_name)
                if queue is None:
                    continue
                pause = self._pause(queue, now)
                if pause > 0:
                    deferred.append(entry)
                    wait = pause if wait is None else min(wait, pause)
                    continue
                self._start(queue, task, now)
            for entry in deferred:
                heapq.heappush(self._heap, entry)
            if self._heap and wait is None:
                wait = max(0.0, self._heap[0].due - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    def _pause(self, queue: tasks.Queue, now: float) -> float:
        """Seconds before ``queue`` may start another request (0: now)."""
        held = self.held_until.get(queue.name)
        if held is not None:
            if now < held:
                return held - now
            del self.held_until[queue.name]
        limits = queue.rate_limits
        if self._in_flight.get(queue.name, 0) >= limits.max_concurrent_dispatches:
            return 0.05  # woken sooner when a request ends
        spacing = 1.0 / limits.max_dispatches_per_second
        last = self._last_start.get(queue.name)
        if spacing > 0.002 and last is not None and now - last < spacing:
            return spacing - (now - last)
        return 0.0

    def _start(self, queue: tasks.Queue, task: tasks.Task, now: float) -> None:
        self._in_flight[queue.name] = self._in_flight.get(queue.name, 0) + 1
        self._last_start[queue.name] = now
        self._first.setdefault(task.name, now)
        running = asyncio.create_task(self._attempt(queue, task))
        self._running.add(running)
        running.add_done_callback(self._running.discard)

    def _headers(self, queue: tasks.Queue, task: tasks.Task) -> dict[str, str]:
        request = task.http_request
        headers = {name: value for name, value in request.headers.items()}
        headers.setdefault("Content-Type", "application/octet-stream")
        headers["User-Agent"] = "Google-Cloud-Tasks"
        headers["X-CloudTasks-QueueName"] = queue.name.rpartition("/")[2]
        headers["X-CloudTasks-TaskName"] = task.name.rpartition("/")[2]
        headers["X-CloudTasks-TaskRetryCount"] = str(task.dispatch_count)
        headers["X-CloudTasks-TaskExecutionCount"] = str(task.response_count)
        headers["X-CloudTasks-TaskETA"] = f"{task.schedule_time.timestamp():.6f}"
        last = task.last_attempt
        if task.dispatch_count and "last_attempt" in task:
            status = last.response_status.code
            headers["X-CloudTasks-TaskPreviousResponse"] = str(status) if status else "0"
            headers["X-CloudTasks-TaskRetryReason"] = last.response_status.message or "unknown"
        if "oidc_token" in request and request.oidc_token.service_account_email:
            token = request.oidc_token
            audience = token.audience or request.url
            headers["Authorization"] = (
                f"Bearer {self.issuer.token(token.service_account_email, audience)}"
            )
        return headers

    async def _attempt(self, queue: tasks.Queue, task: tasks.Task) -> None:
        request = task.http_request
        deadline = self.request_timeout or task.dispatch_deadline.total_seconds()
        headers = self._headers(queue, task)
        dispatched = self.clock()
        status: int | None = None
        wait: float | None = None  # a 429/503's Retry-After
        try:
            if request.http_method != tasks.HttpMethod.POST:
                raise PushFailed("the local broker sends POST tasks only")
            answer = await self.pusher.push(request.url, request.body, headers, deadline)
            status = int(answer)
            reason = f"HTTP status {status}"
            if status in _SLOW_DOWN:
                wait = retry_after(getattr(answer, "retry_after", None), self.clock())
            if wait is not None:
                wait = min(wait, queue.retry_config.max_backoff.total_seconds())
                reason += f", Retry-After {wait:g} s"
                held = self.clock() + wait
                self.held_until[queue.name] = max(self.held_until.get(queue.name, 0.0), held)
        except PushTimeout:
            reason = f"no answer within the dispatch deadline ({deadline:g} s)"
        except PushFailed as exc:
            reason = f"the request failed: {exc}"
        finally:
            self._in_flight[queue.name] -= 1
            self._wake.set()
        self.dispatched += 1
        name = task.name
        if name not in self.tasks:
            return  # deleted meanwhile
        if status is not None and status in _ACK:
            await self._forget(name, "done")
            return
        task.dispatch_count += 1
        if status is not None:
            task.response_count += 1
        attempt = tasks.Attempt(
            schedule_time=task.schedule_time,
            dispatch_time=datetime.fromtimestamp(dispatched, UTC),
            response_time=datetime.fromtimestamp(self.clock(), UTC),
        )
        attempt.response_status.code = status or 0
        attempt.response_status.message = reason
        task.last_attempt = attempt
        if "first_attempt" not in task:
            task.first_attempt = attempt
        retry = queue.retry_config
        now = self.clock()
        spent = now - self._first.get(name, now)
        limit = retry.max_retry_duration.total_seconds() if retry.max_retry_duration else None
        if (retry.max_attempts >= 0 and task.dispatch_count >= retry.max_attempts) or (
            limit and spent >= limit
        ):
            logger.warning(
                "task %s deleted after %d attempt(s): %s", name, task.dispatch_count, reason
            )
            await self._forget(name, f"failed: {reason}")
            return
        due = now + max(backoff(retry, task.dispatch_count), wait or 0.0)
        task.schedule_time = datetime.fromtimestamp(due, UTC)
        raw = tasks.Task.serialize(task)
        first = self._first.get(name)
        self.storage.later(
            lambda c: c.execute(
                "UPDATE cloud_tasks SET proto = ?, due = ?, first_attempt = ? WHERE name = ?",
                (raw, due, first, name),
            )
        )
        heapq.heappush(self._heap, _Due(due, name))
        self._wake.set()

    # The web page ------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """Each queue with its limits, retry config and tasks (for the web page)."""
        now = self.clock()
        described = []
        for name, queue in sorted(self.queues.items()):
            prefix = name + "/tasks/"
            owed = [t for task_name, t in self.tasks.items() if task_name.startswith(prefix)]
            held = self.held_until.get(name, 0.0)
            retry, rate = queue.retry_config, queue.rate_limits
            described.append(
                {
                    "name": name,
                    "max_dispatches_per_second": rate.max_dispatches_per_second,
                    "max_concurrent_dispatches": rate.max_concurrent_dispatches,
                    "max_attempts": retry.max_attempts,
                    "backoff": f"{retry.min_backoff.total_seconds():g}-"
                    f"{retry.max_backoff.total_seconds():g} s, "
                    f"{retry.max_doublings} doublings",
                    "in_flight": self._in_flight.get(name, 0),
                    "held_for": max(held - now, 0.0),
                    "tasks": sorted(owed, key=lambda t: (t.schedule_time, t.name)),
                }
            )
        return described
