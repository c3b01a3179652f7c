"""The service the Django tests name in ``settings.HOMING["APP"]``: built from the settings."""

from __future__ import annotations

from pydantic import BaseModel

from homing import Homing
from homing.django import build


class Ping(BaseModel):
    n: int


def create() -> Homing:
    homing = build()
    homing.events.register("test.ping", Ping)

    @homing.handler(Ping)
    async def pong(event: Ping) -> None:
        return None

    return homing
