"""The reference service: the article's API with homing doing the background work.

``POST /change-name`` renames a user and publishes ``user.name.changed`` before it answers;
the event comes back through ``POST /events`` (verified, decoded, deduplicated) and its
handler writes a notification, which ``GET /users/{id}/notifications`` shows.

``POST /users`` publishes ``user.welcome.followup`` with a delay (``HOMING_FOLLOWUP_DELAY``
seconds, 30 by default) on the ``"tasks"`` transport: Cloud Tasks (``HOMING_TASKS_QUEUE``; the
local broker's under ``homing dev``) delivers it then, and its handler writes a notification
naming the user.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, EmailStr, Field
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.routing import Route

from homing import Delivery, Homing, Publisher, Settings, wiring
from homing.errors import ConfigurationError, StoreError
from homing.fastapi import push_router
from homing.outbox import FlushEndpoint, SQLOutbox
from homing.telemetry import TraceContextMiddleware
from users_api.db import Base, Notification, User

logger = logging.getLogger("users_api")

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./users_api.db"


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """The service's own settings (``PORT``, ``HOST``, ``DATABASE_URL``, ``API_DOCS``) plus
    homing's (``HOMING_TELEMETRY`` among them)."""

    port: int = 8080
    host: str = "127.0.0.1"
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)
    #: FastAPI's ``/docs``, ``/redoc`` and ``/openapi.json`` (``API_DOCS``: ``off``, the default,
    #: or ``on``): off, so a deployed service does not describe itself to anyone who asks.
    api_docs: bool = False
    homing: Settings = field(default_factory=Settings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServiceConfig:
        env = os.environ if environ is None else environ
        port = env.get("PORT", "8080")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(f"PORT must be a port number, not {port!r}")
        return cls(
            port=int(port),
            host=env.get("HOST", "127.0.0.1"),
            database_url=env.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            api_docs=_switch(env, "API_DOCS", "off"),
            homing=Settings.from_env(env),
        )


def _switch(env: Mapping[str, str], name: str, default: str) -> bool:
    value = env.get(name, default).strip().lower()
    if value not in ("on", "off"):
        raise ConfigurationError(f"{name} must be on or off, not {value!r}")
    return value == "on"


class UserNameChanged(BaseModel):
    """Published by ``POST /change-name``; type name ``user.name.changed``."""

    user_id: int
    old_name: str
    new_name: str


class WelcomeFollowup(BaseModel):
    """Published by ``POST /users``, delivered ``HOMING_FOLLOWUP_DELAY`` seconds later; type
    name ``user.welcome.followup``, on the ``"tasks"`` transport."""

    user_id: int
    name: str


class NewUser(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    email: EmailStr


class NameChange(BaseModel):
    user_id: int
    name: str = Field(min_length=1, max_length=200)


class UserOut(BaseModel):
    id: int
    name: str
    email: str


class NotificationOut(BaseModel):
    event_id: str
    text: str
    created_at: datetime


def build_homing(config: ServiceConfig, publisher: Publisher | None = None) -> Homing:
    """homing's wiring from the settings (``Homing.from_env``): the stores and the outbox on
    the service's database, the loopback journal beside a SQLite file, telemetry; a
    development key (said so) when ``HOMING_SIGNING_KEYS`` is unset, so ``make run`` works as
    is. ``publisher`` replaces the one the settings choose (a seam for tests)."""
    environ = {"DATABASE_URL": config.database_url, "PORT": str(config.port)}
    overrides: dict[str, Any] = {"publisher": publisher} if publisher is not None else {}
    if config.homing.signing_keys is None:
        overrides["signer"] = wiring.signer(config.homing, development=True)
    homing = Homing.from_env(environ, settings=config.homing, **overrides)
    homing.events.register("user.name.changed", UserNameChanged)
    homing.event("user.welcome.followup", transport="tasks")(WelcomeFollowup)

    # Its only effect is a row in this database: homing commits it with the event's "handled"
    # mark, in one transaction. Exactly one notification per event, whatever crashes or
    # redeliveries happen around it. (delivery.session is there for ORM code; one Core
    # statement needs no unit of work.)
    notify = insert(Notification)

    @homing.handler(UserNameChanged, effects="database")
    async def notify_user(event: UserNameChanged, delivery: Delivery) -> None:
        await delivery.connection.execute(
            notify,
            {
                "event_id": delivery.event_id,
                "user_id": event.user_id,
                "text": f"Your name was changed from {event.old_name!r} to {event.new_name!r}.",
            },
        )

    @homing.handler(WelcomeFollowup, effects="database")
    async def follow_up(event: WelcomeFollowup, delivery: Delivery) -> None:
        await delivery.connection.execute(
            notify,
            {
                "event_id": delivery.event_id,
                "user_id": event.user_id,
                "text": f"Welcome aboard, {event.name}! How are your first minutes going?",
            },
        )

    return homing


def followup_delay(homing: Homing, config: ServiceConfig) -> timedelta | None:
    """The follow-up's delay, or ``None`` (said once) when no transport of this service can
    deliver it later: the loopback publisher cannot, and Pub/Sub needs ``HOMING_TASKS_QUEUE``."""
    delay = timedelta(seconds=config.homing.followup_delay)
    publisher = None
    with contextlib.suppress(ConfigurationError):
        publisher = homing.transports.publisher_for("user.welcome.followup")
    if publisher is None or publisher.max_delay is None or delay > publisher.max_delay:
        logger.warning(
            "user.welcome.followup is off: %s cannot deliver an event later; set "
            "HOMING_TASKS_QUEUE (Cloud Tasks), or run under `homing dev`",
            "this service" if publisher is None else type(publisher).__name__,
        )
        return None
    return delay


def api_router(
    homing: Homing,
    outbox: SQLOutbox,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    followup: timedelta | None = None,
) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.post("/users", status_code=201)
    async def create_user(body: NewUser, response: Response) -> UserOut:
        staged = None
        async with sessions.begin() as session:
            user = User(name=body.name, email=body.email)
            session.add(user)
            await session.flush()
            out = UserOut(id=user.id, name=user.name, email=user.email)
            if followup is not None:
                # In the user's transaction, with its time: published late, it still arrives
                # then (or at once, once that has passed).
                event = WelcomeFollowup(user_id=out.id, name=out.name)
                staged = await outbox.stage(session, homing.sign(event, delay=followup))
        if staged is not None:
            published = await outbox.send(staged)
            response.headers["x-event-id"] = staged.event_id
            response.headers["x-event-status"] = "published" if published else "pending"
        return out

    @router.get("/users/{user_id}")
    async def get_user(user_id: int) -> UserOut:
        async with sessions() as session:
            user = await session.get(User, user_id)
        if user is None:
            raise HTTPException(404, f"user {user_id} not found")
        return UserOut(id=user.id, name=user.name, email=user.email)

    lock_user = select(User.name, User.email).where(User.id == bindparam("user")).with_for_update()
    rename = update(User).where(User.id == bindparam("user")).values(name=bindparam("new"))

    @router.post("/change-name", response_model=UserOut)
    async def change_name(body: NameChange, response: Response) -> UserOut:
        async with engine.connect() as connection:
            row = (await connection.execute(lock_user, {"user": body.user_id})).one_or_none()
            if row is None:
                raise HTTPException(404, f"user {body.user_id} not found")
            await connection.execute(rename, {"user": body.user_id, "new": body.name})
            out = UserOut(id=body.user_id, name=body.name, email=row.email)
            # Written in the same transaction as the rename: the event cannot be lost.
            event = UserNameChanged(user_id=out.id, old_name=row.name, new_name=out.name)
            staged = await outbox.stage(connection, homing.sign(event))
            try:
                await connection.commit()
            except SQLAlchemyError:
                # The connection failed during COMMIT: it may have committed all the same.
                # Answer what happened, not a guess: look for the staged event.
                if not await outbox.committed(staged):
                    raise
        # Committed. Published before the response: on Cloud Run the CPU is gone once we
        # answer. If the broker does not take it, the event waits in the outbox (the outbox
        # drains itself) and the answer is still a success: the rename happened.
        published = await outbox.send(staged)
        response.headers["x-event-id"] = staged.event_id
        response.headers["x-event-status"] = "published" if published else "pending"
        return out

    @router.get("/users/{user_id}/notifications")
    async def notifications(user_id: int) -> list[NotificationOut]:
        async with sessions() as session:
            if await session.get(User, user_id) is None:
                raise HTTPException(404, f"user {user_id} not found")
            rows = await session.scalars(
                select(Notification)
                .where(Notification.user_id == user_id)
                .order_by(Notification.id)
            )
            return [
                NotificationOut(event_id=n.event_id, text=n.text, created_at=n.created_at)
                for n in rows
            ]

    return router


def create_app(
    config: ServiceConfig | None = None, *, publisher: Publisher | None = None
) -> FastAPI:
    """The reference service, configured from ``config`` (default: the environment).

    ``publisher`` replaces the one the settings choose (a seam for tests).
    """
    config = config or ServiceConfig.from_env()
    homing = build_homing(config, publisher)
    # Built by Homing.from_env on DATABASE_URL, which the service always sets.
    assert homing.wired is not None
    assert homing.wired.engine is not None
    assert homing.wired.outbox is not None
    engine, outbox = homing.wired.engine, homing.wired.outbox
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        # homing's tables, what a killed predecessor left in the outbox and in the loopback
        # journal; at shutdown the outbox, the publisher, the stores and the engine close.
        async with homing:
            yield

    described = config.api_docs
    app = FastAPI(
        title="homing reference service",
        lifespan=lifespan,
        docs_url="/docs" if described else None,
        redoc_url="/redoc" if described else None,
        openapi_url="/openapi.json" if described else None,
    )
    # homing's create_engine reports a refused connection as SQLAlchemy's OperationalError, and
    # homing's stores report every database failure as StoreError: these two cover them all.
    app.add_exception_handler(SQLAlchemyError, _database_unavailable)
    app.add_exception_handler(StoreError, _database_unavailable)
    app.state.homing = homing
    app.state.outbox = outbox
    followup = followup_delay(homing, config)
    app.include_router(api_router(homing, outbox, engine, sessions, followup))
    app.include_router(push_router(homing, "/events"))
    if homing.wired.telemetry is not None:
        app.add_middleware(TraceContextMiddleware)  # the request's trace reaches its events
    # No GET /metrics here: it would tell anyone the event volumes by type. With
    # HOMING_METRICS_PORT, Homing.from_env serves them on 127.0.0.1 at that port, started and
    # stopped with the lifespan, for the Prometheus sidecar in the same instance.
    flush = _flush_route(config.homing, outbox)
    if flush is not None:
        app.router.routes.append(flush)
    return app


async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    # An answer, not an unhandled exception: the client gets a reason and keeps its connection.
    logger.error("database error: %s", exc)
    return JSONResponse({"detail": "the database is unavailable; try again"}, status_code=503)


def _flush_route(settings: Settings, outbox: SQLOutbox) -> Route | None:
    """``POST /outbox/flush`` for Cloud Scheduler, when credentials for it are configured."""
    scheduler = None
    if settings.scheduler_service_accounts:
        from homing.auth import OIDCVerifier  # cryptography: only when it is needed

        audience = settings.scheduler_audience
        if not audience and settings.push_endpoint:
            audience = settings.push_endpoint.rsplit("/", 1)[0] + "/outbox/flush"
        if not audience:
            raise ConfigurationError(
                "HOMING_SCHEDULER_SERVICE_ACCOUNTS needs HOMING_SCHEDULER_AUDIENCE "
                "(the flush route's URL) or HOMING_PUSH_ENDPOINT"
            )
        scheduler = OIDCVerifier(
            audience=audience,
            service_accounts=settings.scheduler_service_accounts,
            certs_url=settings.oidc_certs_url,
        )
    if settings.flush_token is None and scheduler is None:
        logger.info(
            "POST /outbox/flush is off: set HOMING_FLUSH_TOKEN or "
            "HOMING_SCHEDULER_SERVICE_ACCOUNTS to let a scheduler flush the outbox"
        )
        return None
    endpoint = FlushEndpoint(outbox, token=settings.flush_token, oidc=scheduler)
    return Route("/outbox/flush", endpoint, methods=["POST"], name="outbox_flush")
