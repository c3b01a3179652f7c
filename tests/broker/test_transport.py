"""The broker's socket push client, against raw asyncio servers (sockets are the point here)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from homing.broker.transport import Answer, PushFailed, PushTimeout, SocketPusher

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def _server(handle: Serve) -> AsyncIterator[str]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}/events"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


async def test_posts_and_reuses_the_connection() -> None:
    connections = 0
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                seen.append(await _read_request(reader))
            except asyncio.IncompleteReadError:
                break
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        writer.close()

    pusher = SocketPusher()
    async with _server(handle) as url:
        for _ in range(3):
            assert (
                await pusher.push(url, b'{"a":1}', {"content-type": "application/json"}, 5) == 204
            )
        await pusher.aclose()
        await asyncio.sleep(0.05)  # the server sees the end of the connection and closes it
    assert connections == 1
    assert seen[0].startswith(b"POST /events HTTP/1.1\r\n")
    assert b"content-type: application/json\r\n" in seen[0]
    assert seen[0].endswith(b'\r\n\r\n{"a":1}')


@pytest.mark.parametrize(
    ("answer", "failure"),
    [
        (b"", "the endpoint closed the connection before answering"),
        (b"garbage\r\n\r\n", "the endpoint answered a malformed response"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            "the endpoint closed the connection before answering",
        ),
    ],
)
async def test_no_proper_answer_is_a_push_failure(answer: bytes, failure: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(answer)
        writer.close()

    pusher = SocketPusher()
    async with _server(handle) as url:
        with pytest.raises(PushFailed, match=failure):
            await pusher.push(url, b"x", {}, 5)
    await pusher.aclose()


async def test_a_refused_connection_is_a_push_failure() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with _server(handle) as url:
        pass  # closed: nothing listens there any more
    with pytest.raises(PushFailed, match="cannot connect"):
        await SocketPusher().push(url, b"x", {}, 5)


@pytest.mark.parametrize(
    ("name", "value"), [("x-a", "v\r\nx-injected: 1"), ("bad name", "v"), ("x-a", "é✓")]
)
async def test_headers_that_are_not_http_headers_are_refused(name: str, value: str) -> None:
    with pytest.raises(PushFailed, match="cannot send header"):
        await SocketPusher().push("http://127.0.0.1:9/events", b"x", {name: value}, 5)


async def test_pushes_beyond_the_connection_limit_wait_for_a_free_connection() -> None:
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            await asyncio.sleep(0.01)
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        writer.close()

    pusher = SocketPusher(max_connections=2)
    async with _server(handle) as url:
        statuses = await asyncio.gather(*(pusher.push(url, b"x", {}, 5) for _ in range(10)))
        await pusher.aclose()
        await asyncio.sleep(0.05)  # the server sees the end of the connections and closes them
    assert statuses == [204] * 10
    assert connections == 2


async def test_no_answer_within_the_timeout_abandons_the_connection() -> None:
    ended = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await reader.read()  # never answers; returns when the client closes
        ended.set()
        writer.close()

    pusher = SocketPusher()
    async with _server(handle) as url:
        with pytest.raises(PushTimeout, match=r"no answer within 0\.1 s"):
            await pusher.push(url, b"x", {}, 0.1)
        async with asyncio.timeout(5):
            await ended.wait()
    await pusher.aclose()


async def test_an_endpoint_that_hangs_holds_up_no_other_endpoint() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                request = await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            if request.startswith(b"POST /hangs "):
                await reader.read()  # never answers
                break
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        writer.close()

    pusher = SocketPusher(max_connections=2)
    async with _server(handle) as url:
        hanging = url.replace("/events", "/hangs")
        stuck = [pusher.push(hanging, b"x", {}, 5) for _ in range(4)]
        assert await pusher.push(url, b"x", {}, 1) == 204
        await pusher.aclose()
        failed = await asyncio.gather(*stuck, return_exceptions=True)
        assert all(isinstance(exc, PushFailed) for exc in failed)
        await asyncio.sleep(0.05)


async def test_a_retry_after_header_comes_with_the_status() -> None:
    answers = [
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 120\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    ]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await _read_request(reader)
            writer.write(answer)
        writer.close()

    pusher = SocketPusher()
    async with _server(handle) as url:
        busy = await pusher.push(url, b"{}", {}, 5)
        fine = await pusher.push(url, b"{}", {}, 5)  # on the same connection: nothing carried
        await pusher.aclose()
    assert busy == 503
    assert isinstance(busy, Answer)
    assert busy.retry_after == "120"
    assert fine == 200
    assert not isinstance(fine, Answer)
