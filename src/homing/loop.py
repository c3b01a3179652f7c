"""One event loop per process for homing's coroutines, in a daemon thread, for synchronous
frameworks (:mod:`homing.flask`, :mod:`homing.django`).

Such a framework serves a request on whatever its server gives it: a thread (WSGI), a loop of
the server's (ASGI under Django), a new loop per call (``async_to_sync``). homing's async
clients (HTTP, Pub/Sub) belong to the loop that made them, so every homing coroutine runs here,
on one loop, whoever asks; a process forked afterwards (a gunicorn worker) gets its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import os
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """An asyncio loop in a daemon thread, started on first use, started anew after a fork.

    Args:
        name: the thread's name.
        isolated: run each coroutine in an empty context, so that nothing of the caller's
            (asgiref's executors, Django's thread-sensitive context) follows it onto the loop.
            Otherwise it runs in a copy of the caller's context (Flask: the request's trace
            reaches what it publishes).
    """

    def __init__(self, *, name: str = "homing-loop", isolated: bool = False) -> None:
        self.name = name
        self.isolated = isolated
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
        """Start ``coroutine`` on the loop; an awaitable of its result for the calling loop."""
        return asyncio.wrap_future(self._start(coroutine))

    def run(self, coroutine: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop from a synchronous caller and wait for its result (or
        its exception); :class:`TimeoutError` after ``timeout`` seconds (it is cancelled)."""
        if self.in_loop():
            coroutine.close()
            raise RuntimeError("LoopThread.run() called from its own loop: await it instead")
        future = self._start(coroutine)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def _start(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self.isolated:
            run = contextvars.Context().run
            return run(asyncio.run_coroutine_threadsafe, coroutine, self.loop)
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

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
