"""How pushes leave the broker: one small interface, two implementations.

- :class:`HttpxPusher` sends through an ``httpx.AsyncClient`` (the seam tests use, with
  ``httpx.MockTransport``).
- :class:`SocketPusher`, the default, is a keep-alive HTTP/1.1 client on asyncio streams with
  ``httptools`` (uvicorn's parser) reading the responses. It exists for throughput: measured on
  this project's machines, httpx spends ~1.5 ms of CPU per push in its pool and backend layers,
  which capped the broker below the official emulator; this client spends a fraction of that
  (``python -m bench.broker`` measures both brokers).

Both raise :class:`PushFailed` for anything that is not an HTTP answer (refused, reset, a
malformed response), which the delivery loop counts as a nack, like a non-ack status.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import defaultdict, deque
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit

import httptools
import httpx

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_MAX_IDLE = 512


class PushFailed(Exception):
    """Raised when a push got no HTTP answer (refused, reset, garbage)."""


class Pusher(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """POST ``body``; return the response status or raise :class:`PushFailed`."""
        ...

    async def aclose(self) -> None: ...


class HttpxPusher:
    """Pushes through an httpx client."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        try:
            response = await self.client.post(url, content=body, headers=dict(headers))
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise PushFailed(reason) from exc
        return response.status_code

    async def aclose(self) -> None:
        await self.client.aclose()


class _Response(asyncio.Protocol):
    """One connection: writes requests, parses responses with httptools."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiting: asyncio.Future[int] | None = None
        self.closed = False
        self.complete = False
        self.received = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(PushFailed(f"the endpoint answered a malformed response: {exc}"))
            self.close()

    def on_message_complete(self) -> None:
        self.complete = True
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reason = f": {exc}" if exc else ""
        self._fail(PushFailed(f"the endpoint closed the connection before answering{reason}"))

    def _fail(self, exc: Exception) -> None:
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(exc)

    def send(self, request: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self.waiting = asyncio.get_running_loop().create_future()
        self.complete = self.received = False
        self.transport.write(request)
        return self.waiting

    def reusable(self) -> bool:
        return not self.closed and self.complete and self.parser.should_keep_alive()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class SocketPusher:
    """A keep-alive HTTP/1.1 client for pushes (see the module docstring for why)."""

    def __init__(self) -> None:
        self._idle: defaultdict[tuple[str, str, int], deque[_Response]] = defaultdict(deque)
        self._tls: ssl.SSLContext | None = None
        self._requests: dict[str, tuple[tuple[str, str, int], bytes]] = {}

    def _target(self, url: str) -> tuple[tuple[str, str, int], bytes]:
        known = self._requests.get(url)
        if known is not None:
            return known
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PushFailed(f"cannot push to {url!r}: not an http(s) URL")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        head = f"POST {path} HTTP/1.1\r\nhost: {parts.netloc}\r\n".encode("latin-1")
        found = ((parts.scheme, parts.hostname, port), head)
        if len(self._requests) < 1000:
            self._requests[url] = found
        return found

    async def _connect(self, key: tuple[str, str, int]) -> _Response:
        scheme, host, port = key
        tls = None
        if scheme == "https":
            self._tls = self._tls or ssl.create_default_context()
            tls = self._tls
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_connection(
                _Response, host, port, ssl=tls, server_hostname=host if tls else None
            )
        except OSError as exc:
            raise PushFailed(f"cannot connect to {host}:{port}: {exc}") from None
        return protocol

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        key, head = self._target(url)
        lines = [head]
        for name, value in headers.items():
            if not _TOKEN.match(name) or any(c in value for c in "\r\n\0"):
                raise PushFailed(f"cannot send header {name!r}: not a valid HTTP header")
            try:
                lines.append(f"{name}: {value}\r\n".encode("latin-1"))
            except UnicodeEncodeError:
                raise PushFailed(f"cannot send header {name!r}: not latin-1") from None
        lines.append(b"content-length: %d\r\n\r\n" % len(body))
        lines.append(body)
        request = b"".join(lines)
        idle = self._idle[key]
        while idle:
            connection = idle.pop()
            if connection.closed:
                continue
            try:
                return await self._exchange(connection, key, request)
            except PushFailed:
                if connection.received:
                    raise
                # A kept-alive connection the server had closed: once more on a fresh one.
                break
        return await self._exchange(await self._connect(key), key, request)

    async def _exchange(
        self, connection: _Response, key: tuple[str, str, int], request: bytes
    ) -> int:
        try:
            status = await connection.send(request)
        except BaseException:
            connection.close()  # cancelled (the ack deadline) or failed: never reused
            raise
        idle = self._idle[key]
        if connection.reusable() and len(idle) < _MAX_IDLE:
            idle.append(connection)
        else:
            connection.close()
        return status

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
