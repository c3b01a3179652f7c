"""The HTTP edge every adapter shares: what a push's headers say, a bounded body read, and the
answer as a status, headers and body.

Framework-free, so the ASGI endpoint (:mod:`homing.asgi`), the Flask blueprint
(:mod:`homing.flask`), the Django view (:mod:`homing.django`), the outbox's flush route and the
metrics route all answer through it and cannot diverge. Headers are handled as ASGI gives
them: lower-case names and values as bytes (a WSGI adapter encodes its text back as latin-1,
as WSGI decoded it: :func:`raw_headers`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, NamedTuple, Protocol

import orjson

from homing.errors import PayloadTooLarge
from homing.ingress.cloudevents import is_structured
from homing.outcome import PushResult

__all__ = [
    "NO_CONTENT",
    "Answer",
    "Message",
    "RawHeaders",
    "Readable",
    "Receive",
    "Scope",
    "Send",
    "answer",
    "check_declared",
    "first_body",
    "fold_headers",
    "json_answer",
    "method_not_allowed",
    "push_head",
    "raw_headers",
    "read_rest",
    "read_stream",
    "send_answer",
]

#: The ASGI callables, typed once for every ASGI app homing ships.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Request headers as ASGI gives them: (lower-case name, value) byte pairs.
RawHeaders = Sequence[tuple[bytes, bytes]]

#: Headers that mark an unwrapped push (``x-goog-pubsub-*``) or a Cloud Tasks request.
_X_MARKS = (b"x-goog-", b"x-cloudtasks-")
#: JSON's content type: every answer's with a body, and the wrapped push's as Google sends it.
_JSON = b"application/json"


class Answer(NamedTuple):
    """An HTTP answer: the status, the headers (as ASGI sends them) and the body."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


def json_answer(
    status: int,
    payload: Mapping[str, object],
    *,
    allow: str | None = None,
    retry_after: int | None = None,
) -> Answer:
    """``payload`` as a JSON answer; ``allow`` adds the ``Allow`` header (for a 405),
    ``retry_after`` the ``Retry-After`` header (seconds)."""
    body = orjson.dumps(payload)
    headers: tuple[tuple[bytes, bytes], ...] = (
        (b"content-type", _JSON),
        (b"content-length", b"%d" % len(body)),
    )
    if allow is not None:
        headers += ((b"allow", allow.encode("latin-1")),)
    if retry_after is not None:
        headers += ((b"retry-after", b"%d" % retry_after),)
    return Answer(status, headers, body)


#: The answer to a push that was handled, or acknowledged as a duplicate.
NO_CONTENT = Answer(204, (), b"")


def answer(result: PushResult) -> Answer:
    """The answer to a push: 204 without a body, or ``{"outcome": ..., "detail": ...}``."""
    if result.status == 204:
        return NO_CONTENT
    payload = {"outcome": result.outcome}
    if result.detail:
        payload["detail"] = result.detail
    return json_answer(result.status, payload, retry_after=result.retry_after)


def method_not_allowed(allow: str) -> Answer:
    """405 ``{"outcome": "method_not_allowed"}``, with ``Allow: <allow>``."""
    return json_answer(405, {"outcome": "method_not_allowed"}, allow=allow)


def push_head(
    raw: RawHeaders,
) -> tuple[bytes | None, str | None, dict[str, str] | None]:
    """What the front door reads from a push's headers, in one pass.

    Returns:
        The declared ``Content-Length`` (raw bytes, or ``None``), the ``Authorization`` header,
        and the headers folded as text (:func:`fold_headers`) when any of them marks a shape
        other than the wrapped push; ``None`` for a wrapped push, which needs no others.
    """
    content_length = authorization = None
    marked = False
    for name, value in raw:
        # Every push's path. The first byte is compared before the whole name: one int compare
        # (``b"c"[0]`` is folded to a constant when compiled) passes over most names at once.
        initial = name[0]
        if initial == b"c"[0]:
            if name == b"content-length":
                content_length = value
            elif name == b"content-type":
                if value != _JSON:
                    marked = marked or is_structured(value.decode("latin-1"))
            elif name.startswith(b"ce-"):  # a binary-mode CloudEvent
                marked = True
        elif initial == b"a"[0]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
        elif initial == b"x"[0] and name.startswith(_X_MARKS):
            marked = True
    return content_length, authorization, fold_headers(raw) if marked else None


def raw_headers(items: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """A WSGI framework's text headers as ASGI gives them: lower-case names, latin-1 bytes.

    (WSGI decoded them as latin-1, so this gives back the bytes that were received.)
    """
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in items]


def fold_headers(raw: RawHeaders) -> dict[str, str]:
    """The headers as text (latin-1), a repeated name's values joined with ``", "``.

    As HTTP folds them (RFC 9110, 5.3): a repeated attribute header then fails its signature
    rather than one copy being picked.
    """
    headers: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("latin-1"), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the body is larger than {limit} bytes")


def check_declared(content_length: bytes | None, limit: int) -> None:
    """Raise :class:`~homing.errors.PayloadTooLarge` when the declared ``Content-Length`` is
    over ``limit``: before anything is read. (A malformed length is the server's to refuse.)"""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise _too_large(limit)


def first_body(message: Message, limit: int) -> bytes:
    """The body an ASGI request's first message carries, checked against ``limit``.

    When ``message["more_body"]`` is set the body is not whole yet: :func:`read_rest` reads
    the rest. A bounded read is then :func:`check_declared`, ``await receive()``, this, and
    :func:`read_rest` when more follows: the common case, a body in one message, costs a push
    no coroutine of its own.
    """
    body: bytes = message.get("body", b"")
    if len(body) > limit:
        raise _too_large(limit)
    return body


async def read_rest(receive: Receive, first: bytes, limit: int) -> bytes:
    """The rest of a body whose first message said ``more_body``, counted against ``limit``.

    A client that disconnects ends the body.
    """
    chunks = [first]
    size = len(first)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


class Readable(Protocol):
    """A WSGI input stream (``wsgi.input``, or a framework's wrapper of it)."""

    def read(self, size: int = -1, /) -> bytes: ...


def read_stream(stream: Readable, limit: int, content_length: bytes | None = None) -> bytes:
    """A WSGI input stream's body, under the same limits as an ASGI body's, read
    synchronously."""
    check_declared(content_length, limit)
    chunks: list[bytes] = []
    size = 0
    # One byte past the limit is asked for, so a body over it is seen; a read may be short.
    while chunk := stream.read(min(65536, limit + 1 - size)):
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def send_answer(send: Send, reply: Answer, *, head: bool = False) -> None:
    """Send ``reply`` on an ASGI connection; ``head`` leaves the body out (a ``HEAD``)."""
    await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
    await send({"type": "http.response.body", "body": b"" if head else reply.body})
