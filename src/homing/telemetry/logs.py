"""Log lines: Cloud Logging's structured JSON on Cloud Run, readable text elsewhere.

Cloud Run sends each line a container writes to stdout or stderr to Cloud Logging, and a line
that is a JSON object becomes a structured entry: ``severity``, ``message``, and
``logging.googleapis.com/trace`` (``projects/P/traces/T``) with ``.../spanId`` put the entry
under its request in Cloud Trace. Both formatters name the current trace
(:func:`homing.telemetry.context.current_trace`), and add the fields a record carries in its
``homing`` attribute (``logger.info(..., extra={"homing": {...}})``).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
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

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            message += "\n" + record.exc_text
        entry: dict[str, Any] = {
            "severity": _severity(record.levelno),
            "message": message,
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        trace = current_trace()
        if trace is not None:
            if self._trace_prefix is not None:
                entry[TRACE_FIELD] = self._trace_prefix + trace.trace_id
            else:
                entry["trace_id"] = trace.trace_id
            entry[SPAN_FIELD] = trace.span_id
            entry[SAMPLED_FIELD] = trace.sampled
        fields = getattr(record, "homing", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                entry.setdefault(key, value)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message [trace=…]``: for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        trace = current_trace()
        if trace is None:
            return line
        first, newline, rest = line.partition("\n")
        return f"{first} [trace={trace.trace_id}]{newline}{rest}"


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
) -> logging.Handler:
    """Send the root logger's records to ``stream`` (stderr) in the chosen format.

    Replaces the root logger's handlers (so a line is never written twice) and returns the
    one it installs. Call it once at start-up, from the service's entry point.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    if resolve_format(log_format) == "json":
        handler.setFormatter(CloudLoggingFormatter(project))
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
