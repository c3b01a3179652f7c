"""The push endpoint as a FastAPI router (``pip install homing[fastapi]``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter
from starlette.routing import Route

from homing.asgi import PushEndpoint

if TYPE_CHECKING:
    from homing.app import Homing


def push_router(homing: Homing, path: str = "/events") -> APIRouter:
    """An ``APIRouter`` with ``POST path`` serving ``homing``'s push endpoint.

    Example::

        app.include_router(push_router(homing))
    """
    router = APIRouter()
    router.routes.append(
        Route(
            path,
            PushEndpoint(homing),
            methods=["POST"],
            name="homing_push",
            include_in_schema=False,
        )
    )
    return router
