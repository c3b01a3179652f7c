"""Trace context parsing, and the middleware that makes a request's context current."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from homing.telemetry import (
    TraceContext,
    TraceContextMiddleware,
    current_trace,
    parse_cloud_trace,
    parse_traceparent,
)

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
VALID = f"00-{TRACE}-{SPAN}-01"

TRACEPARENTS = [
    VALID,
    f"00-{TRACE}-{SPAN}-00",
    f"00-{TRACE}-{SPAN}-03",
    f"01-{TRACE}-{SPAN}-01-what-the-future-adds",
    f"cc-{TRACE}-{SPAN}-01",
    f"00-{TRACE}-{SPAN}-01-",  # version 00 has nothing after the flags
    f"ff-{TRACE}-{SPAN}-01",
    f"00-{TRACE.upper()}-{SPAN}-01",
    f"00-{'0' * 32}-{SPAN}-01",
    f"00-{TRACE}-{'0' * 16}-01",
    f"00-{TRACE[:-1]}-{SPAN}-01",
    f"00-{TRACE}-{SPAN}-1",
    f"00_{TRACE}_{SPAN}_01",
    f"00-{TRACE}-{SPAN}-0g",
    f"0x-{TRACE}-{SPAN}-01",
    "",
    "garbage",
]


def test_a_valid_traceparent() -> None:
    assert parse_traceparent(VALID) == TraceContext(TRACE, SPAN, True)
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-00") == TraceContext(TRACE, SPAN, False)
    assert TraceContext(TRACE, SPAN, True).traceparent == VALID


@pytest.mark.parametrize("value", [*TRACEPARENTS[4:], f"01-{TRACE}-{SPAN}-01-" + "x" * 600])
def test_malformed_or_oversized_traceparents_are_none(value: str) -> None:
    if value.startswith("cc-"):  # an unknown later version: read by its first 55 characters
        assert parse_traceparent(value) == TraceContext(TRACE, SPAN, True)
    else:
        assert parse_traceparent(value) is None


@pytest.mark.parametrize("value", TRACEPARENTS)
def test_agrees_with_opentelemetrys_propagator(value: str) -> None:
    """A differential test: the hand-written parser against OpenTelemetry's W3C propagator."""
    extracted = TraceContextTextMapPropagator().extract({"traceparent": value})
    theirs = trace.get_current_span(extracted).get_span_context()
    ours = parse_traceparent(value)
    if not theirs.is_valid:
        assert ours is None
    else:
        assert ours == TraceContext(
            format(theirs.trace_id, "032x"),
            format(theirs.span_id, "016x"),
            theirs.trace_flags.sampled,
        )


def test_cloud_trace_context() -> None:
    assert parse_cloud_trace(f"{TRACE}/1;o=1") == TraceContext(TRACE, "0000000000000001", True)
    assert parse_cloud_trace(f"{TRACE.upper()}/13235353014750950197;o=0") == TraceContext(
        TRACE, "b7ad6b7169203335", False
    )
    assert parse_cloud_trace(f"{TRACE}/42") == TraceContext(TRACE, "000000000000002a", True)


@pytest.mark.parametrize(
    "value",
    [
        "",
        TRACE,
        f"{TRACE}/",
        f"{TRACE}/abc;o=1",
        f"{TRACE}/0;o=1",
        f"{TRACE}/{2**64};o=1",
        f"{TRACE}/1;o=2",
        f"{TRACE}/1;o=1" + " " * 200,
        f"{TRACE[:-2]}/1;o=1",
        f"{'0' * 32}/1;o=1",
        f"{TRACE}/١٢;o=1",  # digits, but not ASCII ones
    ],
)
def test_malformed_cloud_trace_contexts_are_none(value: str) -> None:
    assert parse_cloud_trace(value) is None


async def _seen(headers: dict[str, str]) -> dict[str, str | None]:
    async def show(request: Request) -> JSONResponse:
        context = current_trace()
        assert context is not None
        return JSONResponse({"trace": context.trace_id, "span": context.span_id})

    app = TraceContextMiddleware(Starlette(routes=[Route("/", show)]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/", headers=headers)
    assert current_trace() is None  # the request's context ended with it
    body: dict[str, str | None] = response.json()
    return body


async def test_the_middleware_makes_the_requests_context_current() -> None:
    assert await _seen({"traceparent": VALID}) == {"trace": TRACE, "span": SPAN}
    cloud = {"x-cloud-trace-context": f"{TRACE}/1;o=1"}
    assert await _seen(cloud) == {"trace": TRACE, "span": "0000000000000001"}
    # W3C first when both are sent (Cloud Run sends both, with the same trace).
    assert await _seen({"traceparent": VALID, **cloud}) == {"trace": TRACE, "span": SPAN}


async def test_a_malformed_header_starts_a_new_trace() -> None:
    first = await _seen({"traceparent": f"00-{TRACE}-{SPAN}-01-extra"})
    second = await _seen({"x-cloud-trace-context": "nonsense"})
    assert first["trace"] != TRACE
    assert first["trace"] != second["trace"]
    assert parse_traceparent(f"00-{first['trace']}-{first['span']}-01") is not None


_PIECES = st.sampled_from(["00", "01", "cc", "ff", "0g", "-", TRACE, SPAN, "0" * 32, "0" * 16])


@given(
    st.one_of(
        st.builds(
            "-".join,
            st.tuples(
                st.sampled_from(["00", "01", "cc", "ff", "0A", "0"]),
                st.sampled_from([TRACE, "0" * 32, TRACE.upper(), TRACE[:31]]),
                st.sampled_from([SPAN, "0" * 16, SPAN.upper(), SPAN + "0"]),
                st.one_of(
                    st.sampled_from(["00", "01", "02", "03", "0f", "10"]),
                    st.text("0123456789abcdefAG", min_size=1, max_size=3),
                ),
            ),
        ),
        st.lists(_PIECES, max_size=8).map("".join),
        st.text(max_size=60),
    )
)
def test_agrees_with_opentelemetrys_propagator_on_generated_values(value: str) -> None:
    """The same differential test over generated values: the quick path for version 00 and
    the general rules must give the propagator's answer."""
    test_agrees_with_opentelemetrys_propagator(value)
