"""The front door in-process: microseconds per push through ``PushEndpoint``, no server.

A duplicate wrapped push (the hot path) on a prepared ASGI scope carrying the eight headers
Pub/Sub sends to Cloud Run, timed in CPU time of this thread (less moved by other processes
than wall time). ``--against PATH`` times the ``PushEndpoint`` of another ``asgi.py`` (another
checkout's) in the same run, alternating every 500 pushes, so both meet the same load::

    python -m bench.front_door --against ../main/src/homing/asgi.py

Prints the median and minimum of 5 runs of 20,000 pushes each. Not a test: no figure is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from homing import Homing, KeyRing, Signer
from homing.asgi import PushEndpoint
from homing.testing import push_body

Endpoint = Callable[[Any, Any, Any], Awaitable[None]]

PUSHES = 20_000
SLICE = 500
RUNS = 5


class Noop(BaseModel):
    n: int


def _service() -> Homing:
    homing = Homing(signer=Signer(KeyRing.from_string("bench:a-benchmark-secret-long-enough")))
    homing.events.register("bench.noop", Noop)

    @homing.handler(Noop)
    async def noop(event: Noop) -> None:
        return None

    return homing


def _scope(body: bytes) -> dict[str, Any]:
    headers = [
        (b"host", b"service-abc-uc.a.run.app"),
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"authorization", b"Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
        (
            b"user-agent",
            b"APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)",
        ),
        (b"accept-encoding", b"gzip, deflate, br"),
        (b"from", b"noreply@google.com"),
        (b"x-cloud-trace-context", b"105445aa7843bc8bf206b12000100000/1;o=1"),
    ]
    return {"type": "http", "method": "POST", "path": "/events", "headers": headers}


def _load(path: str, homing: Homing) -> Endpoint:
    spec = importlib.util.spec_from_file_location("homing_asgi_against", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    endpoint: Endpoint = module.PushEndpoint(homing)
    return endpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="another asgi.py whose PushEndpoint to time as well")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    homing = _service()
    body = push_body(homing, Noop(n=1), event_id="e-bench")
    scope = _scope(body)
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def send(_: object) -> None:
        return None

    endpoints: dict[str, Endpoint] = {"this tree": PushEndpoint(homing)}
    if args.against:
        endpoints[args.against] = _load(args.against, homing)

    async def pushes(endpoint: Endpoint) -> float:
        started = time.thread_time()
        for _ in range(SLICE):
            await endpoint(scope, receive, send)
        return time.thread_time() - started

    loop = asyncio.new_event_loop()
    for endpoint in endpoints.values():  # the first push runs the handler; then duplicates
        loop.run_until_complete(pushes(endpoint))
    runs: dict[str, list[float]] = {name: [] for name in endpoints}
    for _ in range(RUNS):
        spent = dict.fromkeys(endpoints, 0.0)
        for _ in range(PUSHES // SLICE):
            for name, endpoint in endpoints.items():
                spent[name] += loop.run_until_complete(pushes(endpoint))
        for name in endpoints:
            runs[name].append(spent[name] / PUSHES * 1e6)
    loop.close()
    for name, times in runs.items():
        print(
            f"{name}: median {statistics.median(times):.2f} us/push, min {min(times):.2f} "
            f"({' '.join(f'{t:.2f}' for t in times)})"
        )


if __name__ == "__main__":
    main()
