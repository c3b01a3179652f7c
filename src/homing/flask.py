"""Flask: the push endpoint as a blueprint, and a synchronous ``publish`` (``homing[flask]``).

homing is async; a Flask view is not. :class:`FlaskHoming` runs homing's coroutines on one
event loop in a background thread per process — started lazily, on first use, and started
anew in a process forked after it (gunicorn's workers) — so every request thread of a threaded
server shares it safely, and every async client homing holds (HTTP, Pub/Sub, the database)
lives on that one loop.

Example::

    homing = Homing(signer=Signer(KeyRing.from_string(os.environ["HOMING_SIGNING_KEYS"])),
                    publisher=LoopbackPublisher("http://127.0.0.1:8000/events"))
    app = Flask(__name__)
    events = FlaskHoming(homing, app)          # POST /events

    @app.post("/change-name")
    def change_name():
        event_id = events.publish(UserNameChanged(user_id=7, new_name="Zoe"))  # before answering
        return {"event_id": event_id}
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from flask import Blueprint, Flask, Response, request
from pydantic import BaseModel

from homing.app import Homing
from homing.errors import PayloadTooLarge
from homing.http import Answer, answer, method_not_allowed, push_head, raw_headers, read_stream
from homing.ingress import SHAPES, Shape
from homing.loop import LoopThread

__all__ = ["FlaskHoming", "LoopThread"]  # (LoopThread: homing.loop's, for Flask apps)

T = TypeVar("T")

_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_NOT_ALLOWED = method_not_allowed("POST")


class FlaskHoming:
    """homing in a Flask app: the push endpoint and a synchronous :meth:`publish`.

    Args:
        homing: the service's events, handlers, publisher and stores.
        app: the Flask app; or call :meth:`init_app` later.
        path: where the push endpoint is served.
        shapes: the request shapes accepted (by default all: wrapped, unwrapped, cloudevents).
        timeout: seconds :meth:`publish` waits before raising :class:`TimeoutError`
            (default: no limit of its own; the publisher's timeouts apply).
        loop: the loop thread to run on (default: one of its own).
    """

    def __init__(
        self,
        homing: Homing,
        app: Flask | None = None,
        *,
        path: str = "/events",
        shapes: tuple[Shape, ...] = SHAPES,
        timeout: float | None = None,
        loop: LoopThread | None = None,
    ) -> None:
        self.homing = homing
        self.path = path
        self.shapes = shapes
        self.timeout = timeout
        self.loop = loop or LoopThread()
        self._closed = False
        atexit.register(self.close)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the push endpoint on ``app`` and keep this object in its ``extensions``."""
        app.register_blueprint(self.blueprint())
        app.extensions["homing"] = self

    def blueprint(self, name: str = "homing") -> Blueprint:
        """A blueprint serving the push endpoint at :attr:`path` (``POST``; others get 405)."""
        blueprint = Blueprint(name, __name__)
        blueprint.add_url_rule(
            self.path, "push", self._push_view, methods=_METHODS, provide_automatic_options=False
        )
        return blueprint

    def _push_view(self) -> Response:
        if request.method != "POST":
            return _response(_NOT_ALLOWED)
        # The ASGI endpoint's steps, through the same edge (homing.http), on the same bytes.
        content_length, authorization, headers = push_head(raw_headers(request.headers.items()))
        homing = self.homing
        try:
            body = read_stream(request.stream, homing.max_body_size, content_length)
        except PayloadTooLarge as exc:
            return _response(answer(homing.refused(exc)))  # logged and counted
        result = self.run(
            homing.handle_push(body, headers, authorization=authorization, shapes=self.shapes)
        )
        return _response(answer(result))

    def publish(
        self,
        event: BaseModel,
        *,
        event_id: str | None = None,
        attributes: Mapping[str, str] | None = None,
        ordering_key: str | None = None,
    ) -> str:
        """Sign and publish ``event``; return its event id once the broker has it.

        Safe from any thread. Raises :class:`~homing.errors.PublishFailed` as
        :meth:`homing.Homing.publish` does.
        """
        return self.run(
            self.homing.publish(
                event, event_id=event_id, attributes=attributes, ordering_key=ordering_key
            )
        )

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run any of homing's coroutines (an outbox flush, a replay) and wait for it."""
        return self.loop.run(coroutine, timeout=self.timeout)

    def close(self) -> None:
        """Close the publisher and stores on the loop, then stop the loop (once)."""
        if self._closed or self.loop._pid != os.getpid():
            return
        self._closed = True
        try:
            self.loop.run(self.homing.aclose(), timeout=30)
        finally:
            self.loop.close()


def _response(reply: Answer) -> Response:
    headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in reply.headers]
    response = Response(reply.body, status=reply.status, headers=headers)
    if not reply.body:  # as from the ASGI endpoint: no Content-Type (Flask adds text/html)
        del response.headers["Content-Type"]
    return response
