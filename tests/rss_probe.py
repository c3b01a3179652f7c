"""Run by tests/test_hostile.py in a fresh interpreter: RSS growth over 1,000 refused pushes
with 1 MB attribute names, through one adapter (``asgi`` or ``flask``). Prints MB grown.

A process of its own, so what earlier tests left in the test process (threads, loops,
captured logs) cannot move the figure either way.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys

import orjson
from flask import Flask

from homing import Homing, KeyRing, Signer, build_push
from homing.flask import FlaskHoming
from homing.signing import SIGNATURE
from homing.starlette import push_route
from tests.conftest import OrderPlaced, Recorder

ORDER = OrderPlaced(order_id=1, total_cents=2)


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def main(adapter: str) -> None:
    import httpx
    from starlette.applications import Starlette

    homing = Homing(signer=Signer(KeyRing({"k1": "a-secret-of-enough-length"})))
    homing.events.register("order.placed", OrderPlaced)
    homing.handler(OrderPlaced)(Recorder())
    forged = {**homing.sign(ORDER).attributes, SIGNATURE: "v1:" + "00" * 32}
    data = orjson.dumps(ORDER.model_dump())

    def body(n: int) -> bytes:
        attributes = {**forged, f"{n:07d}" + "n" * (1024 * 1024): "x"}
        return build_push(data, attributes, message_id="m", subscription="s")

    if adapter == "asgi":
        app = Starlette(routes=[push_route(homing, "/events")])
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")

        async def post(n: int) -> int:
            return (await client.post("/events", content=body(n))).status_code
    else:
        flask_app = Flask(__name__)
        FlaskHoming(homing, flask_app)
        test_client = flask_app.test_client()

        async def post(n: int) -> int:
            return test_client.post("/events", data=body(n)).status_code

    for n in range(100):  # the allocator's high-water mark for such requests
        await post(n)
    gc.collect()
    before = rss()
    for n in range(100, 1100):
        assert await post(n) == 400
    gc.collect()
    print((rss() - before) / 1e6)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
