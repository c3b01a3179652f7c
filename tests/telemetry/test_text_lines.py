"""``make run`` shows what production shows: a text line carries what its JSON line carries."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from homing import Homing, KeyRing, MemoryPublisher, Signer, build_push
from homing.telemetry import (
    CloudLoggingFormatter,
    LogHandler,
    Telemetry,
    TextFormatter,
    TraceContext,
)
from homing.telemetry.context import reset_current_trace, set_current_trace
from tests.conftest import OrderPlaced

TRACE = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)
SUBSCRIPTION = "projects/p/subscriptions/orders-push"
#: The JSON line's own keys, not the record's fields.
CORE = {"severity", "message", "time", "logger"}


def _service(log: LogHandler | None = None) -> Homing:
    homing = Homing(signer=Signer(KeyRing.generate()), publisher=MemoryPublisher())
    homing.events.register("order.placed", OrderPlaced)

    @homing.handler(OrderPlaced)
    async def handle(event: OrderPlaced) -> None:
        if event.order_id < 0:
            raise RuntimeError("handler bug")

    homing.hooks.append(Telemetry(homing.events, log_duplicates=True, log=log))
    return homing


async def _pushes(homing: Homing) -> None:
    """A push of each kind: handled, duplicate, failing, refused."""
    token = set_current_trace(TRACE)
    try:
        for order_id in (1, -1):
            await homing.publish(OrderPlaced(order_id=order_id, total_cents=5))
    finally:
        reset_current_trace(token)
    assert isinstance(homing.publisher, MemoryPublisher)
    (first_id, first), (failing_id, failing) = homing.publisher.messages
    handled = build_push(
        first.data,
        first.attributes,
        message_id=first_id,
        subscription=SUBSCRIPTION,
        publish_time="2020-01-01T00:00:00Z",
        delivery_attempt=3,
    )
    assert (await homing.handle_push(handled)).outcome == "done"
    assert (await homing.handle_push(handled)).outcome == "duplicate"
    body = build_push(failing.data, failing.attributes, message_id=failing_id, subscription="s")
    assert (await homing.handle_push(body)).outcome == "handler_failed"
    assert (await homing.handle_push(b'{"message": {"data": ""}}')).outcome == "malformed"


@pytest.fixture
def both_formats() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Each record of the ``homing.push`` logger, as a JSON line and as a text line."""
    streams = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(stream) for stream in streams]
    handlers[0].setFormatter(CloudLoggingFormatter("proj"))
    handlers[1].setFormatter(TextFormatter())
    push_logger = logging.getLogger("homing.push")
    level = push_logger.level
    push_logger.setLevel(logging.DEBUG)
    for handler in handlers:
        push_logger.addHandler(handler)
    try:
        yield streams
    finally:
        for handler in handlers:
            push_logger.removeHandler(handler)
        push_logger.setLevel(level)


def _rendered(value: Any) -> str:
    return "?" if value is None else str(value)


async def test_each_text_summary_carries_every_field_of_its_json_line(
    both_formats: tuple[io.StringIO, io.StringIO],
) -> None:
    await _pushes(_service())
    json_stream, text_stream = both_formats
    entries = [json.loads(line) for line in json_stream.getvalue().splitlines()]
    texts = text_stream.getvalue().splitlines()
    assert [e["outcome"] for e in entries] == ["done", "duplicate", "handler_failed", "malformed"]
    assert len(texts) == len(entries)
    for entry, text in zip(entries, texts, strict=True):
        fields = {k: v for k, v in entry.items() if k not in CORE and "googleapis" not in k}
        assert {"outcome", "status", "duration_ms"} <= fields.keys()
        for key, value in fields.items():
            assert _rendered(value) in text, (key, text)
        if "logging.googleapis.com/trace" in entry:
            assert text.endswith(f" [trace={entry['logging.googleapis.com/trace'][-32:]}]")

    done = texts[0]
    assert "INFO homing.push: push done (204): order.placed " in done
    assert "(message 1, attempt 3) in " in done
    assert f" ms, age {entries[0]['message_age_s']} s, subscription {SUBSCRIPTION} " in done
    assert done.endswith(f" [trace={TRACE.trace_id}]")
    assert texts[2].split(": ", 1)[1].startswith("push handler_failed (500): order.placed ")
    assert "WARNING homing.push: push malformed (400) in " in texts[3]


async def test_the_summary_written_straight_to_the_handler_says_the_same(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="homing.push")  # (the hook asks that logger)
    stream = io.StringIO()
    handler = LogHandler(stream, TextFormatter())
    await _pushes(_service(log=handler))
    handler.flush()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    done = lines[0]
    assert " INFO homing.push: push done (204): order.placed " in done
    assert "(message 1, attempt 3) in " in done
    assert f", subscription {SUBSCRIPTION} [trace={TRACE.trace_id}]" in done
    assert ", age " in done
    assert " INFO homing.push: push duplicate (204): " in lines[1]
    assert " WARNING homing.push: push handler_failed (500): " in lines[2]
    assert "(message 2, attempt ?)" in lines[2]
    assert ", subscription s [trace=" in lines[2]


def test_a_summary_line_in_words() -> None:
    fields = {
        "outcome": "done",
        "status": 204,
        "duration_ms": 23.422,
        "event_type": "user.name.changed",
        "event_id": "d27dffdf3fd04b599c2a9b440df6df4a",
        "message_id": "1",
        "delivery_attempt": 1,
        "subscription": "projects/p/subscriptions/s",
        "message_age_s": 0.004,
        "new_field": "a value",
    }
    line = TextFormatter().line(logging.INFO, "homing.push", "ignored", 0.0, fields, TRACE)
    assert line.split(" ", 2)[2] == (
        "INFO homing.push: push done (204): user.name.changed d27dffdf3fd04b599c2a9b440df6df4a "
        "(message 1, attempt 1) in 23.422 ms, age 0.004 s, subscription "
        'projects/p/subscriptions/s new_field="a value" '
        f"[trace={TRACE.trace_id}]"
    )


def test_fields_a_sender_chose_stay_on_one_line() -> None:
    fields = {
        "outcome": "done",
        "status": 204,
        "duration_ms": 1.0,
        "event_type": "order.placed",
        "event_id": "e1",
        "message_id": "m\nWARNING forged",
        "delivery_attempt": None,
        "subscription": "s\r\x1b[2J",
    }
    line = TextFormatter().line(logging.INFO, "homing.push", "", 0.0, fields, None)
    assert "\n" not in line
    assert "\r" not in line
    assert "\x1b" not in line
    assert "(message m\\x0aWARNING forged, attempt ?)" in line


def test_other_records_show_their_fields_after_the_message() -> None:
    record = logging.LogRecord("svc", logging.INFO, __file__, 1, "flushed %d", (3,), None)
    record.homing = {"outbox": "users", "reason": "two words", "count": 3}
    line = TextFormatter().format(record)
    assert line.endswith('INFO svc: flushed 3 outbox=users reason="two words" count=3')
