"""``homing broker``: the local push broker on its own, and :func:`child_broker`, which runs it
as a child process (``homing dev``, the conformance suite and the benchmarks do).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from homing.errors import HomingError

logger = logging.getLogger("homing.dev")

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_command(commands: Any) -> None:
    """Add ``broker`` to the ``homing`` command's subparsers."""
    broker = commands.add_parser(
        "broker",
        help="serve the local push broker (the Pub/Sub API for PUBSUB_EMULATOR_HOST)",
        description="Serve Pub/Sub topics and push subscriptions on this machine, durable in "
        "--data: the Pub/Sub gRPC API on --port, the web page, REST view and push token "
        "certificates on --http-port.",
    )
    broker.add_argument("--host", default="127.0.0.1", help="address to listen on")
    broker.add_argument("--port", type=int, default=8085, help="Pub/Sub API port (0: any)")
    broker.add_argument(
        "--http-port", type=int, help="web page and REST port (default: --port + 1; 0: any)"
    )
    broker.add_argument(
        "--data",
        default="homing-broker.sqlite3",
        help="the SQLite file (default: homing-broker.sqlite3; ':memory:' keeps nothing)",
    )
    broker.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    broker.set_defaults(run=_broker)


def _broker(args: argparse.Namespace) -> int:
    from homing.broker.server import run

    if args.host not in _LOOPBACK:
        logger.warning(
            "the broker's web page and API have no authentication, and listen on %s: "
            "anyone who can reach it can publish and replay",
            args.host,
        )
    if args.exit_with_parent:
        _exit_with_parent()
    # The standard loop: grpc.aio's server did not deliver under uvloop when tried.
    asyncio.run(run(args.data, host=args.host, port=args.port, http_port=args.http_port))
    return 0


def _exit_with_parent() -> None:
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)  # the owner is gone (even by kill -9): do not linger

    threading.Thread(target=watch, daemon=True, name="homing-broker-parent").start()


@contextmanager
def child_broker(data: str, *, host: str = "127.0.0.1") -> Iterator[dict[str, str]]:
    """Run ``homing broker`` as a child; yield its ``grpc`` and ``http`` addresses."""
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            "-m",
            "homing.cli",
            "broker",
            "--host",
            host,
            "--port",
            "0",
            "--http-port",
            "0",
            "--data",
            data,
            "--exit-with-parent",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    forwarding: threading.Thread | None = None
    try:
        assert process.stdout is not None
        found: dict[str, str] = {}
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while len(found) < 2:
            line = process.stdout.readline()
            if not line:
                raise HomingError(
                    f"the broker exited (status {process.wait()}) before it served: "
                    + "".join(lines)[-2000:]
                )
            lines.append(line)
            if "Pub/Sub API on " in line:
                found["grpc"] = line.split("Pub/Sub API on ")[1].split()[0]
            if "web page and REST view on " in line:
                found["http"] = line.split("REST view on ")[1].split()[0].rstrip("/")
            if time.monotonic() > deadline:
                raise HomingError("the broker did not start within 60 s")
        for line in lines:
            sys.stderr.write(line)
        forwarding = threading.Thread(
            target=_forward, args=(process.stdout,), daemon=True, name="homing-broker-output"
        )
        forwarding.start()
        yield found
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if forwarding is not None:
            forwarding.join(5)  # to the end of what the broker wrote
        if process.stdout is not None:
            process.stdout.close()


def _forward(stream: Any) -> None:
    for line in stream:
        sys.stderr.write(line)
