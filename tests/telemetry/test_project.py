"""The project from the metadata server: read once on Cloud Run, through google-auth's helpers,
from a fake metadata server on 127.0.0.1 (``GCE_METADATA_HOST``)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from homing.telemetry import TraceContext, configure_logging
from homing.telemetry.context import reset_current_trace, set_current_trace
from homing.telemetry.project import PROJECT_PATH, cloud_project

TRACE = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)


class MetadataServer(ThreadingHTTPServer):
    """Answers ``GET /computeMetadata/v1/...`` with what a test sets in ``answer``:
    ``(status, content type or None, body)``, or ``"hang"`` (no answer until released)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _MetadataHandler)
        self.answer: tuple[int, str | None, bytes] | str = (200, "application/text", b"proj-7")
        self.seen: list[tuple[str, str | None]] = []  # (path, Metadata-Flavor)
        self.released = threading.Event()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _MetadataHandler(BaseHTTPRequestHandler):
    server: MetadataServer

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("metadata-flavor")))
        answer = self.server.answer
        if answer == "hang":
            self.server.released.wait(30)
            return
        assert not isinstance(answer, str)
        status, content_type, body = answer
        self.send_response(status)
        if content_type is not None:
            self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def metadata() -> Iterator[MetadataServer]:
    server = MetadataServer()
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="fake-metadata", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.released.set()
        server.shutdown()
        server.server_close()
        thread.join()


def _on_cloud_run(server: MetadataServer) -> dict[str, str]:
    return {"K_SERVICE": "users-api", "GCE_METADATA_HOST": server.host}


def _lookups_finished() -> None:
    """Wait for a lookup that outlived its wait to end (it may still log, then)."""
    for thread in threading.enumerate():
        if thread.name == "homing-metadata-project":
            thread.join(10)


def _warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    _lookups_finished()
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_on_cloud_run_the_project_comes_from_the_metadata_server(
    metadata: MetadataServer, caplog: pytest.LogCaptureFixture
) -> None:
    assert cloud_project(None, _on_cloud_run(metadata)) == "proj-7"
    assert metadata.seen == [(f"/computeMetadata/v1/{PROJECT_PATH}", "Google")]
    assert _warned(caplog) == []


def test_off_cloud_run_nothing_is_asked(
    metadata: MetadataServer, caplog: pytest.LogCaptureFixture
) -> None:
    assert cloud_project(None, {"GCE_METADATA_HOST": metadata.host}) is None
    assert cloud_project(None, {"K_SERVICE": "", "GCE_METADATA_HOST": metadata.host}) is None
    assert cloud_project("mine", _on_cloud_run(metadata)) == "mine"  # known: not asked
    assert metadata.seen == []
    assert _warned(caplog) == []


def test_a_hanging_metadata_server_delays_start_up_by_the_timeout_at_most(
    metadata: MetadataServer, caplog: pytest.LogCaptureFixture
) -> None:
    metadata.answer = "hang"
    started = time.monotonic()
    assert cloud_project(None, _on_cloud_run(metadata), timeout=0.5) is None
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 1.5
    metadata.released.set()
    [warning] = _warned(caplog)  # one line, even once google-auth's own attempt has failed
    assert "could not read the Google Cloud project from the metadata server" in warning
    assert "set GOOGLE_CLOUD_PROJECT" in warning


def test_a_failing_metadata_server_is_one_warning(
    metadata: MetadataServer, caplog: pytest.LogCaptureFixture
) -> None:
    metadata.answer = (500, "text/plain", b"internal error\nsecond line")
    started = time.monotonic()
    assert cloud_project(None, _on_cloud_run(metadata), timeout=1.0) is None
    assert time.monotonic() - started < 2.0
    [warning] = _warned(caplog)  # google-auth's "unavailable on attempt 1 of 1" is not written
    assert "500" in warning
    assert "\n" not in warning
    assert len(metadata.seen) == 1  # asked once: no retries at start-up


@pytest.mark.parametrize(
    "answer",
    [
        (200, "text/html", b"<html><body>Welcome to nginx!</body></html>"),
        (200, "application/json", b'{"project": "proj-7"'),  # cut short
        (200, "application/json", b'{"project": "proj-7"}'),  # not the project id itself
        (200, None, b"proj-7"),  # no content type
        (200, "application/text", b"proj 7; drop table"),
        (200, "application/text", b"p" * 10_000),
        (200, "application/text", b""),
        (404, "text/plain", b"not found"),
    ],
    ids=["html", "broken-json", "json-object", "no-type", "not-an-id", "huge", "empty", "404"],
)
def test_garbage_from_the_metadata_server_is_one_warning(
    metadata: MetadataServer,
    caplog: pytest.LogCaptureFixture,
    answer: tuple[int, str | None, bytes],
) -> None:
    metadata.answer = answer
    started = time.monotonic()
    assert cloud_project(None, _on_cloud_run(metadata), timeout=1.0) is None
    assert time.monotonic() - started < 2.0
    [warning] = _warned(caplog)
    assert "could not read the Google Cloud project" in warning
    assert len(warning) < 600
    assert "\n" not in warning


@contextlib.contextmanager
def root_logger_restored() -> Iterator[None]:
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


def _traced_line(stream: io.StringIO) -> dict[str, Any]:
    token = set_current_trace(TRACE)
    try:
        logging.getLogger("svc").info("in a trace")
    finally:
        reset_current_trace(token)
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    return next(e for e in entries if e["message"] == "in a trace")


def test_configure_logging_on_cloud_run_names_the_project_in_the_trace(
    metadata: MetadataServer,
) -> None:
    stream = io.StringIO()
    with root_logger_restored():
        configure_logging("auto", stream=stream, environ=_on_cloud_run(metadata))
        entry = _traced_line(stream)
    assert entry["logging.googleapis.com/trace"] == f"projects/proj-7/traces/{TRACE.trace_id}"
    assert metadata.seen == [(f"/computeMetadata/v1/{PROJECT_PATH}", "Google")]


def test_configure_logging_goes_on_without_a_project_after_one_warning_line(
    metadata: MetadataServer,
) -> None:
    metadata.answer = (500, "text/plain", b"no")
    stream = io.StringIO()
    with root_logger_restored():
        configure_logging(
            "auto", stream=stream, environ=_on_cloud_run(metadata), metadata_timeout=1.0
        )
        _lookups_finished()
        entry = _traced_line(stream)
    assert entry["trace_id"] == TRACE.trace_id
    assert "logging.googleapis.com/trace" not in entry
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    [warning] = [e for e in entries if e["severity"] == "WARNING"]
    assert warning["logger"] == "homing"
    assert "set GOOGLE_CLOUD_PROJECT" in warning["message"]


def test_configure_logging_asks_nothing_when_told_or_off_cloud_run(
    metadata: MetadataServer,
) -> None:
    stream = io.StringIO()
    with root_logger_restored():
        configure_logging("json", stream=stream, environ={"GCE_METADATA_HOST": metadata.host})
        configure_logging("json", project="given", stream=stream, environ=_on_cloud_run(metadata))
        assert _traced_line(stream)["logging.googleapis.com/trace"].startswith("projects/given/")
        # Text lines name no project: on Cloud Run with HOMING_LOG_FORMAT=text nothing is asked.
        configure_logging("text", stream=stream, environ=_on_cloud_run(metadata))
    assert metadata.seen == []
