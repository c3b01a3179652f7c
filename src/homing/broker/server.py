"""Serving a broker: the Pub/Sub and Cloud Tasks gRPC APIs on one port, the HTTP side on
another."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import uvicorn

from homing.broker.api import PubSubService
from homing.broker.broker import Broker
from homing.broker.tasks_api import CloudTasksService
from homing.broker.web import create_app

logger = logging.getLogger("homing.broker")


@dataclass(frozen=True, slots=True)
class Addresses:
    """Where a running broker answers."""

    grpc: str
    http: str

    @property
    def certs_url(self) -> str:
        return f"{self.http}/certs"


@contextlib.asynccontextmanager
async def serving(
    broker: Broker, *, host: str = "127.0.0.1", port: int = 8085, http_port: int | None = None
) -> AsyncIterator[Addresses]:
    """Start ``broker`` and serve it; stop both on exit. ``port`` 0 picks a free port."""
    await broker.start()
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 20 * 1024 * 1024),
            ("grpc.max_send_message_length", 20 * 1024 * 1024),
        ]
    )
    server.add_generic_rpc_handlers(PubSubService(broker).handlers())
    assert broker.cloud_tasks is not None  # started above
    server.add_generic_rpc_handlers(CloudTasksService(broker.cloud_tasks).handlers())
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port} for the Pub/Sub API")
    await server.start()
    config = uvicorn.Config(
        create_app(broker, host=host),
        host=host,
        port=bound + 1 if http_port is None else http_port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    web = uvicorn.Server(config)
    web_task = asyncio.create_task(web.serve())
    try:
        while not web.started:
            if web_task.done():
                await web_task
                raise OSError(f"cannot listen on {host}:{config.port} for the web page")
            await asyncio.sleep(0.01)
        http_bound = web.servers[0].sockets[0].getsockname()[1]
        yield Addresses(grpc=f"{host}:{bound}", http=f"http://{_url_host(host)}:{http_bound}")
    finally:
        web.should_exit = True
        with contextlib.suppress(Exception):
            await web_task
        await server.stop(grace=1)
        await broker.aclose()


def _settle_heap() -> None:
    """Keep the garbage collector off the push path, in a process that is only a broker.

    Each push allocates a handful of short-lived objects; with the default thresholds the
    young generation is collected every 700 allocations, and the full collections that follow
    walk the whole start-up heap (grpc, protobuf, the Pub/Sub types): ~10% of the broker's CPU
    under ``bench.broker``. The start-up heap is frozen out of collection and young collections
    come less often; what pushes leave behind is still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def run(path: Path | str, *, host: str, port: int, http_port: int | None) -> None:
    """Serve until SIGINT or SIGTERM (``homing broker``)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serving(Broker(path), host=host, port=port, http_port=http_port) as addresses:
        _settle_heap()
        print(
            f"homing broker: Pub/Sub API on {addresses.grpc} "
            f"(PUBSUB_EMULATOR_HOST={addresses.grpc})\n"
            f"homing broker: Cloud Tasks API on {addresses.grpc} "
            f"(CLOUD_TASKS_EMULATOR_HOST={addresses.grpc})\n"
            f"homing broker: web page and REST view on {addresses.http}/\n"
            f"homing broker: push token certificates on {addresses.certs_url} "
            f"(HOMING_OIDC_CERTS_URL)\n"
            f"homing broker: data in {path}",
            flush=True,
        )
        await stop.wait()
