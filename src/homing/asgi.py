"""The push endpoint as a plain ASGI app, mountable in any ASGI framework."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from homing.errors import PayloadTooLarge
from homing.ingress import SHAPES, Shape
from homing.ingress.cloudevents import is_structured
from homing.publishers.loopback import LoopbackPublisher

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    from homing.app import Homing

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]

_JSON = (b"content-type", b"application/json")


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
            await _respond(send, 405, {"outcome": "method_not_allowed"}, [(b"allow", b"POST")])
            return
        declared_length = authorization = None
        marked = False  # a header of another shape than the wrapped push
        for name, value in scope["headers"]:  # one pass: this is every push's path
            first = name[0]  # an int compare first: most names are none of these
            if first == 99:  # c
                if name == b"content-length":
                    declared_length = value
                elif name == b"content-type":
                    if value != b"application/json":  # Google's, byte for byte, when wrapped
                        marked = marked or is_structured(value.decode("latin-1"))
                elif name.startswith(b"ce-"):
                    marked = True
            elif first == 97:  # a
                if name == b"authorization":
                    authorization = value.decode("latin-1")
            elif first == 120 and name.startswith(b"x-goog-"):  # x
                marked = True
        limit = self.homing.max_body_size
        try:
            # Refused before reading when the declared length is over the limit; counted as it
            # arrives otherwise (a chunked body declares none). The server has already refused
            # a malformed length.
            if (
                declared_length is not None
                and declared_length.isdigit()
                and int(declared_length) > limit
            ):
                raise PayloadTooLarge(f"the body is larger than {limit} bytes")
            message = await receive()
            body = message.get("body", b"")
            if len(body) > limit:
                raise PayloadTooLarge(f"the body is larger than {limit} bytes")
            if message.get("more_body", False):  # the body came in pieces: read the rest
                body = await _read_rest(receive, body, limit)
        except PayloadTooLarge as exc:
            self.homing.refused(exc)  # logged and counted like any other push
            await _respond(send, exc.status_code, {"outcome": exc.code, "detail": exc.detail})
            return
        # The wrapped push, the common case, needs no headers but the two read above.
        headers = _headers(scope["headers"]) if marked else None
        result = await self.homing.handle_push(
            body, headers, authorization=authorization, shapes=self.shapes
        )
        if result.status == 204:
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        payload = {"outcome": result.outcome}
        if result.detail:
            payload["detail"] = result.detail
        await _respond(send, result.status, payload)


def _headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    # Repeated names are joined as HTTP folds them (RFC 9110 5.3): a repeated attribute header
    # then fails its signature rather than one copy being picked.
    headers: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("latin-1"), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


async def _read_rest(receive: Receive, first: bytes, limit: int) -> bytes:
    chunks = [first]
    size = len(first)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _respond(
    send: Send,
    status: int,
    payload: dict[str, str],
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = orjson.dumps(payload)
    headers = [_JSON, (b"content-length", str(len(body)).encode())]
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
