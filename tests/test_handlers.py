"""Handlers as users write them: plain ``def``, several per event type, the model from the
annotation; and the hooks around them, as middleware with one context per push."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from homing import (
    Claim,
    Delivery,
    EventRegistrationError,
    Homing,
    Hook,
    KeyRing,
    MemoryPublisher,
    OutgoingMessage,
    PublishContext,
    Publisher,
    PublishFailed,
    PushContext,
    PushResult,
    Signer,
)
from homing.stores.sql import SQLDedupeStore
from homing.testing import push_body
from tests.conftest import SQL_BACKENDS, OrderPlaced, open_sql_engine


class Refunded(BaseModel):
    order_id: int


def _homing(**options: Any) -> Homing:
    options.setdefault("publisher", MemoryPublisher())
    homing = Homing(signer=Signer(KeyRing({"k": "a-secret-of-enough-length"})), **options)
    homing.events.register("order.placed", OrderPlaced)
    homing.events.register("order.refunded", Refunded)
    return homing


async def test_a_plain_def_handler_runs_in_a_worker_thread_once() -> None:
    homing = _homing()
    ran: list[tuple[int, int]] = []

    @homing.handler(OrderPlaced)
    def record(event: OrderPlaced) -> None:  # blocking code is welcome here
        ran.append((event.order_id, threading.get_ident()))

    body = push_body(homing, OrderPlaced(order_id=1, total_cents=2), event_id="e-1")
    assert (await homing.handle_push(body)).outcome == "done"
    assert (await homing.handle_push(body)).outcome == "duplicate"
    assert [order for order, _ in ran] == [1]
    assert ran[0][1] != threading.get_ident()  # not on the event loop's thread


async def test_a_plain_def_handler_that_raises_is_retried() -> None:
    homing = _homing()
    calls: list[int] = []

    @homing.handler(OrderPlaced)
    def flaky(event: OrderPlaced, delivery: Delivery) -> None:
        calls.append(event.order_id)
        if len(calls) == 1:
            raise ConnectionError("the mail server hung up")

    body = push_body(homing, OrderPlaced(order_id=3, total_cents=2), event_id="e-3")
    assert (await homing.handle_push(body)).outcome == "handler_failed"
    assert (await homing.handle_push(body)).outcome == "done"
    assert (await homing.handle_push(body)).outcome == "duplicate"
    assert calls == [3, 3]


async def test_a_database_handler_must_be_async(sql_engine: AsyncEngine) -> None:
    homing = _homing(dedupe=SQLDedupeStore(sql_engine))

    def write(event: OrderPlaced, delivery: Delivery) -> None: ...

    with pytest.raises(EventRegistrationError, match=r"must be async: delivery\.session"):
        homing.handler(OrderPlaced, effects="database")(write)


async def test_the_model_comes_from_the_annotation() -> None:
    homing = _homing()
    seen: list[BaseModel] = []

    @homing.handler
    async def placed(event: OrderPlaced) -> None:
        seen.append(event)

    @homing.handler(name="refunds")
    async def refunded(event: Refunded, delivery: Delivery) -> None:
        seen.append(event)

    await homing.handle_push(push_body(homing, OrderPlaced(order_id=1, total_cents=2)))
    await homing.handle_push(push_body(homing, Refunded(order_id=1)))
    assert [type(event) for event in seen] == [OrderPlaced, Refunded]


def test_a_handler_without_a_model_is_refused_by_name() -> None:
    homing = _homing()

    async def untyped(event) -> None:  # type: ignore[no-untyped-def]
        pass

    with pytest.raises(EventRegistrationError, match=r"untyped names no model: annotate its"):
        homing.handler(untyped)


def test_a_model_that_is_not_registered_is_refused() -> None:
    homing = _homing()

    class Unknown(BaseModel):
        x: int

    async def handle(event: Unknown) -> None: ...

    with pytest.raises(EventRegistrationError, match="Unknown"):
        homing.handler(Unknown)(handle)


@pytest.mark.parametrize("backend", ["memory", *SQL_BACKENDS])
async def test_several_handlers_each_run_once_and_a_redelivery_runs_only_the_unfinished(
    backend: str, tmp_path: Path
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        engine = None
        if backend != "memory":
            engine = await stack.enter_async_context(open_sql_engine(backend, tmp_path))
        await _several_handlers(engine)


async def _several_handlers(engine: AsyncEngine | None) -> None:
    homing = _homing(dedupe=SQLDedupeStore(engine) if engine is not None else None)
    ran: list[str] = []
    failing = {"ship": True}

    @homing.handler(OrderPlaced)
    async def bill(event: OrderPlaced) -> None:
        ran.append("bill")

    @homing.handler(OrderPlaced, name="ship")
    def ship(event: OrderPlaced) -> None:
        ran.append("ship")
        if failing["ship"]:
            raise RuntimeError("the warehouse is down")

    @homing.handler(OrderPlaced, name="mail")
    async def mail(event: OrderPlaced) -> None:
        ran.append("mail")

    body = push_body(homing, OrderPlaced(order_id=1, total_cents=2), event_id="order-1")
    first = await homing.handle_push(body)
    assert (first.status, first.outcome) == (500, "handler_failed")
    assert ran == ["bill", "ship", "mail"]  # one failing handler holds back no other

    failing["ship"] = False
    assert (await homing.handle_push(body)).outcome == "done"
    assert ran == ["bill", "ship", "mail", "ship"]  # only the one not yet done
    assert (await homing.handle_push(body)).outcome == "duplicate"
    assert ran == ["bill", "ship", "mail", "ship"]

    if engine is not None:
        # The first handler keeps the event id as its key (a second handler added later
        # leaves its marks valid); the others are remembered under their names. A store with
        # no memory of this process's asks the database.
        fresh = SQLDedupeStore(engine)
        for key in ("order-1", "order-1/ship", "order-1/mail"):
            assert await fresh.claim(key, lease=5) is Claim.DUPLICATE
        assert await fresh.claim("order-1/other", lease=5) is Claim.CLAIMED


async def test_a_drop_by_one_handler_quarantines_once_the_others_ran() -> None:
    from homing import Drop

    homing = _homing()
    ran: list[str] = []

    @homing.handler(OrderPlaced)
    async def keep(event: OrderPlaced) -> None:
        ran.append("keep")

    @homing.handler(OrderPlaced, name="picky")
    async def picky(event: OrderPlaced) -> None:
        raise Drop("not for us")

    body = push_body(homing, OrderPlaced(order_id=1, total_cents=2), event_id="order-9")
    result = await homing.handle_push(body)
    assert (result.outcome, result.detail) == (
        "quarantined",
        "picky: dropped by the handler: not for us",
    )
    assert ran == ["keep"]
    [entry] = await homing.quarantine.list()
    assert entry.event_id == "order-9"


def test_two_handlers_of_one_type_need_two_names() -> None:
    homing = _homing()

    async def handle(event: OrderPlaced) -> None: ...

    homing.handler(OrderPlaced, name="same")(handle)
    with pytest.raises(EventRegistrationError, match="already has a handler named 'same'"):
        homing.handler(OrderPlaced, name="same")(handle)
    with pytest.raises(EventRegistrationError, match="must be 1-120 letters"):
        homing.handler(OrderPlaced, name="no spaces")(handle)


# -- hooks as middleware --------------------------------------------------------------------


class Tracing(Hook):
    """Writes every point it sees, with its context object, to a shared list."""

    def __init__(self, name: str, log: list[tuple[str, str, object]]) -> None:
        self.name, self.log = name, log

    def before_sign(self, context: PublishContext) -> None:
        context.attributes[f"homing-{self.name}"] = "1"
        self.log.append((self.name, "before_sign", context))

    def after_publish(self, context: PublishContext) -> None:
        self.log.append((self.name, "after_publish", context))

    def on_push_received(self, context: PushContext) -> None:
        context.state[self] = "mine"
        self.log.append((self.name, "on_push_received", context))

    def on_authenticated(self, context: PushContext) -> None:
        self.log.append((self.name, "on_authenticated", context))

    def before_handlers(self, context: PushContext) -> None:
        self.log.append((self.name, "before_handlers", context))

    def on_push_handled(self, context: PushContext) -> None:
        assert context.state[self] == "mine"  # its own state, kept between points
        self.log.append((self.name, "on_push_handled", context))


async def test_hooks_run_in_order_and_close_in_reverse_with_one_context_per_piece_of_work() -> None:
    log: list[tuple[str, str, object]] = []
    outer, inner = Tracing("outer", log), Tracing("inner", log)
    homing = _homing(hooks=[inner])
    homing.hooks.insert(0, outer)  # the order can be set: outer now wraps inner

    @homing.handler(OrderPlaced)
    async def handle(event: OrderPlaced) -> None:
        log.append(("handler", "run", None))

    await homing.publish(OrderPlaced(order_id=1, total_cents=2))
    assert isinstance(homing.publisher, MemoryPublisher)
    [(_, message)] = homing.publisher.messages
    assert message.attributes["homing-outer"] == message.attributes["homing-inner"] == "1"
    assert [(name, point) for name, point, _ in log] == [
        ("outer", "before_sign"),
        ("inner", "before_sign"),
        ("inner", "after_publish"),
        ("outer", "after_publish"),
    ]
    assert len({id(context) for _, _, context in log}) == 1  # one publish, one context
    publish_context = log[0][2]
    assert isinstance(publish_context, PublishContext)
    assert publish_context.error is None

    log.clear()
    await homing.handle_push(push_body(homing, OrderPlaced(order_id=1, total_cents=2)))
    assert [(name, point) for name, point, _ in log] == [
        ("outer", "on_push_received"),
        ("inner", "on_push_received"),
        ("outer", "on_authenticated"),
        ("inner", "on_authenticated"),
        ("outer", "before_handlers"),
        ("inner", "before_handlers"),
        ("handler", "run"),
        ("inner", "on_push_handled"),
        ("outer", "on_push_handled"),
    ]
    contexts = {id(context) for name, _, context in log if name != "handler"}
    assert len(contexts) == 1
    handled = log[-1][2]
    assert isinstance(handled, PushContext)
    assert handled.result == PushResult(204, "done")
    assert handled.verified is not None
    assert handled.verified.event_type == "order.placed"


async def test_a_duplicate_never_reaches_before_handlers() -> None:
    log: list[tuple[str, str, object]] = []
    homing = _homing(hooks=[Tracing("only", log)])

    @homing.handler(OrderPlaced)
    async def handle(event: OrderPlaced) -> None: ...

    body = push_body(homing, OrderPlaced(order_id=1, total_cents=2), event_id="same")
    await homing.handle_push(body)
    log.clear()
    assert (await homing.handle_push(body)).outcome == "duplicate"
    assert [point for _, point, _ in log] == [
        "on_push_received",
        "on_authenticated",
        "on_push_handled",
    ]


class Unreachable(Publisher):
    async def _send(self, message: OutgoingMessage) -> str:
        raise PublishFailed(
            "the broker is unreachable", event_type=message.event_type, event_id=message.event_id
        )


async def test_a_failed_publish_reaches_the_hooks_with_its_error_and_still_raises() -> None:
    log: list[tuple[str, str, object]] = []
    homing = _homing(hooks=[Tracing("only", log)], publisher=Unreachable())
    with pytest.raises(PublishFailed, match="the broker is unreachable"):
        await homing.publish(OrderPlaced(order_id=1, total_cents=2))
    assert [point for _, point, _ in log] == ["before_sign", "after_publish"]
    context = log[-1][2]
    assert isinstance(context, PublishContext)
    assert isinstance(context.error, PublishFailed)
    assert context.seconds >= 0


def test_only_hooks_may_be_added() -> None:
    homing = _homing()
    with pytest.raises(TypeError, match=r"a hook must subclass homing\.Hook, not object"):
        homing.hooks.append(object())  # type: ignore[arg-type]
