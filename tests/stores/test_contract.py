"""One contract, every store backend: memory, SQLite and PostgreSQL, through SQLAlchemy and
through Django's database (``DjangoDedupeStore``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from homing.errors import ConfigurationError, StoreError
from homing.stores import (
    Claim,
    DedupeStore,
    MemoryDedupeStore,
    MemoryQuarantineStore,
    QuarantinedMessage,
    QuarantineStore,
)
from homing.stores.sql import SQLDedupeStore, SQLQuarantineStore, create_engine, handled_events
from tests.conftest import POSTGRES_URL, SQL_BACKENDS, open_sql_engine
from tests.support.clock import Clock
from tests.support.djangoproject import APPLICATION as DJANGO_TESTS
from tests.support.djangoproject import DJANGO_BACKENDS, django_database

# SQLite twice: inline in the event loop (the default), and through aiosqlite's thread.
BACKENDS = ["memory", "sqlite-thread", *SQL_BACKENDS, *DJANGO_BACKENDS]
SQL_ONLY = ["sqlite-thread", *SQL_BACKENDS]
#: The stores whose transactions hold the effect and the done mark.
TRANSACTIONAL = [*SQL_ONLY, *DJANGO_BACKENDS]


@pytest.fixture
def clock() -> Clock:
    """The dedupe stores' clock: a lease ends when the test moves it there, not by sleeping."""
    return Clock()


@pytest.fixture(params=BACKENDS)
async def dedupe(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> AsyncIterator[DedupeStore]:
    if request.param == "memory":
        yield MemoryDedupeStore(clock=clock)
        return
    if request.param.startswith("django"):
        yield await _django_dedupe(request.param, clock)
        return
    async with open_sql_engine(request.param, tmp_path) as engine:
        yield SQLDedupeStore(engine, clock=clock)


async def _django_dedupe(kind: str, clock: Clock | None = None) -> DedupeStore:
    from homing.django import DjangoDedupeStore

    alias = await sync_to_async(django_database)(kind, POSTGRES_URL)
    return DjangoDedupeStore(alias) if clock is None else DjangoDedupeStore(alias, clock=clock)


@pytest.fixture(params=BACKENDS)
async def quarantine(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[QuarantineStore]:
    if request.param == "memory":
        yield MemoryQuarantineStore()
        return
    if request.param.startswith("django"):
        from homing.django import DjangoQuarantineStore

        alias = await sync_to_async(django_database)(request.param, POSTGRES_URL)
        yield DjangoQuarantineStore(alias)
        return
    async with open_sql_engine(request.param, tmp_path) as engine:
        yield SQLQuarantineStore(engine)


async def test_first_claim_wins_then_in_progress(dedupe: DedupeStore) -> None:
    assert await dedupe.claim("e1", lease=60) is Claim.CLAIMED
    assert await dedupe.claim("e1", lease=60) is Claim.IN_PROGRESS


async def test_done_makes_every_later_claim_a_duplicate(dedupe: DedupeStore) -> None:
    assert await dedupe.claim("e1", lease=60) is Claim.CLAIMED
    await dedupe.done("e1")
    assert await dedupe.claim("e1", lease=60) is Claim.DUPLICATE
    assert await dedupe.claim("e1", lease=0) is Claim.DUPLICATE


async def test_an_expired_lease_can_be_claimed_again(dedupe: DedupeStore, clock: Clock) -> None:
    assert await dedupe.claim("e1", lease=5) is Claim.CLAIMED
    clock.advance(4.5)
    assert await dedupe.claim("e1", lease=60) is Claim.IN_PROGRESS
    clock.advance(0.5)  # the lease's end
    assert await dedupe.claim("e1", lease=60) is Claim.CLAIMED
    assert await dedupe.claim("e1", lease=60) is Claim.IN_PROGRESS


async def test_release_lets_the_next_delivery_run(dedupe: DedupeStore) -> None:
    assert await dedupe.claim("e1", lease=60) is Claim.CLAIMED
    await dedupe.release("e1")
    assert await dedupe.claim("e1", lease=60) is Claim.CLAIMED


async def test_release_does_not_undo_done(dedupe: DedupeStore) -> None:
    await dedupe.claim("e1", lease=60)
    await dedupe.done("e1")
    await dedupe.release("e1")
    assert await dedupe.claim("e1", lease=60) is Claim.DUPLICATE


async def test_renew_keeps_a_claim_past_its_first_lease(dedupe: DedupeStore, clock: Clock) -> None:
    assert await dedupe.claim("e1", lease=5) is Claim.CLAIMED
    assert await dedupe.renew("e1", lease=60) is True
    clock.advance(59)  # past the first lease, inside the renewed one
    assert await dedupe.claim("e1", lease=60) is Claim.IN_PROGRESS
    clock.advance(1)
    assert await dedupe.claim("e1", lease=60) is Claim.CLAIMED


async def test_renew_finds_nothing_to_renew_once_done_or_never_claimed(
    dedupe: DedupeStore,
) -> None:
    assert await dedupe.renew("never", lease=60) is False
    await dedupe.claim("e1", lease=60)
    await dedupe.done("e1")
    assert await dedupe.renew("e1", lease=60) is False
    assert await dedupe.claim("e1", lease=60) is Claim.DUPLICATE


async def test_done_without_a_claim_still_marks_the_event(dedupe: DedupeStore) -> None:
    await dedupe.done("e1")  # e.g. a message dropped for bad data before any claim
    assert await dedupe.claim("e1", lease=60) is Claim.DUPLICATE


async def test_known_done_is_true_only_for_handled_ids(dedupe: DedupeStore) -> None:
    assert not dedupe.known_done("e1")
    assert await dedupe.claim("e1", lease=60) is Claim.CLAIMED
    assert not dedupe.known_done("e1")  # claimed is not handled
    await dedupe.release("e1")
    assert not dedupe.known_done("e1")
    await dedupe.claim("e1", lease=60)
    await dedupe.done("e1")
    assert dedupe.known_done("e1")
    assert not dedupe.known_done("e2")


async def test_ids_are_independent(dedupe: DedupeStore) -> None:
    assert await dedupe.claim("e1", lease=60) is Claim.CLAIMED
    assert await dedupe.claim("e2", lease=60) is Claim.CLAIMED


async def test_concurrent_claims_of_one_id_have_one_winner(dedupe: DedupeStore) -> None:
    results = await asyncio.gather(*(dedupe.claim("e-race", lease=60) for _ in range(10)))
    assert results.count(Claim.CLAIMED) == 1
    assert results.count(Claim.IN_PROGRESS) == 9


def _entry(entry_id: str, minutes: int = 0) -> QuarantinedMessage:
    return QuarantinedMessage(
        id=entry_id,
        reason=f"reason {entry_id}",
        body=b'{"message": {}}\x00\xff',
        received_at=datetime(2026, 11, 27, 12, 0, tzinfo=UTC) + timedelta(minutes=minutes),
        event_type="order.placed",
        event_id=entry_id,
    )


async def test_quarantine_keeps_what_it_is_given(quarantine: QuarantineStore) -> None:
    assert await quarantine.add(_entry("q1")) is True
    assert await quarantine.get("q1") == _entry("q1")
    assert await quarantine.get("missing") is None


async def test_quarantine_keeps_the_first_of_one_id(quarantine: QuarantineStore) -> None:
    assert await quarantine.add(_entry("q1")) is True
    assert await quarantine.add(_entry("q1", minutes=5)) is False
    assert await quarantine.get("q1") == _entry("q1")


async def test_quarantine_lists_newest_first_and_deletes(quarantine: QuarantineStore) -> None:
    for minutes, entry_id in enumerate(["a", "b", "c"]):
        await quarantine.add(_entry(entry_id, minutes))
    assert [e.id for e in await quarantine.list()] == ["c", "b", "a"]
    assert [e.id for e in await quarantine.list(limit=2)] == ["c", "b"]
    assert await quarantine.delete("b") is True
    assert await quarantine.delete("b") is False
    assert [e.id for e in await quarantine.list()] == ["c", "a"]


async def test_memory_dedupe_forgets_the_oldest_beyond_its_bound() -> None:
    store = MemoryDedupeStore(max_entries=2)
    for event_id in ("a", "b", "c"):
        await store.claim(event_id, lease=60)
        await store.done(event_id)
    assert await store.claim("c", lease=60) is Claim.DUPLICATE
    assert await store.claim("a", lease=60) is Claim.CLAIMED  # forgotten


@pytest.fixture(params=SQL_ONLY)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with open_sql_engine(request.param, tmp_path) as engine:
        yield engine


async def test_sql_done_is_seen_by_another_instance_on_the_database(engine: AsyncEngine) -> None:
    first, second = SQLDedupeStore(engine), SQLDedupeStore(engine)
    assert await first.claim("e1", lease=60) is Claim.CLAIMED
    assert await second.claim("e1", lease=60) is Claim.IN_PROGRESS
    await first.done("e1")
    assert await second.claim("e1", lease=60) is Claim.DUPLICATE


async def test_sql_redeliveries_of_done_ids_skip_the_database(engine: AsyncEngine) -> None:
    store = SQLDedupeStore(engine, done_cache_size=1)
    for event_id in ("old", "new"):
        await store.claim(event_id, lease=60)
        await store.done(event_id)
    async with engine.begin() as connection:
        await connection.run_sync(handled_events.drop)
    assert await store.claim("new", lease=60) is Claim.DUPLICATE  # answered from memory
    assert store.known_done("new")
    assert not store.known_done("old")
    # "old" was forgotten: it needs the table.
    with pytest.raises(
        StoreError, match="the database failed while claiming event 'old'"
    ) as raised:
        await store.claim("old", lease=60)
    cause = raised.value.__cause__
    assert isinstance(cause, DBAPIError | engine.dialect.loaded_dbapi.Error)


@pytest.mark.postgres
async def test_postgres_connections_are_kept_under_concurrent_load(tmp_path: Path) -> None:
    from sqlalchemy import event

    async with open_sql_engine("postgresql", tmp_path) as engine:
        opened: list[object] = []
        event.listen(engine.sync_engine, "connect", lambda *_: opened.append(None))
        store = SQLDedupeStore(engine)
        for wave in range(3):  # more requests at once than the pool holds
            ids = [f"w{wave}-{n}" for n in range(25)]
            claims = await asyncio.gather(*(store.claim(i, lease=60) for i in ids))
            assert set(claims) == {Claim.CLAIMED}
        # SQLAlchemy's default pool would have opened and closed 10 extra ones per wave.
        assert len(opened) <= 15


# -- one transaction for the effect and the done mark (SQL stores) -----------------------------


@pytest.fixture(params=TRANSACTIONAL)
async def transactional_store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> AsyncIterator[DedupeStore]:
    if request.param.startswith("django"):
        yield await _django_dedupe(request.param, clock)
        return
    async with open_sql_engine(request.param, tmp_path) as engine:
        yield SQLDedupeStore(engine, clock=clock)


def _another_instance(store: DedupeStore) -> DedupeStore:
    """A store on the same database without this one's in-process memory."""
    from homing.django import DjangoDedupeStore

    if isinstance(store, DjangoDedupeStore):
        return DjangoDedupeStore(store.using)
    assert isinstance(store, SQLDedupeStore)
    return SQLDedupeStore(store.engine)


async def test_a_committed_transaction_marks_the_event_done(
    transactional_store: DedupeStore,
) -> None:
    async with transactional_store.transaction("e1") as transaction:
        assert transaction.claim is Claim.CLAIMED
    assert transactional_store.known_done("e1")
    async with transactional_store.transaction("e1") as again:
        assert again.claim is Claim.DUPLICATE
        assert again.connection is None
    fresh = _another_instance(transactional_store)  # no in-process memory: asks the database
    assert await fresh.claim("e1", lease=60) is Claim.DUPLICATE


async def test_an_exception_in_the_transaction_leaves_the_event_unmarked(
    transactional_store: DedupeStore,
) -> None:
    with pytest.raises(RuntimeError, match="the handler failed"):
        async with transactional_store.transaction("e1"):
            raise RuntimeError("the handler failed")
    assert not transactional_store.known_done("e1")
    async with transactional_store.transaction("e1") as transaction:
        assert transaction.claim is Claim.CLAIMED


async def test_a_live_claim_keeps_the_transaction_out_and_an_expired_one_does_not(
    transactional_store: DedupeStore, clock: Clock
) -> None:
    assert await transactional_store.claim("e1", lease=60) is Claim.CLAIMED
    clock.advance(59.5)
    async with transactional_store.transaction("e1") as transaction:
        assert transaction.claim is Claim.IN_PROGRESS
    clock.advance(0.5)  # the lease's end
    async with transactional_store.transaction("e1") as taken:
        assert taken.claim is Claim.CLAIMED


async def test_a_forced_transaction_runs_an_event_marked_done(
    transactional_store: DedupeStore,
) -> None:
    await transactional_store.done("e1")
    async with transactional_store.transaction("e1", force=True) as transaction:
        assert transaction.claim is Claim.CLAIMED


async def test_the_memory_store_has_no_transactions() -> None:
    with pytest.raises(ConfigurationError, match="SQLDedupeStore"):
        async with MemoryDedupeStore().transaction("e1"):
            pass


# -- a database that is not there: one error, with the reason and without the password --------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://homing:a-db-password@127.0.0.1:9/nowhere",
        "sqlite+aiosqlite:////nonexistent-dir/a-db-password/homing.db",
    ],
)
async def test_every_store_operation_reports_a_dead_database_as_store_error(url: str) -> None:
    engine = create_engine(url)
    dedupe, quarantine = SQLDedupeStore(engine), SQLQuarantineStore(engine)
    entry = QuarantinedMessage(id="q", reason="r", body=b"{}", received_at=datetime.now(UTC))
    operations = {
        "claim": dedupe.claim("e", lease=1),
        "renew": dedupe.renew("e", lease=1),
        "done": dedupe.done("e"),
        "release": dedupe.release("e"),
        "quarantine add": quarantine.add(entry),
        "quarantine get": quarantine.get("q"),
        "quarantine list": quarantine.list(),
        "quarantine delete": quarantine.delete("q"),
    }
    try:
        for name, operation in operations.items():
            with pytest.raises(StoreError, match="the database failed") as raised:
                await operation
            assert "a-db-password" not in str(raised.value).replace("/a-db-password/", ""), name
        with pytest.raises(StoreError, match="the database failed while opening the transaction"):
            async with dedupe.transaction("e"):
                pass
    finally:
        await engine.dispose()


async def test_a_refused_connection_is_sqlalchemys_operational_error() -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    engine = create_engine("postgresql+asyncpg://postgres@127.0.0.1:9/nowhere")
    try:
        with pytest.raises(OperationalError, match="could not connect"):
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_connections_the_server_killed_are_replaced_not_lent_again(tmp_path: Path) -> None:
    import asyncpg

    from homing.outbox import SQLOutbox
    from homing.publishers import MemoryPublisher

    async with open_sql_engine("postgresql", tmp_path) as engine:
        store, outbox = SQLDedupeStore(engine), SQLOutbox(engine, MemoryPublisher())
        await asyncio.gather(*(store.claim(f"warm-{n}", lease=60) for n in range(5)))
        admin = await asyncpg.connect(POSTGRES_URL.replace("+asyncpg", ""))
        try:  # as a restarted server does: every connection of this database, gone
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND application_name <> $1",
                DJANGO_TESTS,  # this process's Django tests keep theirs
            )
        finally:
            await admin.close()
        failures = 0
        for n in range(8):  # the first use finds the server gone; the pool is replaced
            try:
                await store.claim(f"after-{n}", lease=60)
            except StoreError:
                failures += 1
        assert failures <= 1
        assert await store.claim("then", lease=60) is Claim.CLAIMED
        async with store.transaction("then-tx") as transaction:
            assert transaction.claim is Claim.CLAIMED
        assert await outbox.count() == 0
