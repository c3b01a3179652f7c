from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from homing import Delivery, Drop, Homing, KeyRing, MemoryPublisher, Retry, Signer
from homing.auth import OIDCVerifier
from homing.starlette import push_route
from homing.stores.sql import create_engine, create_tables, metadata
from tests.support.clock import NOW, Clock
from tests.support.emulator import required_emulator, running_emulator
from tests.support.required import missing
from tests.test_auth import AUDIENCE, KID, PUSHER, CertServer, certificate_pem, new_rsa_key

# Taken out of the environment: homing refuses HOMING_* variables it does not know, and the
# tests run its CLI and settings against this process's environment.
POSTGRES_URL = os.environ.pop(
    "HOMING_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


class OrderPlaced(BaseModel):
    order_id: int
    total_cents: int


class Recorder:
    """The test handler: records what ran, and does what the event's data asks for."""

    def __init__(self) -> None:
        self.seen: list[tuple[OrderPlaced, Delivery]] = []

    async def __call__(self, event: OrderPlaced, delivery: Delivery) -> None:
        if event.order_id == -1:
            raise Retry("asked to retry")
        if event.order_id == -2:
            raise Drop("asked to drop")
        if event.order_id == -3:
            raise RuntimeError("handler bug")
        self.seen.append((event, delivery))


@pytest.fixture
def keys() -> KeyRing:
    return KeyRing({"k-new": "a-secret-of-enough-length", "k-old": "an-older-secret-still-valid"})


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def publisher() -> MemoryPublisher:
    return MemoryPublisher()


@pytest.fixture
def homing(keys: KeyRing, recorder: Recorder, publisher: MemoryPublisher) -> Homing:
    app = Homing(
        signer=Signer(keys, legacy_secret="the-article-shared-secret"),
        publisher=publisher,
        accept_legacy_without_oidc=True,
    )
    app.events.register("order.placed", OrderPlaced)
    app.handler(OrderPlaced)(recorder)
    return app


@pytest.fixture
async def client(homing: Homing) -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(routes=[push_route(homing, "/events")])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


SQL_BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@asynccontextmanager
async def open_sql_engine(kind: str, directory: Path) -> AsyncIterator[AsyncEngine]:
    """A fresh engine with homing's tables, on SQLite in ``directory`` or on PostgreSQL.

    ``sqlite-thread``: SQLite through aiosqlite's thread rather than inline in the event loop.
    """
    if kind.startswith("sqlite"):
        engine = create_engine(
            f"sqlite+aiosqlite:///{directory}/homing.db", inline_sqlite=kind == "sqlite"
        )
    else:
        engine = create_engine(POSTGRES_URL)
        try:
            async with engine.begin() as connection:
                # IF EXISTS in one statement: drop_all's look-then-drop races another run's.
                names = ", ".join(table.name for table in metadata.sorted_tables)
                await connection.exec_driver_sql(f"DROP TABLE IF EXISTS {names} CASCADE")
        except Exception as exc:  # refused connection, unknown database, ...: one message
            await engine.dispose()
            missing(f"PostgreSQL unreachable ({type(exc).__name__}: {exc})")
    await create_tables(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture(params=SQL_BACKENDS)
async def sql_engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with open_sql_engine(request.param, tmp_path) as engine:
        yield engine


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a running official Pub/Sub emulator (required in CI)."""
    with running_emulator(
        required_emulator(), tmp_path_factory.mktemp("emulator") / "emulator.log"
    ) as host:
        yield host


# Google's push token, signed by a key of the test's own and verified against its certificate.
@pytest.fixture(scope="module")
def google_key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture
async def verifier(google_key: rsa.RSAPrivateKey) -> AsyncIterator[OIDCVerifier]:
    server = CertServer({KID: certificate_pem(google_key)})
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as certs_client:
        yield OIDCVerifier(
            audience=AUDIENCE, service_accounts=[PUSHER], client=certs_client, clock=Clock(NOW)
        )
