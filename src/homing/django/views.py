"""The push endpoint as a Django view: async under ASGI, and served under WSGI too.

It answers exactly as :class:`homing.asgi.PushEndpoint` does, through the same HTTP edge
(:mod:`homing.http`): the status of
:meth:`homing.Homing.handle_push`'s result, a JSON body ``{"outcome", "detail"}`` (none with
204), 413 for a body over ``homing.max_body_size`` (refused before it is read whole), 405 with
``Allow: POST`` for other methods. CSRF does not apply (a push is authenticated by its token and
signature), nor ``ATOMIC_REQUESTS`` (homing opens its own transactions).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

import homing.django.config as config
from homing.app import Homing
from homing.errors import PayloadTooLarge
from homing.http import Answer, answer, method_not_allowed, push_head, raw_headers, read_stream
from homing.ingress import SHAPES, Shape
from homing.outcome import PushResult
from homing.publishers.loopback import LoopbackPublisher

View = Callable[[HttpRequest], Awaitable[HttpResponse]]

_NOT_ALLOWED = method_not_allowed("POST")


def push_view(homing: Homing | None = None, *, shapes: tuple[Shape, ...] = SHAPES) -> View:
    """The push endpoint for ``homing`` (default: the configured service, loaded on first use).

    Example (``urls.py``)::

        urlpatterns = [path("events", push_view())]   # or include("homing.django.urls")
    """

    async def push(request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return _response(_NOT_ALLOWED)
        target = homing if homing is not None else config.service()
        _tell_loopback(target, request)
        content_length, authorization, headers = push_head(raw_headers(request.headers.items()))
        try:
            body = read_stream(request, target.max_body_size, content_length)
        except PayloadTooLarge as exc:
            return _response(answer(target.refused(exc)))  # logged and seen by the hooks
        result = await config.loop.submit(
            _handle(target, body, headers, authorization=authorization, shapes=shapes)
        )
        return _response(answer(result))

    view: View = csrf_exempt(push)
    # ATOMIC_REQUESTS does not wrap it: homing opens its own transactions.
    setattr(view, "_non_atomic_requests", _EveryDatabase())  # noqa: B010 - Django's attribute
    return view


class _EveryDatabase(set[str]):
    """The databases whose ``ATOMIC_REQUESTS`` the push view opts out of: all of them."""

    def __contains__(self, alias: object) -> bool:
        return True


async def _handle(
    homing: Homing,
    body: bytes,
    headers: dict[str, str] | None,
    *,
    authorization: str | None,
    shapes: tuple[Shape, ...],
) -> PushResult:
    await config.started(homing)
    return await homing.handle_push(body, headers, authorization=authorization, shapes=shapes)


def _tell_loopback(homing: Homing, request: HttpRequest) -> None:
    publisher = homing.publisher
    if isinstance(publisher, LoopbackPublisher) and publisher.endpoint is None:
        host = str(request.META.get("SERVER_NAME") or "127.0.0.1")
        port = request.get_port()
        if port.isdigit():
            publisher.serving_at(request.scheme or "http", host, int(port), request.path)


def _response(reply: Answer) -> HttpResponse:
    response = HttpResponse(reply.body, status=reply.status)
    if not reply.body:  # as from the ASGI endpoint: no Content-Type (Django adds text/html)
        del response["Content-Type"]
    for name, value in reply.headers:
        response[name.decode("latin-1")] = value.decode("latin-1")
    return response
