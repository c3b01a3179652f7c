"""The Prometheus metrics on a port of their own, bound to the loopback interface.

Metrics tell event volumes by type, so they are not for the public port. Nobody scrapes a
Cloud Run service from outside: Managed Service for Prometheus runs a sidecar in the same
instance, which scrapes over the instance's loopback network, and OpenTelemetry pushes. A
port on ``127.0.0.1`` is reachable by that sidecar and by nothing outside the instance (Cloud
Run routes requests only to the service's own port), with no secret to hand out or rotate.

The server runs on the service's event loop, owned by its lifespan (``Homing.from_env`` starts
it with ``HOMING_METRICS_PORT``), so a scrape reads the counters on the thread that writes
them. HTTP/1.1 is parsed by ``h11`` (httpx's own parser); keep-alive connections are served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Self

import h11
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from homing.errors import ConfigurationError
from homing.telemetry.metrics import PrometheusMetrics

#: Only the loopback interface: the point of the port is that nothing outside reaches it.
HOST = "127.0.0.1"
#: Seconds a connection may stay idle (a scraper keeps one open between scrapes).
IDLE_TIMEOUT = 120.0
_READ_SIZE = 16384

logger = logging.getLogger("homing")


class MetricsServer:
    """Serves ``metrics`` as Prometheus text on ``http://127.0.0.1:PORT/metrics``.

    ``GET`` and ``HEAD`` of ``path`` answer the metrics; another path is 404, another method
    405, a malformed request 400. Nothing it serves is counted.

    Args:
        metrics: what to serve.
        port: the loopback port (``0``: one the system picks, then in :attr:`port`).
        path: where the metrics are.

    Example::

        async with MetricsServer(metrics, port=9464):
            ...  # the service runs; the sidecar scrapes 127.0.0.1:9464/metrics
    """

    def __init__(self, metrics: PrometheusMetrics, *, port: int, path: str = "/metrics") -> None:
        self.metrics = metrics
        self.port = port
        self.path = path.encode("ascii")
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """Where the metrics are served."""
        return f"http://{HOST}:{self.port}{self.path.decode()}"

    async def start(self) -> None:
        """Listen on the loopback port.

        Raises:
            ConfigurationError: the port cannot be listened on (taken, or not allowed).
        """
        if self._server is not None:
            return
        try:
            self._server = await asyncio.start_server(self._serve, HOST, self.port)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve the metrics on {HOST}:{self.port}: {exc.strerror or exc}"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        """Stop listening and close the open connections."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- one connection -----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        connection = h11.Connection(h11.SERVER)
        try:
            await self._converse(connection, reader, writer)
        except h11.RemoteProtocolError:
            if connection.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(Exception):
                    await self._respond(connection, writer, 400, b"bad request\n", head=False)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # a scrape that fails never takes the service with it
            logger.exception("the metrics server failed to answer a request")
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _converse(
        self,
        connection: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        request: h11.Request | None = None
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(_READ_SIZE), IDLE_TIMEOUT)
                connection.receive_data(data)  # b"" says the peer closed
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                await self._answer(connection, writer, request)
                if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                    return
                connection.start_next_cycle()
                request = None
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            # (h11.Data: a request body, read and dropped)

    async def _answer(
        self, connection: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request
    ) -> None:
        head = request.method == b"HEAD"
        if request.target.partition(b"?")[0] != self.path:
            await self._respond(connection, writer, 404, b"not found\n", head=head)
        elif request.method not in (b"GET", b"HEAD"):
            await self._respond(
                connection, writer, 405, b"method not allowed\n", head=False, allow=True
            )
        else:
            body = self.metrics.render()
            await self._respond(
                connection, writer, 200, body, head=head, content_type=CONTENT_TYPE_LATEST
            )

    @staticmethod
    async def _respond(
        connection: h11.Connection,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        *,
        head: bool,
        content_type: str = "text/plain; charset=utf-8",
        allow: bool = False,
    ) -> None:
        headers = [
            ("content-type", content_type),
            ("content-length", str(len(body))),
            ("cache-control", "no-store"),
        ]
        if allow:
            headers.append(("allow", "GET, HEAD"))
        data = connection.send(h11.Response(status_code=status, headers=headers)) or b""
        if not head:
            data += connection.send(h11.Data(data=body)) or b""
        data += connection.send(h11.EndOfMessage()) or b""
        writer.write(data)
        await writer.drain()
