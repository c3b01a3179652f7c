"""Log lines: Cloud Logging's structured JSON on Cloud Run, readable text elsewhere.

Cloud Run sends each line a container writes to stdout or stderr to Cloud Logging, and a line
that is a JSON object becomes a structured entry: ``severity``, ``message``, and
``logging.googleapis.com/trace`` (``projects/P/traces/T``) with ``.../spanId`` put the entry
under its request in Cloud Trace. Both formatters name the current trace
(:func:`homing.telemetry.context.current_trace`), and add the fields a record carries in its
``homing`` attribute (``logger.info(..., extra={"homing": {...}})``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Mapping
from typing import Any, Literal, TextIO

import orjson

from homing.telemetry.context import current_trace

LogFormat = Literal["auto", "json", "text"]

#: Python's levels by Cloud Logging's names for them.
_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}
TRACE_FIELD = "logging.googleapis.com/trace"
SPAN_FIELD = "logging.googleapis.com/spanId"
SAMPLED_FIELD = "logging.googleapis.com/trace_sampled"


def _severity(levelno: int) -> str:
    severity = _SEVERITY.get(levelno)
    if severity is not None:
        return severity
    if levelno >= logging.CRITICAL:
        return "CRITICAL"
    if levelno >= logging.ERROR:
        return "ERROR"
    if levelno >= logging.WARNING:
        return "WARNING"
    return "INFO" if levelno >= logging.INFO else "DEBUG"


class CloudLoggingFormatter(logging.Formatter):
    """One JSON object per line, in Cloud Logging's structured format.

    Args:
        project: the Google Cloud project, for the ``logging.googleapis.com/trace`` field
            (Cloud Logging links an entry to its trace only by the full
            ``projects/P/traces/T`` name); without it the trace id is written as ``trace_id``.
    """

    def __init__(self, project: str | None = None) -> None:
        super().__init__()
        self.project = project
        self._trace_prefix = f"projects/{project}/traces/" if project else None
        self._second = -1
        self._second_text = ""

    def _time(self, created: float) -> str:
        # RFC 3339 in UTC; the part up to the second is made once per second.
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1e6):06d}Z"

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            message += "\n" + record.exc_text
        fields = getattr(record, "homing", None)
        return self.line(
            record.levelno,
            record.name,
            message,
            record.created,
            fields if isinstance(fields, Mapping) else None,
        )

    def line(
        self,
        levelno: int,
        logger: str,
        message: str,
        created: float,
        fields: Mapping[str, Any] | None = None,
    ) -> str:
        """One entry, without a ``LogRecord`` (the per-push summary is written this way)."""
        severity, stamp = _severity(levelno), self._time(created)
        entry: dict[str, Any] = {
            "severity": severity,
            "message": message,
            "time": stamp,
            "logger": logger,
        }
        if fields:  # after the core keys, which they may not replace
            entry.update(fields)
            if len(entry) < 4 + len(fields):
                entry.update(severity=severity, message=message, time=stamp, logger=logger)
        trace = current_trace()
        if trace is not None:
            if self._trace_prefix is not None:
                entry[TRACE_FIELD] = self._trace_prefix + trace.trace_id
            else:
                entry["trace_id"] = trace.trace_id
            entry[SPAN_FIELD] = trace.span_id
            entry[SAMPLED_FIELD] = trace.sampled
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message [trace=…]``: for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return self._traced(super().format(record))

    def line(
        self,
        levelno: int,
        logger: str,
        message: str,
        created: float,
        fields: Mapping[str, Any] | None = None,
    ) -> str:
        """One line, without a ``LogRecord`` (the fields are in the message already)."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
        milliseconds = int((created - int(created)) * 1000)
        name = logging.getLevelName(levelno)
        return self._traced(f"{stamp},{milliseconds:03d} {name} {logger}: {message}")

    @staticmethod
    def _traced(line: str) -> str:
        trace = current_trace()
        if trace is None:
            return line
        first, newline, rest = line.partition("\n")
        return f"{first} [trace={trace.trace_id}]{newline}{rest}"


class LogHandler(logging.Handler):
    """Writes formatted lines to a stream; the per-push summary lines once per loop turn.

    A log record is written at once (after any summary lines still waiting, so the order
    holds). :meth:`summary` writes an entry without making a ``LogRecord``; on the event loop's
    thread summaries are gathered and written together, with one flush, as soon as the loop
    has run what is ready: under load many pushes share one write.
    """

    def __init__(self, stream: TextIO, formatter: CloudLoggingFormatter | TextFormatter) -> None:
        super().__init__()
        self.stream = stream
        self.setFormatter(formatter)
        self.line = formatter.line
        self._pending: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        # Written at once: a process may be killed right after (uvicorn re-raises SIGTERM once
        # it has logged its shutdown), and nothing gathered would be written then.
        try:
            line = self.format(record)
            if self._pending:
                self.flush()
            self.stream.write(line + "\n")
            self.stream.flush()
        except Exception:
            self.handleError(record)

    def summary(self, levelno: int, logger: str, message: str, fields: Mapping[str, Any]) -> None:
        """Write one entry (unless below this handler's level); never raises."""
        if levelno < self.level:
            return
        try:
            line = self.line(levelno, logger, message, time.time(), fields)
            with self.lock:  # type: ignore[union-attr]  # made by Handler.__init__
                self._write(line)
        except Exception:  # logging failing must never fail a push
            sys.stderr.write("homing: could not write a log line\n")

    def _write(self, line: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or (self._loop is not None and self._loop is not loop):
            self.flush()
            with self._lock():
                self.stream.write(line + "\n")
                self.stream.flush()
            return
        self._pending.append(line)
        if self._loop is None:
            self._loop = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self._loop = None
        with self._lock():
            if not self._pending:
                return
            lines, self._pending = self._pending, []
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()

    def _lock(self) -> Any:
        return self.lock if self.lock is not None else contextlib.nullcontext()


def installed_handler() -> LogHandler | None:
    """The :class:`LogHandler` on the root logger, if :func:`configure_logging` put one there."""
    return next((h for h in logging.getLogger().handlers if isinstance(h, LogHandler)), None)


def resolve_format(log_format: LogFormat, environ: Mapping[str, str] | None = None) -> str:
    """``json`` on Cloud Run (``K_SERVICE`` set) or when asked, else ``text``."""
    if log_format != "auto":
        return log_format
    env = os.environ if environ is None else environ
    return "json" if env.get("K_SERVICE") else "text"


def configure_logging(
    log_format: LogFormat = "auto",
    *,
    project: str | None = None,
    level: int = logging.INFO,
    stream: TextIO | None = None,
) -> LogHandler:
    """Send the root logger's records to ``stream`` (stderr) in the chosen format.

    Replaces the root logger's handlers (so a line is never written twice) and returns the
    one it installs. Call it once at start-up, from the service's entry point.
    """
    formatter: CloudLoggingFormatter | TextFormatter = (
        CloudLoggingFormatter(project) if resolve_format(log_format) == "json" else TextFormatter()
    )
    handler = LogHandler(stream or sys.stderr, formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
