"""The push endpoint as a Django view: async under ASGI, and served under WSGI too.

It answers exactly as :class:`homing.asgi.PushEndpoint` does: the status of
:meth:`homing.Homing.handle_push`'s result, a JSON body ``{"outcome", "detail"}`` (none with
204), 413 for a body over ``homing.max_body_size`` (refused before it is read whole), 405 with
``Allow: POST`` for other methods. CSRF does not apply (a push is authenticated by its token and
signature), nor ``ATOMIC_REQUESTS`` (homing opens its own transactions).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import orjson
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from homing.app import Homing
from homing.django import config
from homing.errors import PayloadTooLarge
from homing.ingress import SHAPES, Shape
from homing.outcome import PushResult
from homing.publishers.loopback import LoopbackPublisher

View = Callable[[HttpRequest], Awaitable[HttpResponse]]

_CHUNK = 65536


def push_view(homing: Homing | None = None, *, shapes: tuple[Shape, ...] = SHAPES) -> View:
    """The push endpoint for ``homing`` (default: the configured service, loaded on first use).

    Example (``urls.py``)::

        urlpatterns = [path("events", push_view())]   # or include("homing.django.urls")
    """

    async def push(request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            response = _json(405, {"outcome": "method_not_allowed"})
            response["Allow"] = "POST"
            return response
        target = homing if homing is not None else config.service()
        _tell_loopback(target, request)
        limit = target.max_body_size
        try:
            body = _read(request, limit)
        except PayloadTooLarge as exc:
            return _answer(target.refused(exc))  # logged and seen by the hooks
        headers = {name.lower(): value for name, value in request.headers.items()}
        result = await config.loop.submit(_handle(target, body, headers, shapes))
        return _answer(result)

    view: View = csrf_exempt(push)
    # ATOMIC_REQUESTS does not wrap it: homing opens its own transactions.
    setattr(view, "_non_atomic_requests", _EveryDatabase())  # noqa: B010 - Django's attribute
    return view


class _EveryDatabase(set[str]):
    """The databases whose ``ATOMIC_REQUESTS`` the push view opts out of: all of them."""

    def __contains__(self, alias: object) -> bool:
        return True


async def _handle(
    homing: Homing, body: bytes, headers: dict[str, str], shapes: tuple[Shape, ...]
) -> PushResult:
    await config.started(homing)
    return await homing.handle_push(body, headers, shapes=shapes)


def _read(request: HttpRequest, limit: int) -> bytes:
    """The body, refused as soon as it is known to exceed ``limit`` bytes."""
    too_large = PayloadTooLarge(f"the body is larger than {limit} bytes")
    declared = request.META.get("CONTENT_LENGTH")
    if declared and str(declared).isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while chunk := request.read(min(_CHUNK, limit + 1 - size)):  # a read may be short
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise too_large
    return b"".join(chunks)


def _tell_loopback(homing: Homing, request: HttpRequest) -> None:
    publisher = homing.publisher
    if isinstance(publisher, LoopbackPublisher) and publisher.endpoint is None:
        host = str(request.META.get("SERVER_NAME") or "127.0.0.1")
        port = request.get_port()
        if port.isdigit():
            publisher.serving_at(request.scheme or "http", host, int(port), request.path)


def _answer(result: PushResult) -> HttpResponse:
    if result.status == 204:
        return HttpResponse(status=204)
    payload = {"outcome": result.outcome}
    if result.detail:
        payload["detail"] = result.detail
    return _json(result.status, payload)


def _json(status: int, payload: Mapping[str, str]) -> HttpResponse:
    return HttpResponse(orjson.dumps(payload), status=status, content_type="application/json")
