"""Exactly-once in Django's transaction: the effect and the done mark in one atomic() block,
and the outbox written in the caller's transaction and published on commit (django.md's
run_in and publish blocks)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from django.db import transaction
from pydantic import BaseModel

from homing import (
    Delivery,
    Homing,
    InvalidDelay,
    KeyRing,
    MemoryPublisher,
    OutgoingMessage,
    Publisher,
    Signer,
)
from homing.django import DjangoDedupeStore, DjangoQuarantineStore, flush, publish, run_in
from homing.django.models import HandledEvent, OutboxEntry
from homing.errors import ConfigurationError
from homing.stores import Claim
from homing.testing import push_body
from tests.django.testapp.models import Notification

#: A context variable set by the push's caller: a plain def handler must see it.
TRACE: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace", default=None)


class UserRenamed(BaseModel):
    user_id: int
    name: str


def _service(database: str, publisher: Publisher | None = None) -> Homing:
    homing = Homing(
        signer=Signer(KeyRing({"k1": "a-secret-of-enough-length"})),
        publisher=publisher or MemoryPublisher(),
        dedupe=DjangoDedupeStore(database),
        quarantine=DjangoQuarantineStore(database),
    )
    homing.events.register("user.renamed", UserRenamed)
    return homing


@pytest.fixture(autouse=True)
def _empty(database: str) -> Iterator[None]:
    yield
    for model in (Notification, HandledEvent, OutboxEntry):
        model.objects.using(database).all().delete()


def _notifications(database: str) -> list[str]:
    return list(Notification.objects.using(database).values_list("text", flat=True))


def _state(database: str, event_id: str) -> str | None:
    row = HandledEvent.objects.using(database).filter(event_id=event_id).first()
    return None if row is None else str(row.state)


async def test_a_database_handler_commits_its_effect_with_the_done_mark(database: str) -> None:
    homing = _service(database)

    @homing.handler(UserRenamed, effects="database")
    async def notify(event: UserRenamed, delivery: Delivery) -> None:
        await Notification.objects.using(database).acreate(
            event_id=delivery.event_id, text=f"renamed {event.name}"
        )

    body = push_body(homing, UserRenamed(user_id=1, name="Zoe"), event_id="e-1")
    first = await homing.handle_push(body)
    again = await homing.handle_push(body)
    assert (first.outcome, again.outcome) == ("done", "duplicate")
    assert await sync_to_async(_notifications)(database) == ["renamed Zoe"]
    assert await sync_to_async(_state)(database, "e-1") == "done"


async def test_a_failing_database_handler_rolls_back_its_effect_and_the_mark(
    database: str,
) -> None:
    homing = _service(database)
    failures = [RuntimeError("the handler broke after writing")]

    @homing.handler(UserRenamed, effects="database")
    async def notify(event: UserRenamed, delivery: Delivery) -> None:
        def write() -> None:  # synchronous ORM code, inside the same atomic() block
            Notification.objects.using(database).create(event_id=delivery.event_id, text="x")
            assert transaction.get_connection(database).in_atomic_block

        await run_in(delivery, write)
        if failures:
            raise failures.pop()

    body = push_body(homing, UserRenamed(user_id=1, name="Zoe"), event_id="e-2")
    failed = await homing.handle_push(body)
    assert (failed.status, failed.outcome) == (500, "handler_failed")
    assert await sync_to_async(_notifications)(database) == []
    assert await sync_to_async(_state)(database, "e-2") is None
    redelivered = await homing.handle_push(body)
    assert redelivered.outcome == "done"
    assert await sync_to_async(_notifications)(database) == ["x"]


async def test_concurrent_duplicate_deliveries_give_one_effect(database: str) -> None:
    homing = _service(database)
    entered = asyncio.Event()

    @homing.handler(UserRenamed, effects="database")
    async def notify(event: UserRenamed, delivery: Delivery) -> None:
        await Notification.objects.using(database).acreate(event_id=delivery.event_id, text="x")
        entered.set()
        await asyncio.sleep(0.05)  # holds the transaction open while the others arrive

    bodies = [
        push_body(homing, UserRenamed(user_id=1, name="Zoe"), event_id="e-3", message_id=str(n))
        for n in range(8)
    ]
    results = await asyncio.gather(*(homing.handle_push(body) for body in bodies))
    outcomes = sorted(result.outcome for result in results)
    assert outcomes == ["done"] + ["duplicate"] * 7
    assert entered.is_set()
    assert await sync_to_async(_notifications)(database) == ["x"]


async def test_a_plain_def_database_handler_runs_in_the_block_on_one_kept_thread(
    database: str,
) -> None:
    homing = _service(database)
    seen: list[tuple[str, bool, str | None]] = []
    failures = [RuntimeError("the handler broke after writing")]

    @homing.handler(UserRenamed, effects="database")
    def notify(event: UserRenamed, delivery: Delivery) -> None:
        Notification.objects.using(database).create(event_id=delivery.event_id, text=event.name)
        connection = transaction.get_connection(database)
        seen.append((threading.current_thread().name, connection.in_atomic_block, TRACE.get()))
        if failures:
            raise failures.pop()

    TRACE.set("the push's")
    body = push_body(homing, UserRenamed(user_id=1, name="Zoe"), event_id="e-7")
    failed = await homing.handle_push(body)
    assert (failed.status, failed.outcome) == (500, "handler_failed")
    assert await sync_to_async(_notifications)(database) == []  # rolled back with the mark
    assert await sync_to_async(_state)(database, "e-7") is None
    done = await homing.handle_push(body)
    again = await homing.handle_push(body)
    assert (done.outcome, again.outcome) == ("done", "duplicate")
    assert await sync_to_async(_notifications)(database) == ["Zoe"]
    assert await sync_to_async(_state)(database, "e-7") == "done"
    assert len(seen) == 2  # not run for the duplicate
    for thread, in_block, trace in seen:
        assert thread.startswith("homing-django-transaction")
        assert in_block
        assert trace == "the push's"  # the push's context goes along


async def test_concurrent_duplicates_of_a_plain_def_handler_give_one_effect(
    database: str,
) -> None:
    homing = _service(database)
    calls: list[str] = []

    @homing.handler(UserRenamed, effects="database")
    def notify(event: UserRenamed, delivery: Delivery) -> None:
        calls.append(delivery.message_id)
        Notification.objects.using(database).create(event_id=delivery.event_id, text="x")
        time.sleep(0.05)  # holds the transaction open while the others arrive

    bodies = [
        push_body(homing, UserRenamed(user_id=1, name="Zoe"), event_id="e-8", message_id=str(n))
        for n in range(8)
    ]
    results = await asyncio.gather(*(homing.handle_push(body) for body in bodies))
    assert sorted(result.outcome for result in results) == ["done"] + ["duplicate"] * 7
    assert len(calls) == 1
    assert await sync_to_async(_notifications)(database) == ["x"]


def test_a_plain_def_database_handler_is_refused_on_a_store_without_transactions() -> None:
    homing = Homing(signer=Signer(KeyRing({"k1": "a-secret-of-enough-length"})))
    homing.events.register("user.renamed", UserRenamed)
    with pytest.raises(ConfigurationError, match="needs a dedupe store on the handler's"):

        @homing.handler(UserRenamed, effects="database")
        def notify(event: UserRenamed) -> None: ...


def test_a_publish_in_atomic_is_sent_on_commit_and_never_on_rollback(database: str) -> None:
    publisher = MemoryPublisher()
    homing = _service(database, publisher)
    with transaction.atomic(using=database):
        event_id = publish(UserRenamed(user_id=1, name="Zoe"), homing=homing, using=database)
        assert OutboxEntry.objects.using(database).filter(event_id=event_id).exists()
        assert publisher.messages == []  # not before the commit
    assert [message.event_id for _, message in publisher.messages] == [event_id]
    assert not OutboxEntry.objects.using(database).exists()

    def fails() -> None:
        with transaction.atomic(using=database):
            publish(UserRenamed(user_id=2, name="Ann"), homing=homing, using=database)
            raise RuntimeError("the view failed")

    with pytest.raises(RuntimeError, match="the view failed"):
        fails()
    assert len(publisher.messages) == 1
    assert not OutboxEntry.objects.using(database).exists()


class _Down(Publisher):
    async def _send(self, message: OutgoingMessage) -> str:
        raise ConnectionError("the broker is down")


def test_an_event_the_broker_refused_waits_and_a_flush_publishes_it(database: str) -> None:
    homing = _service(database, _Down())
    with transaction.atomic(using=database):
        event_id = publish(UserRenamed(user_id=1, name="Zoe"), homing=homing, using=database)
    row = OutboxEntry.objects.using(database).get(event_id=event_id)
    assert row.attempts == 1
    assert "the broker is down" in row.last_error

    up = MemoryPublisher()
    homing.publisher = up
    report = flush(homing=homing, using=database)
    assert (report.published, report.failed) == (1, 0)
    assert [message.event_id for _, message in up.messages] == [event_id]
    assert not OutboxEntry.objects.using(database).exists()


def test_what_a_killed_process_left_is_drained_by_the_next_publish(database: str) -> None:
    publisher = MemoryPublisher()
    homing = _service(database, publisher)
    # A process that committed its row and died before publishing it.
    left = homing.sign(UserRenamed(user_id=9, name="Old"))
    with transaction.atomic(using=database):
        OutboxEntry.objects.using(database).create(
            event_id=left.event_id,
            event_type=left.event_type,
            data=left.data,
            attributes='{"' + '", "'.join(f'{k}": "{v}' for k, v in left.attributes.items()) + '"}',
            created_at="2020-01-01T00:00:00Z",
        )
    from homing.django import outbox

    outbox._drains.backlog = True  # a fresh process: the first publish drains
    publish(UserRenamed(user_id=1, name="New"), homing=homing, using=database)
    published = [message.event_id for _, message in publisher.messages]
    assert left.event_id in published
    assert len(published) == 2
    assert not OutboxEntry.objects.using(database).exists()


def test_a_database_handler_publishes_with_its_effect(database: str) -> None:
    """The handler's event is staged in its transaction and published once that commits."""
    publisher = MemoryPublisher()
    homing = _service(database, publisher)

    class Followup(BaseModel):
        user_id: int

    homing.events.register("user.followup", Followup)

    @homing.handler(UserRenamed, effects="database")
    async def notify(event: UserRenamed, delivery: Delivery) -> None:
        def effect() -> None:
            Notification.objects.using(database).create(event_id=delivery.event_id, text="x")
            publish(Followup(user_id=event.user_id), homing=homing, using=database)

        await run_in(delivery, effect)

    from homing.django.config import loop

    body = push_body(homing, UserRenamed(user_id=4, name="Zoe"), event_id="e-4")
    result = loop.run(homing.handle_push(body))
    assert result.outcome == "done"
    assert [message.event_type for _, message in publisher.messages] == ["user.followup"]
    assert _notifications(database) == ["x"]


def test_a_delayed_publish_keeps_its_time_in_the_outbox_and_is_refused_where_it_cannot_wait(
    database: str,
) -> None:
    homing = _service(database, _DownQueue())
    at = datetime.now(UTC) + timedelta(hours=2)
    with transaction.atomic(using=database):
        event_id = publish(
            UserRenamed(user_id=1, name="Later"), at=at, homing=homing, using=database
        )
    assert OutboxEntry.objects.using(database).get(event_id=event_id).deliver_at == at

    up = MemoryPublisher()
    homing.publisher = up
    assert flush(homing=homing, using=database).published == 1
    [(_, message)] = up.messages
    assert (message.event_id, message.deliver_at) == (event_id, at)  # published late, same time

    pubsub_like = _service(database, _NoDelay())
    with pytest.raises(InvalidDelay, match="_NoDelay cannot delay an event"):
        publish(
            UserRenamed(user_id=2, name="X"),
            delay=timedelta(minutes=1),
            homing=pubsub_like,
            using=database,
        )
    assert not OutboxEntry.objects.using(database).exists()


class _DownQueue(_Down):
    max_delay = timedelta(days=30)  # a queue that can delay (Cloud Tasks), down


class _NoDelay(Publisher):
    async def _send(self, message: OutgoingMessage) -> str:
        return "1"


async def test_a_push_cancelled_while_its_transaction_opens_leaves_no_lock(database: str) -> None:
    """Django cancels a view whose client went away: the transaction opening on its thread
    is rolled back there, so the next delivery claims the event at once."""
    store = DjangoDedupeStore(database)
    for attempt in range(5):  # cancelled at different points of the opening

        async def hold(event_id: str) -> None:
            async with store.transaction(event_id):
                await asyncio.sleep(60)

        task = asyncio.create_task(hold(f"cancelled-{attempt}"))
        for _ in range(attempt):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(5), store.transaction(f"cancelled-{attempt}") as again:
            assert again.claim is Claim.CLAIMED  # nothing was committed, nothing is held
    assert await sync_to_async(_state)(database, "cancelled-0") == "done"
