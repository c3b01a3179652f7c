"""The push endpoint as a FastAPI router (``pip install homing[fastapi]``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter
from starlette.routing import Route

from homing.asgi import PushEndpoint
from homing.ingress import SHAPES, Shape

if TYPE_CHECKING:
    from homing.app import Homing


def push_router(
    homing: Homing, path: str = "/events", *, shapes: tuple[Shape, ...] = SHAPES
) -> APIRouter:
    """An ``APIRouter`` with ``POST path`` serving ``homing``'s push endpoint (``shapes`` only).

    Example::

        app.include_router(push_router(homing))
    """
    router = APIRouter()
    router.routes.append(
        Route(
            path,
            PushEndpoint(homing, shapes=shapes),
            methods=["POST"],
            name="homing_push",
            include_in_schema=False,
        )
    )
    return router
