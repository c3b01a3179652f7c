"""The push endpoint as a plain ASGI app, mountable in any ASGI framework."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homing.errors import PayloadTooLarge
from homing.http import (
    Receive,
    Scope,
    Send,
    answer,
    check_declared,
    first_body,
    method_not_allowed,
    push_head,
    read_rest,
    send_answer,
)
from homing.ingress import SHAPES, Shape
from homing.publishers.loopback import LoopbackPublisher

if TYPE_CHECKING:
    from homing.app import Homing

_NOT_ALLOWED = method_not_allowed("POST")


class PushEndpoint:
    """``POST`` a push in any shape Google sends; answered by :meth:`homing.Homing.handle_push`.

    Args:
        homing: the service's events and handlers.
        shapes: the request shapes accepted (by default all: wrapped, unwrapped, cloudevents).

    Bodies larger than ``homing.max_body_size`` are refused with 413 before they are read whole.
    """

    def __init__(self, homing: Homing, *, shapes: tuple[Shape, ...] = SHAPES) -> None:
        self.homing = homing
        self.shapes = shapes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("the homing push endpoint serves HTTP only")
        if scope["method"] != "POST":
            await send_answer(send, _NOT_ALLOWED)
            return
        # A wrapped push, the common case, gets no headers but these two (headers is None).
        content_length, authorization, headers = push_head(scope["headers"])
        homing = self.homing
        limit = homing.max_body_size
        try:
            # (no coroutine of its own for a body in one message, the common case)
            check_declared(content_length, limit)
            message = await receive()
            body = first_body(message, limit)
            if message.get("more_body", False):
                body = await read_rest(receive, body, limit)
        except PayloadTooLarge as exc:
            result = homing.refused(exc)  # logged and counted like any other push
        else:
            result = await homing.handle_push(
                body, headers, authorization=authorization, shapes=self.shapes
            )
        # Sent here rather than through send_answer(): one coroutine less on every push's path.
        status, reply_headers, content = answer(result)
        await send({"type": "http.response.start", "status": status, "headers": reply_headers})
        await send({"type": "http.response.body", "body": content})


class PushFastPath:
    """ASGI middleware: send ``POST path`` straight to the push endpoint, the rest to ``app``.

    The push endpoint needs none of a framework's routing, dependency injection or exception
    middleware; skipping them is most of what separates a FastAPI app's ``/events`` from a bare
    ASGI app under load. Wrap the outermost app::

        app = FastAPI(...)
        ...
        served = PushFastPath(app, PushEndpoint(homing), path="/events")
    """

    def __init__(self, app: Any, endpoint: PushEndpoint, *, path: str = "/events") -> None:
        self.app = app
        self.endpoint = endpoint
        self.path = path
        publisher = endpoint.homing.publisher
        #: A loopback publisher told no URL learns this service's from the first request.
        self._tell = publisher.serving_at if isinstance(publisher, LoopbackPublisher) else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._tell is not None and scope["type"] == "http" and scope.get("server"):
            host, port = scope["server"][:2]
            self._tell(scope.get("scheme", "http"), host, port, self.path)
            self._tell = None
        if scope["type"] == "http" and scope["path"] == self.path and scope["method"] == "POST":
            await self.endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)
