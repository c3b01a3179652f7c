"""``python -m users_api``: serve the reference service (``make run``)."""

from __future__ import annotations

import logging
import sys

import uvicorn

from homing.asgi import PushEndpoint, PushFastPath
from homing.errors import HomingError
from homing.telemetry import configure_logging
from users_api.app import ServiceConfig, create_app


def _pool_errors_in_one_line(record: logging.LogRecord) -> bool:
    """SQLAlchemy's pool logs a connection it could not reset with a traceback. When the
    database goes away that is expected, and the requests say so already: one line will do."""
    if record.name.startswith("sqlalchemy.pool") and record.exc_info:
        error = record.exc_info[1]
        record.msg, record.args = f"{record.getMessage()}: {type(error).__name__}: {error}", ()
        record.exc_info, record.exc_text = None, None
    return True


def main() -> int:
    try:
        config = ServiceConfig.from_env()
    except HomingError as exc:
        sys.stderr.write(f"users_api: error: {exc}\n")
        return 2
    # Cloud Logging's JSON lines on Cloud Run (or HOMING_LOG_FORMAT=json), text elsewhere.
    handler = configure_logging(config.homing.log_format, project=config.homing.project)
    handler.addFilter(_pool_errors_in_one_line)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per loopback POST is noise
    try:
        app = create_app(config)
    except HomingError as exc:
        sys.stderr.write(f"users_api: error: {exc}\n")
        return 2
    logging.getLogger("users_api").info(
        "serving the reference service on http://%s:%d (POST /events is the push endpoint)",
        config.host,
        config.port,
    )
    # The served configuration is the fast one: uvloop and httptools when installed
    # ("auto"), and no per-request access log.
    # POST /events skips FastAPI's routing and middleware: it needs none of it.
    served = PushFastPath(app, PushEndpoint(app.state.homing), path="/events")
    uvicorn.run(
        served,
        host=config.host,
        port=config.port,
        loop="auto",
        http="auto",
        access_log=False,
        log_level="info",
        log_config=None,  # uvicorn's lines go through the root logger's format too
        timeout_graceful_shutdown=8,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
