"""The push endpoint as a Starlette ``Route`` (``pip install homing[asgi]``)."""

from __future__ import annotations

from starlette.routing import Route

from homing.app import Homing
from homing.asgi import PushEndpoint
from homing.ingress import SHAPES, Shape


def push_route(
    homing: Homing, path: str = "/events", *, shapes: tuple[Shape, ...] = SHAPES
) -> Route:
    """A ``Route`` serving ``homing``'s push endpoint at ``path`` (``POST``, ``shapes`` only).

    Example::

        app = Starlette(routes=[push_route(homing)], lifespan=homing.lifespan)
    """
    return Route(path, PushEndpoint(homing, shapes=shapes), methods=["POST"], name="homing_push")
