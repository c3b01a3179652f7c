"""The ASGI apps `make bench` serves under uvicorn, one per case: ``bench.apps:<name>()``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response as StarletteResponse
from starlette.routing import Route

from homing import Homing, KeyRing, Signer
from homing.asgi import PushFastPath
from homing.stores.sql import SQLDedupeStore, create_engine, create_tables

KEYS = "bench:a-benchmark-secret-long-enough"


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
    return PushFastPath(app, homing.endpoint(), path="/events")


def homing_memory() -> PushFastPath:
    homing = _homing()
    return _served(homing, Starlette(routes=[homing.route("/events")]))


def homing_sql() -> PushFastPath:
    engine = create_engine(os.environ["BENCH_DATABASE_URL"])
    homing = _homing(SQLDedupeStore(engine))

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await create_tables(engine)
        yield
        await engine.dispose()

    return _served(homing, Starlette(routes=[homing.route("/events")], lifespan=lifespan))


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
