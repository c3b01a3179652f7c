"""Real processes and real faults: a database of its own per test, services that can be killed
and restarted on their port, and the tally every fault test prints."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from google.cloud import pubsub_v1

from tests.support.postgres import Cluster, throwaway_cluster
from tests.support.processes import halt
from tests.support.required import missing
from tests.support.services import Service, start_service
from tests.support.waiting import eventually

KEYS = "fault-key:a-fault-test-secret-that-is-long-enough"
PROJECT = "homing-faults"
POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


# -- databases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    """A database the service uses (``url``) that the test reads directly (``rows``)."""

    kind: str
    url: str
    target: str  # the asyncpg DSN, or the SQLite file

    def rows(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            with closing(sqlite3.connect(self.target, timeout=30)) as connection:
                return list(connection.execute(query.replace("$1", "?"), args).fetchall())
        return asyncio.run(_pg_rows(self.target, query, args))

    def notifications_by_event(self) -> Counter[str]:
        rows = self.rows("SELECT event_id, count(*) FROM notifications GROUP BY event_id")
        return Counter({str(event_id): int(n) for event_id, n in rows})


async def _pg_rows(dsn: str, query: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        return [tuple(record) for record in await connection.fetch(query, *args)]
    finally:
        await connection.close()


async def _pg_admin(statement: str, dsn: str = POSTGRES_ADMIN_DSN) -> None:
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture
def postgres_database() -> Iterator[Database]:
    """A PostgreSQL database made for this test alone, dropped afterwards."""
    name = f"faults_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        missing(f"PostgreSQL unreachable ({type(exc).__name__}: {exc})")
    try:
        yield Database(
            "postgresql",
            f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}",
            f"postgresql://postgres@127.0.0.1:5432/{name}",
        )
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def postgres_cluster() -> Iterator[Cluster]:
    """A PostgreSQL server of this test's own, to restart or stop at will."""
    with throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture
def cluster_database(postgres_cluster: Cluster) -> Database:
    """A database on :func:`postgres_cluster`."""
    asyncio.run(_pg_admin('CREATE DATABASE "faults"', postgres_cluster.dsn()))
    return Database("postgresql", postgres_cluster.url("faults"), postgres_cluster.dsn("faults"))


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Database:
    path = tmp_path / "faults.db"
    return Database("sqlite", f"sqlite+aiosqlite:///{path}", str(path))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> Database:
    """Each test that asks for it runs on SQLite and on PostgreSQL."""
    found: Database = request.getfixturevalue(f"{request.param}_database")
    return found


# -- processes ---------------------------------------------------------------------------------


def kill_9(service: Service) -> None:
    service.process.kill()
    service.process.wait(10)


@dataclass
class Services:
    """Starts reference services as real processes; every one is stopped at teardown."""

    directory: Path
    which: str = "users_api"  # or "django_api": the same HTTP API on Django
    started: list[Service] = field(default_factory=list)

    def start(self, env: Mapping[str, str], *, port: int | None = None) -> Service:
        """The reference service on ``port`` (a free one by default), once it answers /healthz.

        Each start gets a directory of its own, so a restart on the same port keeps the log
        of the process it replaces."""
        directory = self.directory / f"start-{len(self.started)}"
        directory.mkdir()
        env = {**env, "PORT": str(port)} if port else env
        service = start_service(directory, env, deadline=30, which=self.which)
        self.started.append(service)
        return service


@pytest.fixture
def reference_service() -> str:
    """The reference service a fault test runs (a test parametrises it to run both)."""
    return "users_api"


@pytest.fixture
def services(tmp_path: Path, reference_service: str) -> Iterator[Services]:
    launched = Services(tmp_path, reference_service)
    try:
        yield launched
    finally:
        for service in launched.started:
            halt(service.process)


# -- Pub/Sub -----------------------------------------------------------------------------------


@dataclass
class PushSetup:
    """Topics and push subscriptions on an emulator; deleted at teardown, so no stray pushes
    reach a port another test reuses."""

    monkeypatch: pytest.MonkeyPatch
    made: list[tuple[str, str, str]] = field(default_factory=list)

    def subscribe(
        self, emulator: str, push_endpoint: str, *, ack_deadline: int = 10, topic: str = ""
    ) -> str:
        """A topic (fresh unless named) with a push subscription to ``push_endpoint``; returns
        the topic id."""
        self.monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator)
        suffix = uuid.uuid4().hex[:10]
        topic, subscription = topic or f"faults-{suffix}", f"push-{suffix}"
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
        try:
            topic_path = publisher.create_topic(name=f"projects/{PROJECT}/topics/{topic}").name
            subscriber.create_subscription(
                request={
                    "name": f"projects/{PROJECT}/subscriptions/{subscription}",
                    "topic": topic_path,
                    "push_config": {"push_endpoint": push_endpoint},
                    "ack_deadline_seconds": ack_deadline,
                }
            )
        finally:
            subscriber.close()
        self.made.append((emulator, topic, subscription))
        return topic

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        publisher = pubsub_v1.PublisherClient()
        message_id: str = publisher.publish(
            f"projects/{PROJECT}/topics/{topic}", data, **attributes
        ).result(timeout=10)
        return message_id

    def remove_all(self) -> None:
        made, self.made = self.made, []
        for emulator, topic, subscription in made:
            self.monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator)
            subscriber = pubsub_v1.SubscriberClient()
            try:
                subscriber.delete_subscription(
                    subscription=f"projects/{PROJECT}/subscriptions/{subscription}", timeout=5
                )
                pubsub_v1.PublisherClient().delete_topic(
                    topic=f"projects/{PROJECT}/topics/{topic}", timeout=5
                )
            except Exception:  # noqa: S110 - the emulator of this setup may be gone already
                pass
            finally:
                subscriber.close()


@pytest.fixture
def pubsub(monkeypatch: pytest.MonkeyPatch) -> Iterator[PushSetup]:
    setup = PushSetup(monkeypatch)
    try:
        yield setup
    finally:
        setup.remove_all()


def service_env(database: Database, **more: str) -> dict[str, str]:
    return {"DATABASE_URL": database.url, "HOMING_SIGNING_KEYS": KEYS, **more}


def pubsub_env(emulator: str, topic: str) -> dict[str, str]:
    return {
        "HOMING_PUBLISHER": "pubsub",
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "HOMING_TOPIC": topic,
        "PUBSUB_EMULATOR_HOST": emulator,
        # The subscriptions here have a 10 s ack deadline; the service leases claims as long.
        "HOMING_ACK_DEADLINE": "10",
    }


# -- traffic and the tally ---------------------------------------------------------------------


def create_users(service: Service, count: int) -> list[int]:
    ids = []
    with httpx.Client(base_url=service.url, timeout=10) as client:
        for n in range(count):
            answer = client.post("/users", json={"name": f"u{n}", "email": f"u{n}@example.com"})
            assert answer.status_code == 201, answer.text
            ids.append(int(answer.json()["id"]))
    return ids


def notifications_seen(service: Service, user_ids: Iterable[int]) -> Counter[str]:
    """Notifications per event id, as ``GET /users/{id}/notifications`` shows them."""
    counts: Counter[str] = Counter()
    with httpx.Client(base_url=service.url, timeout=10) as client:
        for user_id in user_ids:
            answer = client.get(f"/users/{user_id}/notifications")
            assert answer.status_code == 200, answer.text
            counts.update(note["event_id"] for note in answer.json())
    return counts


@dataclass(frozen=True)
class Tally:
    sent: int
    seen: int
    lost: int
    doubled: int

    @classmethod
    def of(cls, sent: Iterable[str], counts: Mapping[str, int]) -> Tally:
        ids = set(sent)
        return cls(
            sent=len(ids),
            seen=sum(counts.get(event_id, 0) for event_id in ids),
            lost=sum(1 for event_id in ids if counts.get(event_id, 0) == 0),
            doubled=sum(1 for event_id in ids if counts.get(event_id, 0) > 1),
        )

    def line(self) -> str:
        return (
            f"events sent={self.sent} effects seen={self.seen} "
            f"lost={self.lost} doubled={self.doubled}"
        )


# -- renames under load, every answer kept -----------------------------------------------------


@dataclass(frozen=True)
class Rename:
    """One ``POST /change-name``: the unique name asked for and what came back."""

    name: str
    status: int | None  # None: no answer at all (connection refused or reset, a timeout)
    event_id: str | None
    seconds: float


@dataclass
class RenameLoad:
    """Threads renaming users, each rename a name never used before, until stopped."""

    url: str
    users: list[int]
    workers: int = 4
    results: list[Rename] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> RenameLoad:
        for worker in range(self.workers):
            thread = threading.Thread(target=self._run, args=(worker,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self, worker: int) -> None:
        n = 0
        with httpx.Client(base_url=self.url, timeout=15) as client:
            while not self._stop.is_set():
                n += 1
                name = f"w{worker}-{n}"
                user_id = self.users[(worker + n * self.workers) % len(self.users)]
                started = time.monotonic()
                try:
                    answer = client.post("/change-name", json={"user_id": user_id, "name": name})
                except httpx.TransportError:
                    result = Rename(name, None, None, time.monotonic() - started)
                    time.sleep(0.05)  # a dead or restarting service: don't spin
                else:
                    result = Rename(
                        name,
                        answer.status_code,
                        answer.headers.get("x-event-id"),
                        time.monotonic() - started,
                    )
                with self._lock:
                    self.results.append(result)

    def count(self, status: int | None) -> int:
        with self._lock:
            return sum(1 for r in self.results if r.status == status)

    def event_ids(self) -> set[str]:
        """The event ids of the renames answered 200 so far."""
        with self._lock:
            return {r.event_id for r in self.results if r.status == 200 and r.event_id}

    def answered(self, at_least: int) -> bool:
        """``True`` once ``at_least`` renames were answered 200."""
        return self.count(200) >= at_least

    def stop(self) -> list[Rename]:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        return self.results


_NEW_NAME = re.compile(r" to '([^']*)'\.$")


def renamed_to(database: Database) -> set[str]:
    """The new names of every rename whose event was handled (its notification's text)."""
    rows = database.rows("SELECT text FROM notifications")
    return {found.group(1) for (text,) in rows if (found := _NEW_NAME.search(str(text)))}


def outbox_rows(database: Database) -> int:
    return int(database.rows("SELECT count(*) FROM homing_outbox")[0][0])


@dataclass(frozen=True)
class Settled:
    """What a rename load came to, once the outbox is empty and every event handled."""

    ok: set[str]  # event ids of the renames answered 200
    refused: list[Rename]  # answered, but not 200
    unanswered: list[Rename]
    committed_but_refused: list[Rename]  # refused, yet their new name was handled
    tally: Tally
    drained: float  # seconds from the load's end until the outbox was empty


def settle(database: Database, results: list[Rename], *, drain_within: float = 30) -> Settled:
    """Wait (no flush by anyone) for the outbox to empty and the answered events' effects."""
    ended = time.monotonic()
    eventually(lambda: outbox_rows(database) == 0, timeout=drain_within, interval=0.25)
    drained = time.monotonic() - ended
    ok = {r.event_id for r in results if r.status == 200 and r.event_id}
    eventually(
        lambda: all(database.notifications_by_event().get(e, 0) == 1 for e in ok),
        timeout=60,
        interval=0.25,
    )
    refused = [r for r in results if r.status is not None and r.status != 200]
    handled = renamed_to(database)
    return Settled(
        ok=ok,
        refused=refused,
        unanswered=[r for r in results if r.status is None],
        committed_but_refused=[r for r in refused if r.name in handled],
        tally=Tally.of(ok, database.notifications_by_event()),
        drained=drained,
    )
