"""The Google Cloud project that log lines name, read from the metadata server on Cloud Run.

Cloud Logging links an entry to its trace only by the full ``projects/P/traces/T`` name, and
on Cloud Run ``GOOGLE_CLOUD_PROJECT`` is set only when the user sets it. The metadata server
knows the project: :func:`cloud_project` asks it once, at start-up, through google-auth's own
metadata helpers (which honour ``GCE_METADATA_HOST``), and never off Cloud Run.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping

from homing.escaping import printable

#: How long start-up waits for the metadata server, at most.
METADATA_TIMEOUT = 2.0
#: Where the metadata server keeps the project id (under ``/computeMetadata/v1/``).
PROJECT_PATH = "project/project-id"
# A project id: 6-30 of [a-z0-9-], starting with a letter, not ending with "-"; an old
# domain-scoped project has its domain in front ("example.com:my-project").
_PROJECT_ID = re.compile(r"(?:[a-z0-9][a-z0-9.-]{0,62}:)?[a-z][a-z0-9-]{4,28}[a-z0-9]")
# The variables google-auth reads for the metadata server's host (google.auth.environment_vars),
# read here at each call, where google-auth reads them once, when it is imported.
_HOST_VARIABLES = ("GCE_METADATA_HOST", "GCE_METADATA_ROOT")
# google-auth's metadata helpers log a WARNING of their own for each failed attempt.
_GOOGLE_LOGGER = "google.auth.compute_engine._metadata"

logger = logging.getLogger("homing")


def cloud_project(
    project: str | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    timeout: float = METADATA_TIMEOUT,
) -> str | None:
    """The Google Cloud project: ``project`` when given, else the metadata server's on Cloud Run.

    Off Cloud Run (``K_SERVICE`` unset) no request is made and the answer is ``None``. On Cloud
    Run the metadata server is asked once, and start-up waits ``timeout`` seconds at most: a
    server that hangs, fails or answers something that is not a project id is one WARNING
    line, and the answer is ``None``.

    Args:
        project: the project already known (``GOOGLE_CLOUD_PROJECT``, ``Settings.project``).
        environ: the environment (default ``os.environ``): ``K_SERVICE``, and
            ``GCE_METADATA_HOST`` for another metadata server (a test's).
        timeout: seconds to wait for the metadata server.
    """
    if project:
        return project
    env = os.environ if environ is None else environ
    if not env.get("K_SERVICE"):
        return None
    return _from_metadata_server(env, timeout)


class _Lookup(threading.Thread):
    """Asks the metadata server on a thread of its own, so start-up can stop waiting."""

    def __init__(self, root: str | None, timeout: float) -> None:
        super().__init__(name="homing-metadata-project", daemon=True)
        self.root = root
        self.timeout = timeout
        self.answer: object = None
        self.error: Exception | None = None
        self.quiet = _OnlyOtherThreads(self)

    def run(self) -> None:
        google_logger = logging.getLogger(_GOOGLE_LOGGER)
        try:
            import requests
            from google.auth.compute_engine import _metadata
            from google.auth.transport.requests import Request

            with requests.Session() as session:
                self.answer = _metadata.get(  # type: ignore[no-untyped-call]
                    Request(session),
                    PROJECT_PATH,
                    root=self.root,
                    timeout=self.timeout,
                    retry_count=1,
                )
        except Exception as exc:  # whatever it is, it is reported once, by the caller
            self.error = exc
        finally:
            # Removed only now: a thread that outlived the wait may still fail, later.
            google_logger.removeFilter(self.quiet)


class _OnlyOtherThreads(logging.Filter):
    def __init__(self, thread: threading.Thread) -> None:
        super().__init__()
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return threading.current_thread() is not self.thread


def _from_metadata_server(env: Mapping[str, str], timeout: float) -> str | None:
    host = next((env[name] for name in _HOST_VARIABLES if env.get(name)), None)
    root = f"http://{host}/computeMetadata/v1/" if host else None  # None: google-auth's own
    lookup = _Lookup(root, timeout)
    logging.getLogger(_GOOGLE_LOGGER).addFilter(lookup.quiet)
    lookup.start()
    lookup.join(timeout)
    answer = lookup.answer
    if lookup.is_alive():
        reason = f"no answer within {timeout:g} s"
    elif lookup.error is not None:
        first_line = str(lookup.error).strip().partition("\n")[0]
        reason = printable(f"{type(lookup.error).__name__}: {first_line}"[:300])
    elif not isinstance(answer, str) or not _PROJECT_ID.fullmatch(answer.strip()):
        reason = "its answer is not a project id"
    else:
        return answer.strip()
    logger.warning(
        "could not read the Google Cloud project from the metadata server (%s): log lines "
        "will not link to their traces in Cloud Logging; set GOOGLE_CLOUD_PROJECT",
        reason,
    )
    return None
