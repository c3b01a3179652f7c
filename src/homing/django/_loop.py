"""One event loop per process for homing's coroutines, in a daemon thread.

Django serves a request on whatever its server gives it: a thread (WSGI), a loop of the server's
(ASGI), a new loop per call (``async_to_sync``). homing's async clients (HTTP, Pub/Sub) belong to
the loop that made them, so every homing coroutine runs here, on one loop, whoever asks.

This is :class:`homing.flask.LoopThread`'s job too; it is repeated here so that the Django
adapter needs no Flask (to be folded into the shared HTTP edge).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """An asyncio loop in a daemon thread, started on first use, started anew after a fork."""

    def __init__(self, *, name: str = "homing-django") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        _after_fork.add(self)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._loop = self._thread = self._pid = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """This process's loop, started when first asked for."""
        loop = self._loop
        if loop is not None and self._pid == os.getpid():
            return loop
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=serve, name=self.name, daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            return self._loop

    def running(self) -> bool:
        """Whether this process's loop has been started (and not closed)."""
        return self._loop is not None and self._pid == os.getpid()

    def in_loop(self) -> bool:
        """Whether the caller runs on this loop's thread."""
        return threading.current_thread() is self._thread

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Start ``coroutine`` on the loop; an awaitable of its result for the calling loop.

        It starts in an empty context: nothing of the caller's request (asgiref's executors,
        Django's thread-sensitive context) follows it onto homing's loop.
        """
        future = contextvars.Context().run(asyncio.run_coroutine_threadsafe, coroutine, self.loop)
        return asyncio.wrap_future(future)

    def run(self, coroutine: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop from a synchronous caller and wait for its result."""
        if self.in_loop():
            coroutine.close()
            raise RuntimeError("LoopThread.run() called from its own loop: await it instead")
        future = contextvars.Context().run(asyncio.run_coroutine_threadsafe, coroutine, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        """Stop the loop and its thread, if this process started them."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None or self._pid != os.getpid():
                return
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = self._pid = None


_after_fork: weakref.WeakSet[LoopThread] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for loop_thread in list(_after_fork):
        loop_thread._forget()


os.register_at_fork(after_in_child=_reset_after_fork)
