"""The ASGI apps `make bench` serves under uvicorn, one per case: ``bench.apps:<name>()``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import orjson
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response as StarletteResponse
from starlette.routing import Route

from homing import Homing, KeyRing, Signer
from homing.asgi import PushEndpoint, PushFastPath
from homing.starlette import push_route
from homing.stores.sql import SQLDedupeStore, create_engine, create_tables
from homing.telemetry import Telemetry, configure_logging
from homing.telemetry.metrics import PrometheusMetrics
from users_api.app import UserNameChanged
from users_api.db import Base

KEYS = "bench:a-benchmark-secret-long-enough"
RENAME_USERS = 50  # users 1-50, renamed by the /change-name load


class Noop(BaseModel):
    n: int


def bare() -> Starlette:
    """The ceiling: read the body, answer 204."""

    async def events(request: StarletteRequest) -> StarletteResponse:
        await request.body()
        return StarletteResponse(status_code=204)

    return Starlette(routes=[Route("/events", events, methods=["POST"])])


def _homing(dedupe: SQLDedupeStore | None = None) -> Homing:
    homing = Homing(signer=Signer(KeyRing.from_string(KEYS)), dedupe=dedupe)
    homing.events.register("bench.noop", Noop)

    @homing.handler(Noop)
    async def noop(event: Noop) -> None:
        return None

    return homing


def _served(homing: Homing, app: Starlette) -> PushFastPath:
    # As the README recommends serving it: POST /events straight to the endpoint.
    return PushFastPath(app, PushEndpoint(homing), path="/events")


def homing_memory() -> PushFastPath:
    homing = _homing()
    return _served(homing, Starlette(routes=[push_route(homing, "/events")]))


def homing_memory_telemetry() -> PushFastPath:
    """``homing_memory`` with telemetry on: a Cloud Logging JSON line per push (to stderr,
    which the bench writes to a file), the message's trace continued, Prometheus metrics."""
    log = configure_logging("json", project="bench")
    homing = _homing()
    metrics = PrometheusMetrics()
    homing.hooks.append(Telemetry(homing.events, metrics=metrics, log=log))
    app = Starlette(
        routes=[
            push_route(homing, "/events"),
            Route("/metrics", metrics.endpoint(), methods=["GET"]),
        ]
    )
    return _served(homing, app)


def homing_sql() -> PushFastPath:
    engine = create_engine(os.environ["BENCH_DATABASE_URL"])
    homing = _homing(SQLDedupeStore(engine))
    return _served_with_tables(homing, engine)


def homing_sql_transactional() -> PushFastPath:
    """A no-op ``effects="database"`` handler: homing's own cost of one committed new event."""
    engine = create_engine(os.environ["BENCH_DATABASE_URL"])
    homing = Homing(signer=Signer(KeyRing.from_string(KEYS)), dedupe=SQLDedupeStore(engine))
    homing.events.register("user.name.changed", UserNameChanged)

    @homing.handler(UserNameChanged, effects="database")
    async def noop(event: UserNameChanged) -> None:
        return None

    return _served_with_tables(homing, engine)


def _served_with_tables(homing: Homing, engine: AsyncEngine) -> PushFastPath:
    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await create_tables(engine)
        yield
        await engine.dispose()

    return _served(homing, Starlette(routes=[push_route(homing, "/events")], lifespan=lifespan))


class _Message(BaseModel):
    data: str
    attributes: dict[str, str] = {}
    messageId: str


class _Envelope(BaseModel):
    message: _Message
    subscription: str


def naive_fastapi() -> FastAPI:
    """What most people write: a pydantic envelope model, a signature check, a handler."""
    app = FastAPI()
    secret = KEYS.partition(":")[2].encode()
    seen: set[str] = set()

    @app.post("/events", status_code=204)
    async def events(envelope: _Envelope, request: Request) -> Response:
        data = base64.b64decode(envelope.message.data)
        given = envelope.message.attributes.get("signature", "")
        expected = hmac.new(secret, data, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401)
        if envelope.message.messageId not in seen:
            seen.add(envelope.message.messageId)
            Noop.model_validate_json(data)
        return Response(status_code=204)

    return app


# -- hand-written consumers: the bar for new events ---------------------------------------------
#
# What a careful engineer writes by hand for the reference service's handler on the same stack:
# parse the push, check the article's HMAC over the data, and write the notification in one
# transaction with INSERT ... ON CONFLICT (event_id) DO NOTHING (the unique key deduplicates).
# They receive the article's format (``signature`` = hex HMAC-SHA256 of the data), on the
# reference service's own tables.

_NOTIFY = (
    "INSERT INTO notifications (event_id, user_id, text, created_at) "
    "VALUES ({0}, {1}, {2}, {3}) ON CONFLICT (event_id) DO NOTHING"
)
_SECRET = KEYS.partition(":")[2].encode()


def _checked(body: bytes) -> tuple[str, dict[str, object]] | None:
    """The message id and event of a push whose signature holds; ``None`` otherwise."""
    message = orjson.loads(body)["message"]
    data = base64.b64decode(message["data"])
    expected = hmac.new(_SECRET, data, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(message["attributes"].get("signature", ""), expected):
        return None
    return message["messageId"], orjson.loads(data)


def _text(event: dict[str, object]) -> str:
    return f"Your name was changed from {event['old_name']!r} to {event['new_name']!r}."


def _consumer(handle: object, lifespan: object) -> Starlette:
    async def events(request: StarletteRequest) -> StarletteResponse:
        checked = _checked(await request.body())
        if checked is None:
            return StarletteResponse(status_code=401)
        await handle(*checked)  # type: ignore[operator]
        return StarletteResponse(status_code=204)

    return Starlette(
        routes=[Route("/events", events, methods=["POST"])],
        lifespan=lifespan,  # type: ignore[arg-type]
    )


async def _with_users(engine: AsyncEngine, count: int = 1) -> None:
    """The reference service's tables, with users 1 to ``count``; WAL settings on SQLite."""
    if engine.dialect.name == "sqlite":
        async with engine.connect() as connection:
            await connection.exec_driver_sql("PRAGMA journal_mode=WAL")
            await connection.exec_driver_sql("PRAGMA synchronous=NORMAL")
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
        await connection.execute(
            text(
                "INSERT INTO users (id, name, email) VALUES (:id, 'u', 'u@example.com') "
                "ON CONFLICT (id) DO NOTHING"
            ),
            [{"id": n} for n in range(1, count + 1)],
        )


def handwritten_sqlalchemy() -> Starlette:
    """SQLAlchemy async on the same driver as homing's case (aiosqlite or asyncpg)."""
    url = os.environ["BENCH_DATABASE_URL"]
    sqlite_db = url.startswith("sqlite")
    # The careful settings: a pool that keeps its connections; on SQLite one connection (no
    # lock-busy sleeps), WAL and synchronous=NORMAL.
    options = {"pool_size": 1 if sqlite_db else 15, "max_overflow": 0}
    engine = create_async_engine(url, **options)
    insert = text(_NOTIFY.format(":id", ":user", ":text", ":at"))

    async def handle(message_id: str, event: dict[str, object]) -> None:
        async with engine.begin() as connection:
            await connection.execute(
                insert,
                {"id": message_id, "user": event["user_id"], "text": _text(event), "at": _now()},
            )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await _with_users(engine)
        yield
        await engine.dispose()

    return _consumer(handle, lifespan)


def handwritten_raw_sqlite() -> Starlette:
    """The stdlib's sqlite3, called inline in the event loop: no pool, no thread, no ORM."""
    import sqlite3

    path = os.environ["BENCH_DATABASE_URL"].partition(":///")[2]
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    insert = _NOTIFY.format("?", "?", "?", "?")

    async def handle(message_id: str, event: dict[str, object]) -> None:
        connection.execute("BEGIN")
        connection.execute(insert, (message_id, event["user_id"], _text(event), _now()))
        connection.execute("COMMIT")

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        engine = create_async_engine(os.environ["BENCH_DATABASE_URL"])
        await _with_users(engine)
        await engine.dispose()
        yield
        connection.close()

    return _consumer(handle, lifespan)


def handwritten_raw_asyncpg() -> Starlette:
    """A raw asyncpg pool of 15; each event one autocommitted statement (one round trip)."""
    import asyncpg

    url = os.environ["BENCH_DATABASE_URL"]
    pools: list[asyncpg.Pool] = []
    insert = _NOTIFY.format("$1", "$2", "$3", "$4")

    async def handle(message_id: str, event: dict[str, object]) -> None:
        await pools[0].execute(insert, message_id, event["user_id"], _text(event), _now())

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        engine = create_async_engine(url)
        await _with_users(engine)
        await engine.dispose()
        dsn = url.replace("postgresql+asyncpg", "postgresql")
        pools.append(await asyncpg.create_pool(dsn, min_size=15, max_size=15))
        yield
        await pools[0].close()

    return _consumer(handle, lifespan)


def _now() -> datetime:
    return datetime.now(UTC)


# -- the request side: rename, then publish ----------------------------------------------------


class _Rename(BaseModel):
    user_id: int
    name: str


def handwritten_rename() -> FastAPI:
    """``POST /change-name`` as a careful engineer writes it on the reference service's stack
    (FastAPI, pydantic, SQLAlchemy async): the rename in one transaction, then the event
    published with the tuned raw client (no batching wait) before the response. No outbox."""
    import asyncio

    from google.cloud import pubsub_v1

    url = os.environ["BENCH_DATABASE_URL"]
    sqlite_db = url.startswith("sqlite")
    engine = create_async_engine(url, pool_size=1 if sqlite_db else 15, max_overflow=0)
    topic = os.environ["BENCH_TOPIC"]
    clients: list[pubsub_v1.PublisherClient] = []
    rename = text("UPDATE users SET name = :name WHERE id = :id")
    current = text("SELECT name, email FROM users WHERE id = :id")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await _with_users(engine, RENAME_USERS)
        zero = pubsub_v1.types.BatchSettings(max_latency=0)
        clients.append(pubsub_v1.PublisherClient(batch_settings=zero))
        yield
        clients[0].stop()
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/change-name")
    async def change_name(body: _Rename) -> dict[str, object]:
        async with engine.begin() as connection:
            row = (await connection.execute(current, {"id": body.user_id})).one_or_none()
            if row is None:
                raise HTTPException(404)
            await connection.execute(rename, {"name": body.name, "id": body.user_id})
        data = orjson.dumps({"user_id": body.user_id, "old_name": row.name, "new_name": body.name})
        signature = hmac.new(_SECRET, data, hashlib.sha256).hexdigest()
        future = clients[0].publish(
            topic, data, **{"event-type": "user.name.changed", "signature": signature}
        )
        await asyncio.wrap_future(future)
        return {"id": body.user_id, "name": body.name, "email": row.email}

    return app
