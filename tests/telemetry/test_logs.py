"""Log formats: Cloud Logging's JSON, readable text, and choosing between them."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from homing import ConfigurationError, Settings
from homing.telemetry import (
    CloudLoggingFormatter,
    LogHandler,
    TextFormatter,
    TraceContext,
    configure_logging,
)
from homing.telemetry.context import reset_current_trace, set_current_trace
from homing.telemetry.logs import resolve_format

TRACE = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", False)


def _record(level: int, message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("svc", level, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


@pytest.fixture
def in_trace() -> Iterator[TraceContext]:
    token = set_current_trace(TRACE)
    yield TRACE
    reset_current_trace(token)


def test_cloud_logging_fields(in_trace: TraceContext) -> None:
    line = CloudLoggingFormatter("proj").format(
        _record(logging.WARNING, "%d left", 3, homing={"outcome": "done", "severity": "nope"})
    )
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["severity"] == "WARNING"
    assert entry["message"] == "3 left"
    assert entry["logging.googleapis.com/trace"] == f"projects/proj/traces/{TRACE.trace_id}"
    assert entry["logging.googleapis.com/spanId"] == TRACE.span_id
    assert entry["logging.googleapis.com/trace_sampled"] is False
    assert entry["outcome"] == "done"


@pytest.mark.parametrize(
    ("level", "severity"),
    [
        (5, "DEBUG"),
        (logging.INFO, "INFO"),
        (25, "INFO"),
        (logging.ERROR, "ERROR"),
        (60, "CRITICAL"),
    ],
)
def test_severities(level: int, severity: str) -> None:
    assert json.loads(CloudLoggingFormatter().format(_record(level, "x")))["severity"] == severity


def test_without_a_project_the_trace_id_is_its_own_field(in_trace: TraceContext) -> None:
    entry = json.loads(CloudLoggingFormatter().format(_record(logging.INFO, "x")))
    assert entry["trace_id"] == TRACE.trace_id
    assert "logging.googleapis.com/trace" not in entry


def test_outside_a_trace_there_are_no_trace_fields() -> None:
    entry = json.loads(CloudLoggingFormatter("proj").format(_record(logging.INFO, "x")))
    assert not any(key.startswith("logging.googleapis.com") for key in entry)


def test_an_exception_stays_in_one_entry() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("svc", logging.ERROR, __file__, 1, "failed", (), None)
        import sys

        record.exc_info = sys.exc_info()
    line = CloudLoggingFormatter().format(record)
    assert len(line.splitlines()) == 1
    assert "ValueError: boom" in json.loads(line)["message"]


def test_text_names_the_trace(in_trace: TraceContext) -> None:
    line = TextFormatter().format(_record(logging.INFO, "hello"))
    assert line.endswith(f"INFO svc: hello [trace={TRACE.trace_id}]")


def test_the_format_follows_cloud_run() -> None:
    assert resolve_format("auto", {"K_SERVICE": "users-api"}) == "json"
    assert resolve_format("auto", {}) == "text"
    assert resolve_format("json", {}) == "json"
    assert resolve_format("text", {"K_SERVICE": "users-api"}) == "text"


@contextlib.contextmanager
def _root_logger_restored() -> Iterator[None]:
    """``configure_logging`` replaces the root logger's handlers: put them back after."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)


def test_configure_logging_installs_one_handler() -> None:
    stream = io.StringIO()
    with _root_logger_restored():
        configure_logging("json", project="p", stream=stream)
        configure_logging("json", project="p", stream=stream)  # twice: still one line each
        logging.getLogger("svc").info("once")
    [line] = stream.getvalue().splitlines()
    assert json.loads(line)["message"] == "once"


def test_the_log_format_setting() -> None:
    assert Settings.from_env({}).log_format == "auto"
    assert Settings.from_env({"HOMING_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigurationError, match="HOMING_LOG_FORMAT"):
        Settings.from_env({"HOMING_LOG_FORMAT": "xml"})


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def installed() -> Iterator[CountingStream]:
    stream = CountingStream()
    with _root_logger_restored():
        configure_logging("json", project="p", stream=stream)
        yield stream


async def test_summaries_go_straight_to_homings_handler_one_write_per_loop_turn(
    installed: CountingStream,
) -> None:
    from homing import Homing, KeyRing, Signer, build_push
    from homing.telemetry import Telemetry
    from tests.conftest import OrderPlaced, Recorder

    homing = Homing(signer=Signer(KeyRing.generate()))
    homing.events.register("order.placed", OrderPlaced)
    homing.handler(OrderPlaced)(Recorder())
    telemetry = Telemetry(homing.events, log_duplicates=True)  # six lines from one event
    assert telemetry.log is logging.getLogger().handlers[0]  # found on the root logger
    assert homing.signer is not None
    data = b'{"order_id":1,"total_cents":5}'
    body = build_push(
        data, homing.signer.sign(data, "order.placed"), message_id="1", subscription="s"
    )
    homing.hooks.append(telemetry)

    for _ in range(5):  # in one turn of the loop: gathered, not yet written
        await homing.handle_push(body)
    assert installed.writes == 0
    await asyncio.sleep(0)  # the loop turns: one write
    assert installed.writes == 1

    await homing.handle_push(body)
    logging.getLogger("svc").info("a record")  # written at once, after the waiting summary
    assert installed.writes == 3
    entries = [json.loads(line) for line in installed.getvalue().splitlines()]
    assert [e.get("outcome") for e in entries] == ["done", *["duplicate"] * 5, None]
    assert entries[-1]["message"] == "a record"


def _handler() -> LogHandler:
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, LogHandler)
    return handler


def _messages(stream: CountingStream) -> list[str]:
    return [json.loads(line)["message"] for line in stream.getvalue().splitlines()]


def test_a_summary_from_another_thread_is_written_at_once(installed: CountingStream) -> None:
    handler = _handler()

    async def gather_one_then_ask_a_thread() -> None:
        handler.summary(logging.INFO, "homing.push", "on the loop", {})
        assert installed.writes == 0  # gathered for the loop's turn
        thread = threading.Thread(
            target=handler.summary, args=(logging.INFO, "homing.push", "on a thread", {})
        )
        thread.start()
        thread.join()  # (the loop does not turn meanwhile)
        assert _messages(installed) == ["on a thread"]  # written at once, not gathered

    asyncio.run(gather_one_then_ask_a_thread())
    assert sorted(_messages(installed)) == ["on a thread", "on the loop"]


def test_summaries_a_stopped_loop_left_are_written_not_lost(installed: CountingStream) -> None:
    handler = _handler()
    loop = asyncio.new_event_loop()

    async def gather_and_stop() -> None:
        handler.summary(logging.INFO, "homing.push", "left by the first loop", {})
        loop.stop()  # before the turn that would write it; then the loop is closed

    task = loop.create_task(gather_and_stop())
    loop.run_forever()
    loop.close()
    assert task.done()
    assert installed.writes == 0

    async def next_loop() -> None:
        handler.summary(logging.INFO, "homing.push", "the second loop's", {})
        await asyncio.sleep(0)

    asyncio.run(next_loop())
    assert _messages(installed) == ["left by the first loop", "the second loop's"]

    async def last() -> None:
        handler.summary(logging.INFO, "homing.push", "at exit", {})

    asyncio.run(last())  # asyncio.run's own last turns write it...
    handler.flush()  # ...or logging.shutdown() at exit would
    assert _messages(installed)[-1] == "at exit"


def test_outside_an_event_loop_lines_are_written_at_once(installed: CountingStream) -> None:
    logging.getLogger("svc").warning("now")
    assert installed.writes == 1
    assert json.loads(installed.getvalue())["severity"] == "WARNING"


@pytest.mark.parametrize("created", [1_800_000_000.0, 1_800_000_000.999, 1_800_000_061.5005])
def test_a_line_without_a_record_reads_as_one_with(created: float) -> None:
    """The per-push summary skips ``LogRecord``: its time and trace read as a record's do,
    whichever second it falls in (the formatters keep the second's text between lines)."""
    record = _record(logging.WARNING, "slow")
    record.created, record.msecs = created, (created - int(created)) * 1000
    text = TextFormatter()
    for formatter_created in (created - 7, created):  # a line of an earlier second first
        line = text.line(logging.WARNING, "svc", "slow", formatter_created, trace=TRACE)
    assert line == text.format(record) + f" [trace={TRACE.trace_id}]"
    cloud = CloudLoggingFormatter("p")
    cloud.line(logging.WARNING, "svc", "slow", created - 7)
    entry = json.loads(cloud.line(logging.WARNING, "svc", "slow", created, trace=None))
    assert entry == json.loads(cloud.format(record))


def test_on_a_utf8_stream_summaries_go_to_its_buffer_in_order_with_records() -> None:
    """Summary lines are written as the formatter encoded them, to the binary buffer under a
    UTF-8 text stream (as under sys.stderr); what the text layer holds is written first."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", write_through=False)
    with _root_logger_restored():
        handler = configure_logging("json", project="p", stream=stream)

        async def turn() -> None:
            stream.write("a partial line from someone else, ")  # left in the text layer
            handler.summary(logging.INFO, "homing.push", "café ☕", {"outcome": "done"})
            handler.summary(logging.WARNING, "homing.push", "second", {"outcome": "retry"})
            await asyncio.sleep(0)

        asyncio.run(turn())
        logging.getLogger("svc").info("a record")
    lines = raw.getvalue().decode("utf-8").splitlines()
    assert lines[0].startswith("a partial line from someone else, {")
    first = json.loads(lines[0].removeprefix("a partial line from someone else, "))
    second, record = json.loads(lines[1]), json.loads(lines[2])
    assert first["message"] == "café ☕"
    assert [second["severity"], second["outcome"]] == ["WARNING", "retry"]
    assert first["time"] == second["time"]  # one loop turn's lines share its time
    assert record["message"] == "a record"


def test_a_stream_in_another_encoding_gets_text() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="latin-1")
    with _root_logger_restored():
        handler = configure_logging("text", stream=stream)

        async def turn() -> None:
            handler.summary(logging.INFO, "homing.push", "café", {})
            await asyncio.sleep(0)

        asyncio.run(turn())
    assert raw.getvalue().endswith("INFO homing.push: café\n".encode("latin-1"))
