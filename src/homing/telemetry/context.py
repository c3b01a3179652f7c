"""Trace context: W3C ``traceparent`` and Cloud Run's ``X-Cloud-Trace-Context``, parsed strictly.

The context of the work under way (a request, or a push continuing its publisher's trace) lives
in a context variable, set by :class:`TraceContextMiddleware` for requests and by homing's
telemetry hook for pushes; log lines and published events read it from there. Anything
malformed or oversized parses to ``None``: a new trace starts, nothing fails.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from homing.http import Receive, Scope, Send

#: The signed message attribute carrying the publisher's trace context (W3C ``traceparent``).
TRACEPARENT_ATTRIBUTE = "homing-traceparent"
#: google-cloud-pubsub's attribute for the same, when its OpenTelemetry tracing is on.
CLIENT_TRACEPARENT_ATTRIBUTE = "googclient_traceparent"

_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_MAX_CLOUD_TRACE = 128  # "32 hex/20 digits;o=1" is 58 at most; anything much longer is refused


class TraceContext:
    """One span's place in a trace: 32-hex trace id, 16-hex span id, and the sampled flag."""

    __slots__ = ("sampled", "span_id", "trace_id")

    def __init__(self, trace_id: str, span_id: str, sampled: bool = True) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled

    @property
    def traceparent(self) -> str:
        """The W3C ``traceparent`` header value (version 00)."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def child(self) -> TraceContext:
        """A new span in the same trace."""
        return TraceContext(self.trace_id, new_span_id(), self.sampled)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TraceContext)
            and other.trace_id == self.trace_id
            and other.span_id == self.span_id
            and other.sampled == self.sampled
        )

    def __hash__(self) -> int:
        return hash((self.trace_id, self.span_id, self.sampled))

    def __repr__(self) -> str:
        return f"TraceContext({self.traceparent!r})"


def new_span_id() -> str:
    return secrets.token_hex(8)


def new_trace() -> TraceContext:
    """A fresh root context (random ids, sampled)."""
    return TraceContext(secrets.token_hex(16), new_span_id(), True)


def _is_hex(text: str) -> bool:
    return _HEX.issuperset(text)


# version-traceid-spanid-flags, lower-case hex only (what the W3C spec allows); matched at the
# start, the length rules are checked apart. One C call: this runs on every traced push.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


# What every publisher writes today (version 00, flags 00 or 01), read without the general rules.
_TRACEPARENT_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-0([01])")


def parse_traceparent(value: str | None) -> TraceContext | None:
    """A W3C ``traceparent`` (``00-<32 hex>-<16 hex>-<2 hex>``), or ``None`` if it is not one.

    A later version is read by its first 55 characters, as the W3C spec asks; version ``ff``,
    upper-case hex and all-zero ids are refused.
    """
    if value is None:
        return None
    if len(value) == 55 and (common := _TRACEPARENT_00.fullmatch(value)) is not None:
        trace_id, span_id, sampled = common.groups()
        if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
            return None
        return TraceContext(trace_id, span_id, sampled == "1")
    if not 55 <= len(value) <= 512:
        return None
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "00":
        if len(value) != 55:
            return None
    elif version == "ff" or (len(value) > 55 and value[55] != "-"):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceContext(trace_id, span_id, bool(int(flags, 16) & 1))


def parse_cloud_trace(value: str | None) -> TraceContext | None:
    """Cloud Run's ``X-Cloud-Trace-Context`` (``TRACE_ID/SPAN_ID;o=OPTIONS``), or ``None``.

    The span id is decimal there; it is returned in hex, as W3C and OpenTelemetry write it.
    """
    if value is None or len(value) > _MAX_CLOUD_TRACE:
        return None
    trace_id, slash, rest = value.partition("/")
    if not slash or len(trace_id) != 32:
        return None
    trace_id = trace_id.lower()
    if not _is_hex(trace_id) or trace_id == _ZERO_TRACE:
        return None
    span, _, options = rest.partition(";")
    if not span.isdigit() or not span.isascii() or len(span) > 20:
        return None
    span_number = int(span)
    if not 0 < span_number < 2**64:
        return None
    sampled = True
    if options:
        if options == "o=0":
            sampled = False
        elif options != "o=1":
            return None
    return TraceContext(trace_id, f"{span_number:016x}", sampled)


_current: ContextVar[TraceContext | None] = ContextVar("homing_trace", default=None)


def current_trace() -> TraceContext | None:
    """The trace context of the request or push being handled, if any."""
    return _current.get()


def set_current_trace(context: TraceContext | None) -> Any:
    """Make ``context`` current; returns a token for :func:`reset_current_trace`."""
    return _current.set(context)


def reset_current_trace(token: Any) -> None:
    _current.reset(token)


class TraceContextMiddleware:
    """ASGI middleware: make the request's trace context current while it is handled.

    Reads ``traceparent`` (W3C), else ``X-Cloud-Trace-Context`` (Cloud Run's load balancer sets
    both); a request with neither, or with malformed ones, starts a new trace. Events published
    while handling it carry the context, and log lines name its trace::

        app.add_middleware(TraceContextMiddleware)
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = None
        cloud = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                context = parse_traceparent(value.decode("latin-1"))
            elif name == b"x-cloud-trace-context":
                cloud = value
        if context is None and cloud is not None:
            context = parse_cloud_trace(cloud.decode("latin-1"))
        token = _current.set(context or new_trace())
        try:
            await self.app(scope, receive, send)
        finally:
            _current.reset(token)
