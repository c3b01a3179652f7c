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
import codecs
import contextlib
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Mapping
from threading import get_ident
from types import EllipsisType
from typing import Any, BinaryIO, Literal, TextIO

import orjson

from homing.escaping import printable
from homing.telemetry.context import TraceContext, _current
from homing.telemetry.project import METADATA_TIMEOUT, cloud_project

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
        # (time, its text) pairs, each replaced whole: threads may format at once.
        self._second: tuple[int, str] = (-1, "")
        self._stamp: tuple[float, str] = (-1.0, "")

    @property
    def project(self) -> str | None:
        """The project named in ``logging.googleapis.com/trace`` (may be set after start)."""
        return self._project

    @project.setter
    def project(self, project: str | None) -> None:
        self._project = project
        self._trace_prefix = f"projects/{project}/traces/" if project else None

    def _time(self, created: float) -> str:
        # RFC 3339 in UTC. The summary lines a loop turn gathers share one time, made once;
        # the part up to the second is made once per second.
        last = self._stamp
        if created == last[0]:
            return last[1]
        second = int(created)
        second_text = self._second
        if second != second_text[0]:
            second_text = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = second_text
        stamp = "%s.%06dZ" % (second_text[1], (created - second) * 1e6)  # noqa: UP031
        self._stamp = (created, stamp)
        return stamp

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
            getattr(record, "homing_trace", ...),  # a summary names its push's trace
        )

    def line(self, *entry: Any, **named: Any) -> str:
        """:meth:`encoded`, as text."""
        return self.encoded(*entry, **named).decode()

    def encoded(
        self,
        levelno: int,
        logger: str,
        message: str,
        created: float,
        fields: Mapping[str, Any] | None = None,
        trace: TraceContext | EllipsisType | None = ...,
    ) -> bytes:
        """One entry, without a ``LogRecord``, in UTF-8 (per-push summaries are written so).

        ``trace`` is the trace the entry belongs to; the current one unless given.
        """
        severity = _SEVERITY.get(levelno) or _severity(levelno)
        stamp = self._time(created)
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
        if trace is ...:
            trace = _current.get()
        if trace is not None:
            if self._trace_prefix is not None:
                entry[TRACE_FIELD] = self._trace_prefix + trace.trace_id
            else:
                entry["trace_id"] = trace.trace_id
            entry[SPAN_FIELD] = trace.span_id
            entry[SAMPLED_FIELD] = trace.sampled
        return orjson.dumps(entry, default=str)


#: The logger of the per-push summary lines (``homing.telemetry.hook``'s).
_PUSH_LOGGER = "homing.push"
#: What a summary's text names itself, in its own words; any other field follows as key=value.
_SUMMARY_FIELDS = frozenset(
    {
        "outcome",
        "status",
        "duration_ms",
        "event_type",
        "event_id",
        "message_id",
        "delivery_attempt",
        "message_age_s",
        "subscription",
    }
)
_BARE = re.compile(r"[^\s\"=]+")


def _value(value: Any) -> str:
    text = str(value)
    return text if _BARE.fullmatch(text) else orjson.dumps(text).decode()


def _summary_text(fields: Mapping[str, Any]) -> str:
    """A push's summary in words, from the fields its JSON line carries (all of them)::

    push done (204): user.name.changed d27d… (message 1, attempt 1) in 23.4 ms,
    age 0.004 s, subscription projects/p/subscriptions/s
    """
    text = f"push {fields['outcome']} ({fields['status']})"
    if "event_type" in fields:
        text += f": {fields['event_type']} {fields.get('event_id')}"
    said = []
    if "message_id" in fields:
        said.append(f"message {fields['message_id']}")
    if "delivery_attempt" in fields:
        attempt = fields["delivery_attempt"]
        said.append(f"attempt {'?' if attempt is None else attempt}")
    if said:
        text += f" ({', '.join(said)})"
    text += f" in {fields['duration_ms']} ms"
    if fields.get("message_age_s") is not None:
        text += f", age {fields['message_age_s']} s"
    if fields.get("subscription"):
        text += f", subscription {fields['subscription']}"
    return text + "".join(
        f" {key}={_value(value)}" for key, value in fields.items() if key not in _SUMMARY_FIELDS
    )


def _with_fields(logger: str, message: str, fields: Mapping[str, Any] | None) -> str:
    """The message with the fields the JSON line would carry beside it."""
    if not fields:
        return message
    if logger == _PUSH_LOGGER and {"outcome", "status", "duration_ms"} <= fields.keys():
        return _summary_text(fields)
    return message + "".join(f" {key}={_value(value)}" for key, value in fields.items())


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value… [trace=…]``: for a terminal.

    A record's ``homing`` fields follow its message, so a line shows what its JSON line
    carries; a push's summary line says all of its fields in words (outcome and status, event
    type and id, message id, attempt, duration, age, subscription) and names its trace.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second: tuple[int, str] = (-1, "")  # replaced whole: threads may format at once

    def format(self, record: logging.LogRecord) -> str:
        return self._traced(super().format(record), getattr(record, "homing_trace", ...))

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "homing", None)
        if isinstance(fields, Mapping) and fields:
            # (record.message is made anew by each formatter's format(): this one's to change)
            record.message = _with_fields(record.name, record.message, fields)
        # The message may carry text a sender chose (a message id, a reason): one line, always.
        # A traceback, appended after this, keeps its own lines.
        return printable(super().formatMessage(record))

    def line(
        self,
        levelno: int,
        logger: str,
        message: str,
        created: float,
        fields: Mapping[str, Any] | None = None,
        trace: TraceContext | EllipsisType | None = ...,
    ) -> str:
        """One line, without a ``LogRecord``: the message and its fields, as :meth:`format`."""
        if fields:
            message = _with_fields(logger, message, fields)
        second = int(created)
        second_text = self._second
        if second != second_text[0]:  # the local time up to the second, made once per second
            second_text = (second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)))
            self._second = second_text
        milliseconds = int((created - second) * 1000)
        name = logging.getLevelName(levelno)
        line = f"{second_text[1]},{milliseconds:03d} {name} {logger}: {printable(message)}"
        return self._traced(line, trace)

    @staticmethod
    def _traced(line: str, trace: TraceContext | EllipsisType | None = ...) -> str:
        if trace is ...:
            trace = _current.get()
        if trace is None:
            return line
        first, newline, rest = line.partition("\n")
        return f"{first} [trace={trace.trace_id}]{newline}{rest}"


class LogHandler(logging.Handler):
    """Writes formatted lines to a stream; the per-push summary lines once per loop turn.

    A log record is written at once (after any summary lines still waiting, so the order
    holds). :meth:`summary` writes an entry without making a ``LogRecord``; on an event loop's
    thread summaries are gathered and written together, with one write, as soon as the loop
    has run what is ready: under load many pushes share one write, and one time stamp (when
    they are written, within the loop turn that answered them). Only that loop's thread
    touches the gathered lines, so gathering takes no lock. On a UTF-8 text stream (stderr,
    stdout) the lines go to its binary buffer, as the formatter encoded them.
    """

    def __init__(self, stream: TextIO, formatter: CloudLoggingFormatter | TextFormatter) -> None:
        super().__init__()
        self.stream = stream
        self.setFormatter(formatter)
        self.line = formatter.line
        # The JSON formatter makes bytes (orjson's); a text line is encoded here.
        self.encoded = getattr(formatter, "encoded", None) or self._encoded_line
        # Summaries gathered this loop turn, formatted when written: (level, logger, message,
        # fields, trace).
        self._pending: list[tuple[int, str, str, Mapping[str, Any], Any]] = []
        self._checked: TextIO | None = None  # the stream _buffer was found for
        self._buffer: BinaryIO | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # whose thread gathers lines
        self._thread: int | None = None  # that loop's thread

    def emit(self, record: logging.LogRecord) -> None:
        # Written at once: a process may be killed right after (uvicorn re-raises SIGTERM once
        # it has logged its shutdown), and nothing gathered would be written then.
        try:
            line = self.format(record)
            if self._pending and self._thread == get_ident():
                self._write_pending()
            self.stream.write(line + "\n")
            self.stream.flush()
        except Exception:
            self.handleError(record)

    def summary(
        self,
        levelno: int,
        logger: str,
        message: str,
        fields: Mapping[str, Any],
        trace: TraceContext | EllipsisType | None = ...,
    ) -> None:
        """Write one entry (unless below this handler's level); never raises.

        ``trace`` is the trace the entry belongs to; the current one unless given.
        """
        if levelno < self.level:
            return
        try:
            entry = (levelno, logger, message, fields, _current.get() if trace is ... else trace)
            loop = self._loop
            # The quick test first: asyncio's own (get_running_loop) costs a getpid() system
            # call on Python 3.11, on every push.
            if loop is not None and self._thread == get_ident() and loop.is_running():
                self._pending.append(entry)
                return
            with self._lock():
                loop = asyncio._get_running_loop()
                if loop is not None and (self._loop is None or not self._loop.is_running()):
                    # (lines a stopped loop left unwritten go out with this loop's)
                    self._loop, self._thread = loop, get_ident()
                    loop.call_soon(self._write_pending)
                if loop is not None and loop is self._loop:
                    self._pending.append(entry)
                    return
                # Another thread, or another loop's.
                line = self.line(levelno, logger, message, time.time(), fields, entry[4])
                self.stream.write(line + "\n")
                self.stream.flush()
        except Exception:  # logging failing must never fail a push
            sys.stderr.write("homing: could not write a log line\n")

    def _write_pending(self) -> None:
        """Write the gathered entries (on the gathering loop's thread, or once it has stopped)."""
        self._loop = None
        if not self._pending:
            return
        entries, self._pending = self._pending, []
        encoded = self.encoded
        created = time.time()
        lines = []
        for levelno, logger, message, fields, trace in entries:
            try:
                lines.append(encoded(levelno, logger, message, created, fields, trace))
            except Exception:  # one entry that cannot be written never costs the others
                failed = f"homing: could not write a log line ({message[:200]!r})"
                lines.append(failed.encode("utf-8", "backslashreplace"))
        lines.append(b"")
        data = b"\n".join(lines)
        with self._lock():
            stream = self.stream
            if stream is not self._checked:
                self._checked, self._buffer = stream, _utf8_buffer(stream)
            if self._buffer is None:
                stream.write(data.decode("utf-8", "backslashreplace"))
                stream.flush()
            else:
                stream.flush()  # what was written to the text layer goes first
                self._buffer.write(data)
                self._buffer.flush()

    def _encoded_line(self, *entry: Any) -> bytes:
        return self.line(*entry).encode("utf-8", "backslashreplace")

    def flush(self) -> None:
        # logging.shutdown() calls this at exit, after the loop has stopped.
        loop = self._loop
        if loop is None or not loop.is_running() or asyncio._get_running_loop() is loop:
            self._write_pending()
        with self._lock():
            self.stream.flush()

    def _lock(self) -> Any:
        return self.lock if self.lock is not None else contextlib.nullcontext()


def _utf8_buffer(stream: TextIO) -> BinaryIO | None:
    """The binary buffer under a UTF-8 text stream (``sys.stderr``), or ``None``."""
    buffer = getattr(stream, "buffer", None)
    encoding = getattr(stream, "encoding", None)
    if buffer is None or not isinstance(encoding, str):
        return None
    try:
        return buffer if codecs.lookup(encoding).name == "utf-8" else None
    except LookupError:
        return None


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
    environ: Mapping[str, str] | None = None,
    metadata_timeout: float = METADATA_TIMEOUT,
) -> LogHandler:
    """Send the root logger's records to ``stream`` (stderr) in the chosen format.

    Replaces the root logger's handlers (so a line is never written twice) and returns the
    one it installs. Call it once at start-up, from the service's entry point.

    Cloud Logging's JSON names each line's trace as ``projects/P/traces/T``. Without
    ``project`` on Cloud Run (``K_SERVICE`` set in ``environ``, default ``os.environ``), the
    project is read from the metadata server (:func:`~homing.telemetry.project.cloud_project`):
    once, waiting ``metadata_timeout`` seconds at most; a failure is one WARNING line, and the
    lines then carry the trace id alone. Off Cloud Run nothing is asked.
    """
    env = os.environ if environ is None else environ
    formatter: CloudLoggingFormatter | TextFormatter = (
        CloudLoggingFormatter(project)
        if resolve_format(log_format, env) == "json"
        else TextFormatter()
    )
    handler = LogHandler(stream or sys.stderr, formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if isinstance(formatter, CloudLoggingFormatter) and not project:
        # Asked with the handler installed, so a failure's line is in the service's format.
        formatter.project = cloud_project(None, env, timeout=metadata_timeout)
    return handler
