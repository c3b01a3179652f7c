"""How pushes leave the broker: one small interface, two implementations.

- :class:`HttpxPusher` sends through an ``httpx.AsyncClient`` (the seam tests use, with
  ``httpx.MockTransport``).
- :class:`SocketPusher`, the default, is a keep-alive HTTP/1.1 client on asyncio protocols with
  ``httptools`` (uvicorn's parser) reading the responses. It exists for throughput: measured on
  this project's machines, httpx spends ~1.5 ms of CPU per push in its pool and backend layers,
  which capped the broker below the official emulator; this client spends a few tens of
  microseconds (``python -m bench.broker`` measures both brokers). It works with callbacks, not
  a task per push, and keeps at most :data:`MAX_CONNECTIONS` connections to one endpoint (one
  per push in flight, as HTTP/1.1 allows): pushes beyond that wait for a connection to come
  free, inside their deadline, instead of opening and closing a connection each.

A push is started with ``push(url, body, headers, timeout)``, which returns a future: the
response status, or :class:`PushFailed` for anything that is not an HTTP answer (refused,
reset, a malformed response) and :class:`PushTimeout` for no answer within ``timeout`` (the
request is abandoned, so a late answer never counts). The delivery loop counts both as a nack,
like a non-ack status.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit

import httptools
import httpx

#: Connections one :class:`SocketPusher` keeps open to one endpoint (push URL): endpoints
#: never share connections, so one that hangs holds up none of the others.
MAX_CONNECTIONS = 64
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NOT_IN_VALUE = re.compile(r"[\r\n\0]")
_CACHED_LINES = 1024


class Answer(int):
    """A response status that also carries the endpoint's ``Retry-After`` header (Cloud Tasks
    reads it on 429 and 503); the pushers return a plain ``int`` when there is none."""

    retry_after: str

    def __new__(cls, status: int, retry_after: str) -> Answer:
        answer = super().__new__(cls, status)
        answer.retry_after = retry_after
        return answer


class PushFailed(Exception):
    """Raised when a push got no HTTP answer (refused, reset, garbage)."""


class PushTimeout(PushFailed):
    """Raised when a push got no answer within its timeout (the ack deadline)."""


class Pusher(Protocol):
    def push(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> asyncio.Future[int]:
        """POST ``body``: a future of the response status, or of :class:`PushFailed`."""
        ...

    async def aclose(self) -> None: ...


class HttpxPusher:
    """Pushes through an httpx client."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    def push(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> asyncio.Future[int]:
        return asyncio.ensure_future(self._post(url, body, dict(headers), deadline=timeout))

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str], *, deadline: float
    ) -> int:
        try:
            async with asyncio.timeout(deadline):
                response = await self.client.post(url, content=body, headers=headers)
        except TimeoutError:
            raise PushTimeout(f"no answer within {deadline:g} s") from None
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise PushFailed(reason) from exc
        retry_after = response.headers.get("retry-after")
        if retry_after is not None:
            return Answer(response.status_code, retry_after)
        return response.status_code

    async def aclose(self) -> None:
        await self.client.aclose()


class _Exchange:
    """One request and the future of its answer."""

    __slots__ = ("connection", "future", "request", "retried", "timeout", "timer")

    def __init__(self, request: bytes, future: asyncio.Future[int], timeout: float) -> None:
        self.request = request
        self.future = future
        self.timeout = timeout
        self.timer: asyncio.TimerHandle | None = None
        self.connection: _Connection | None = None
        self.retried = False

    def fail(self, exc: PushFailed) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.future.done():
            self.future.set_exception(exc)

    def expire(self) -> None:
        self.fail(PushTimeout(f"no answer within {self.timeout:g} s"))
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.exchange = None
            connection.close()  # the answer may still come: never read it as another's


class _Connection(asyncio.Protocol):
    """One connection: writes a request, parses its response with httptools."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange | None = None
        self.closed = False
        self.used = False  # has answered a request before: may have been closed while idle
        self.received = False
        self.retry_after: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, exchange: _Exchange) -> None:
        assert self.transport is not None
        exchange.connection = self
        self.exchange = exchange
        self.received = False
        self.retry_after = None
        self.transport.write(exchange.request)

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            exchange, self.exchange = self.exchange, None
            if exchange is not None:
                exchange.fail(PushFailed(f"the endpoint answered a malformed response: {exc}"))
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 11 and name.lower() == b"retry-after":
            self.retry_after = value

    def on_message_complete(self) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is None:
            self.close()  # an answer nobody asked for
            return
        exchange.connection = None
        if exchange.timer is not None:
            exchange.timer.cancel()
        status = self.parser.get_status_code()
        retry_after = self.retry_after  # before release() hands the connection on
        if self.parser.should_keep_alive():
            self.used = True
            self.pool.release(self)
        else:
            self.close()
        if not exchange.future.done():
            if retry_after is not None:
                status = Answer(status, retry_after.decode("latin-1"))
            exchange.future.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        exchange, self.exchange = self.exchange, None
        self.pool.lost(self)
        if exchange is None:
            return
        exchange.connection = None
        if exchange.future.done():
            return
        if self.used and not self.received and not exchange.retried:
            # A kept-alive connection the server had closed: once more on a fresh one.
            exchange.retried = True
            self.pool.dispatch(exchange, fresh=True)
            return
        reason = f": {exc}" if exc else ""
        exchange.fail(PushFailed(f"the endpoint closed the connection before answering{reason}"))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            assert self.transport is not None
            self.transport.close()


class _Pool:
    """The connections to one endpoint, at most ``limit`` of them."""

    def __init__(
        self, host: str, port: int, head: bytes, tls: ssl.SSLContext | None, limit: int
    ) -> None:
        self.host = host
        self.port = port
        self.head = head  # the request line and host header
        self.tls = tls
        self.limit = limit
        self.idle: list[_Connection] = []
        self.open: set[_Connection] = set()
        self.connecting = 0
        self.waiting: deque[_Exchange] = deque()
        self.tasks: set[asyncio.Task[None]] = set()

    def dispatch(self, exchange: _Exchange, *, fresh: bool = False) -> None:
        idle = self.idle
        while idle and not fresh:
            connection = idle.pop()
            if not connection.closed:
                connection.send(exchange)
                return
        if len(self.open) + self.connecting < self.limit:
            self.connecting += 1
            task = asyncio.get_running_loop().create_task(self._connect(exchange))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif fresh:
            self.waiting.appendleft(exchange)
        else:
            self.waiting.append(exchange)

    def release(self, connection: _Connection) -> None:
        """``connection`` answered and stays open: the next waiting push, or idle."""
        waiting = self.waiting
        while waiting:
            exchange = waiting.popleft()
            if not exchange.future.done():
                connection.send(exchange)
                return
        self.idle.append(connection)

    def lost(self, connection: _Connection) -> None:
        self.open.discard(connection)
        self._refill()

    def _refill(self) -> None:
        waiting = self.waiting
        while waiting and waiting[0].future.done():
            waiting.popleft()
        if waiting and len(self.open) + self.connecting < self.limit:
            self.dispatch(waiting.popleft(), fresh=True)

    async def _connect(self, exchange: _Exchange) -> None:
        host, port = self.host, self.port
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(self),
                host,
                port,
                ssl=self.tls,
                server_hostname=host if self.tls else None,
            )
        except OSError as exc:
            self.connecting -= 1
            exchange.fail(PushFailed(f"cannot connect to {host}:{port}: {exc}"))
        else:
            self.connecting -= 1
            if connection.closed:
                exchange.fail(PushFailed("the endpoint closed the connection before answering"))
            else:
                self.open.add(connection)
                if exchange.future.done():  # expired while connecting
                    self.release(connection)
                else:
                    connection.send(exchange)
        self._refill()

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for connection in list(self.open):
            connection.close()
        while self.waiting:
            self.waiting.popleft().fail(PushFailed("the broker is shutting down"))
        self.idle.clear()


class SocketPusher:
    """A keep-alive HTTP/1.1 client for pushes (see the module docstring for why).

    Args:
        max_connections: connections kept open to one endpoint.
    """

    def __init__(self, *, max_connections: int = MAX_CONNECTIONS) -> None:
        self.max_connections = max_connections
        self._pools: dict[str, _Pool] = {}
        self._tls: ssl.SSLContext | None = None
        self._lines: dict[tuple[str, str], bytes] = {}

    def push(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> asyncio.Future[int]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        try:
            pool = self._pools.get(url) or self._pool(url)
            lines = [pool.head, *map(self._line, headers.items())]
        except PushFailed as exc:
            future.set_exception(exc)
            return future
        lines += (b"content-length: %d\r\n\r\n" % len(body), body)
        exchange = _Exchange(b"".join(lines), future, timeout)
        exchange.timer = loop.call_later(timeout, exchange.expire)
        pool.dispatch(exchange)
        return future

    def _pool(self, url: str) -> _Pool:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PushFailed(f"cannot push to {url!r}: not an http(s) URL")
        tls = None
        if parts.scheme == "https":
            self._tls = tls = self._tls or ssl.create_default_context()
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        head = f"POST {path} HTTP/1.1\r\nhost: {parts.netloc}\r\n".encode("latin-1")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        pool = self._pools[url] = _Pool(parts.hostname, port, head, tls, self.max_connections)
        return pool

    def _line(self, header: tuple[str, str]) -> bytes:
        """``name: value\\r\\n``, checked (and remembered: most headers repeat push to push)."""
        line = self._lines.get(header)
        if line is not None:
            return line
        name, value = header
        if not _TOKEN.fullmatch(name) or _NOT_IN_VALUE.search(value):
            raise PushFailed(f"cannot send header {name!r}: not a valid HTTP header")
        try:
            line = f"{name}: {value}\r\n".encode("latin-1")
        except UnicodeEncodeError:
            raise PushFailed(f"cannot send header {name!r}: not latin-1") from None
        if len(self._lines) < _CACHED_LINES:
            self._lines[header] = line
        return line

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
