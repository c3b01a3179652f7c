"""``python -m users_api``: serve the reference service (``make run``)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Mapping

import uvicorn
from sqlalchemy.exc import SQLAlchemyError

from homing.asgi import PushEndpoint, PushFastPath
from homing.errors import ConfigurationError, HomingError
from homing.stores.sql import create_engine, create_tables
from homing.telemetry import CloudLoggingFormatter, configure_logging
from users_api.app import ServiceConfig, create_app
from users_api.db import Base


def _pool_errors_in_one_line(record: logging.LogRecord) -> bool:
    """SQLAlchemy's pool logs a connection it could not reset with a traceback. When the
    database goes away that is expected, and the requests say so already: one line will do."""
    if record.name.startswith("sqlalchemy.pool") and record.exc_info:
        error = record.exc_info[1]
        record.msg, record.args = f"{record.getMessage()}: {type(error).__name__}: {error}", ()
        record.exc_info, record.exc_text = None, None
    return True


def _workers(environ: Mapping[str, str], database_url: str) -> int:
    """``WEB_CONCURRENCY`` worker processes (default 1): several need PostgreSQL."""
    raw = environ.get("WEB_CONCURRENCY", "1").strip() or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= 64:
        raise ConfigurationError(
            f"WEB_CONCURRENCY must be a number of processes (1-64), not {raw!r}"
        )
    workers = int(raw)
    if workers > 1 and database_url.startswith("sqlite"):
        raise ConfigurationError(
            f"WEB_CONCURRENCY={workers} needs PostgreSQL (DATABASE_URL=postgresql+asyncpg://...): "
            "SQLite takes one writer at a time, and each process would keep its own loopback "
            "journal; run one process on SQLite"
        )
    return workers


def _configure(config: ServiceConfig) -> str | None:
    """Configure logging; the project its JSON lines name (``None`` in text, or not known)."""
    # Cloud Logging's JSON lines on Cloud Run (or HOMING_LOG_FORMAT=json), text elsewhere. On
    # Cloud Run without GOOGLE_CLOUD_PROJECT the project comes from the metadata server, so
    # the lines link to their traces.
    handler = configure_logging(config.homing.log_format, project=config.homing.project)
    handler.addFilter(_pool_errors_in_one_line)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per loopback POST is noise
    formatter = handler.formatter
    return formatter.project if isinstance(formatter, CloudLoggingFormatter) else None


async def _create_tables(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        await create_tables(engine)
    finally:
        await engine.dispose()


def _build(config: ServiceConfig) -> PushFastPath:
    """The served app: ``POST /events`` skips FastAPI's routing and middleware (it needs none
    of it); the rest is the FastAPI app."""
    app = create_app(config)
    return PushFastPath(app, PushEndpoint(app.state.homing), path="/events")


def served() -> PushFastPath:
    """What each of several worker processes serves: it configures and builds its own."""
    config = ServiceConfig.from_env()
    _configure(config)
    return _build(config)


def main() -> int:
    try:
        config = ServiceConfig.from_env()
        workers = _workers(os.environ, config.database_url)
        if workers > 1 and config.homing.metrics_port is not None:
            raise ConfigurationError(
                f"HOMING_METRICS_PORT with WEB_CONCURRENCY={workers}: each process counts its "
                "own pushes and only one can listen on the port; run one process, or export "
                "the metrics through OpenTelemetry, which every process pushes"
            )
    except HomingError as exc:
        sys.stderr.write(f"users_api: error: {exc}\n")
        return 2
    project = _configure(config)
    if workers > 1 and project and not config.homing.project:
        # The worker processes configure themselves: the project found is passed on, so the
        # metadata server is asked once.
        os.environ["GOOGLE_CLOUD_PROJECT"] = project
    try:
        app = _build(config) if workers == 1 else None  # errors here, before anything listens
    except HomingError as exc:
        sys.stderr.write(f"users_api: error: {exc}\n")
        return 2
    if app is None:
        # Each worker creates what is missing at start-up; on a fresh database several doing
        # so at once race (PostgreSQL's CREATE TABLE is not IF NOT EXISTS under a check), and
        # the loser dies. The parent creates them once, before any worker starts.
        try:
            asyncio.run(_create_tables(config.database_url))
        except (OSError, SQLAlchemyError) as exc:
            first_line = str(exc).splitlines()[0]  # SQLAlchemy appends a link on its own line
            sys.stderr.write(f"users_api: error: cannot create the tables: {first_line}\n")
            return 2
    logging.getLogger("users_api").info(
        "serving the reference service on http://%s:%d in %d process(es) "
        "(POST /events is the push endpoint)",
        config.host,
        config.port,
        workers,
    )
    # The served configuration is the fast one: uvloop and httptools when installed
    # ("auto"), and no per-request access log. Several workers: each process imports and
    # builds the app itself (a factory by name), as uvicorn requires.
    uvicorn.run(
        app if app is not None else "users_api.__main__:served",
        factory=app is None,
        workers=workers if app is None else None,
        host=config.host,
        port=config.port,
        loop="auto",
        http="auto",
        access_log=False,
        log_level="info",
        log_config=None,  # uvicorn's lines go through the root logger's format too
        timeout_graceful_shutdown=8,
        # uvicorn kills a worker that does not answer its health ping within this many
        # seconds. A worker is spawned and imports the service before it can answer, which
        # on a starting instance with little CPU can take longer than uvicorn's default 5 s:
        # the worker is then killed with requests in flight, and replaced, over and over.
        timeout_worker_healthcheck=30,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
