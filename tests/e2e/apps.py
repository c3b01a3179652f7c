"""Small apps the end-to-end tests serve as real processes (``uvicorn tests.e2e.apps:NAME``)."""

from __future__ import annotations

import logging
import os

from pydantic import BaseModel
from starlette.applications import Starlette

from homing import Homing, KeyRing, Retry, Signer

logger = logging.getLogger("tests.e2e.apps")


class Flaky(BaseModel):
    n: int


def always_retry() -> Starlette:
    """Every delivery asks for a retry, so Pub/Sub redelivers until it dead-letters."""
    homing = Homing(signer=Signer(KeyRing.from_string(os.environ["HOMING_SIGNING_KEYS"])))
    homing.events.register("test.flaky", Flaky)

    @homing.handler(Flaky)
    async def fail(event: Flaky) -> None:
        print(f"attempt for event {event.n}", flush=True)
        raise Retry("this handler always asks for a retry")

    return Starlette(routes=[homing.route("/events")])
