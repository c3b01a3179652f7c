"""Run by a fresh venv's Python that holds only the built wheel (tests/release/test_dist.py).

Imports homing and the module each installed extra brings, builds a service there, and makes a
signed push through it over httpx's ASGI transport, then the same push again (a redelivery).
Prints what it saw as JSON; the test asserts on it.

    python push_in_venv.py DIRECTORY [EXTRA...]
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

import homing
from homing import DedupeStore, Homing, KeyRing, MemoryPublisher, Signer
from homing.asgi import PushEndpoint

#: The module that each extra makes importable.
EXTRA_MODULES = {
    "pubsub": "homing.publishers.pubsub",
    "sql": "homing.stores.sql",
    "flask": "homing.flask",
    "metrics": "homing.telemetry.metrics",
    "otel": "homing.telemetry.otel",
    "fastapi": "homing.fastapi",
    "server": "uvicorn",
    "tasks": "homing.publishers.cloudtasks",
    "django": "homing.django",
}


class Pinged(BaseModel):
    n: int


async def push(directory: Path, extras: list[str]) -> dict[str, Any]:
    dedupe: DedupeStore | None = None
    engine: Any = None
    if "sql" in extras:
        from homing.stores.sql import SQLDedupeStore, create_engine, create_tables

        engine = create_engine(f"sqlite+aiosqlite:///{directory}/homing.db")
        await create_tables(engine)
        dedupe = SQLDedupeStore(engine)
    publisher = MemoryPublisher()
    service = Homing(
        signer=Signer(KeyRing.from_string("k1:a-secret-of-enough-length")),
        publisher=publisher,
        dedupe=dedupe,
    )
    service.events.register("pinged", Pinged)
    handled: list[int] = []

    @service.handler(Pinged)
    async def record(event: Pinged) -> None:
        handled.append(event.n)

    app: Any
    if "fastapi" in extras:
        from fastapi import FastAPI

        from homing.fastapi import push_router

        app = FastAPI()
        app.include_router(push_router(service))
    else:  # the core alone: the plain ASGI endpoint, no framework installed
        app = PushEndpoint(service)

    await service.publish(Pinged(n=7))
    [(message_id, message)] = publisher.messages
    body = publisher.envelope(message_id, message)
    statuses = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://venv") as client:
        for _ in range(2):
            response = await client.post(
                "/events", content=body, headers={"content-type": "application/json"}
            )
            statuses.append(response.status_code)
    if engine is not None:
        await engine.dispose()
    return {"statuses": statuses, "handled": handled}


def main() -> None:
    directory, extras = Path(sys.argv[1]), sys.argv[2:]
    imported = [importlib.import_module(EXTRA_MODULES[extra]).__name__ for extra in extras]
    seen = asyncio.run(push(directory, extras))
    seen |= {
        "version": homing.__version__,
        "metadata_version": importlib.metadata.version("homing"),
        "location": homing.__file__,
        "imported": imported,
    }
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
