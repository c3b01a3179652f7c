"""Every Python block of README.md and docs/*.md runs, or says why not (``tests/docs/blocks.py``).

A block shown as part of a service (a handler, the outbox, telemetry) runs here among the names
it leaves out — the reference service's tables and models, a ``Homing`` on SQLite — and the
test then pushes a signed event through what the block built and asserts the effect it claims.
"""

from __future__ import annotations

import ast
import doctest
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from homing import Delivery, Homing, KeyRing, MemoryPublisher, OutgoingMessage, Settings, Signer
from homing.fastapi import push_router
from homing.outbox import SQLOutbox
from homing.stores.sql import SQLDedupeStore, SQLQuarantineStore, create_engine, create_tables
from homing.telemetry.metrics_server import MetricsServer
from homing.testing import assert_handled, push
from tests.docs.blocks import MARKER, PAGES, Block, all_blocks, python_blocks
from tests.support import ROOT
from tests.support.ports import free_port
from users_api.app import UserNameChanged
from users_api.db import Base, Notification, User

BLOCKS = all_blocks()


class InvoiceDue(BaseModel):
    invoice_id: int
    email: str


@dataclass
class Mailer:
    """Stands in for an e-mail client: keeps what it was asked to send."""

    sent: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, **message: Any) -> None:
        self.sent.append(message)


async def execute(block: Block, namespace: dict[str, Any]) -> None:
    """Run ``block`` in ``namespace``, ``await`` at the top level allowed; a traceback names
    the page and the line."""
    source = "\n" * block.line + block.code  # line numbers as on the page
    code = compile(
        source, str(block.page), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )
    result = eval(code, namespace)  # noqa: S307 - the docs' own code, which is the point
    if inspect.iscoroutine(result):
        await result


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """SQLite with homing's tables and the reference service's, holding user 7, Ann."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/docs.db")
    await create_tables(engine)
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
        await connection.execute(insert(User), {"id": 7, "name": "Ann", "email": "ann@example.com"})
    yield engine
    await engine.dispose()


def service(engine: AsyncEngine) -> Homing:
    homing = Homing(
        signer=Signer(KeyRing.generate()),
        publisher=MemoryPublisher(),
        dedupe=SQLDedupeStore(engine),
        quarantine=SQLQuarantineStore(engine),
    )
    homing.events.register("user.name.changed", UserNameChanged)
    homing.events.register("invoice.due", InvoiceDue)
    return homing


async def notifications(engine: AsyncEngine) -> list[tuple[str, int]]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(Notification.event_id, Notification.user_id))
        return [(row.event_id, row.user_id) for row in rows]


async def run_handlers(block: Block, engine: AsyncEngine) -> None:
    """Handlers: a renamed user gets one notification however often the event comes; an
    invoice due sends one e-mail."""
    homing, mailer = service(engine), Mailer()
    namespace = {
        "homing": homing,
        "UserNameChanged": UserNameChanged,
        "InvoiceDue": InvoiceDue,
        "Notification": Notification,
        "Delivery": Delivery,
        "insert": insert,
        "mailer": mailer,
        "sessions": async_sessionmaker(engine, expire_on_commit=False),
    }
    await execute(block, namespace)
    assert homing.handlers.get("user.name.changed") or homing.handlers.get("invoice.due")
    if homing.handlers.get("user.name.changed"):
        renamed = UserNameChanged(user_id=7, old_name="Ann", new_name="Bea")
        assert_handled(await push(homing, renamed, event_id="e-1", message_id="m-1"))
        assert_handled(await push(homing, renamed, event_id="e-1", message_id="m-2"), "duplicate")
        assert await notifications(engine) == [("e-1", 7)]
    if homing.handlers.get("invoice.due"):
        due = InvoiceDue(invoice_id=12, email="ann@example.com")
        assert_handled(await push(homing, due, event_id="e-2"))
        assert_handled(await push(homing, due, event_id="e-2", message_id="again"), "duplicate")
        assert mailer.sent == [{"to": "ann@example.com", "subject": "Invoice 12 is due"}]


async def run_outbox(block: Block, engine: AsyncEngine) -> None:
    """The outbox: the rename commits, the event is published, and it is the rename's."""
    homing = service(engine)
    publisher = MemoryPublisher()
    outbox = SQLOutbox(engine, publisher)
    namespace = {
        "engine": engine,
        "outbox": outbox,
        "homing": homing,
        "UserNameChanged": UserNameChanged,
        "rename": text("UPDATE users SET name = :name WHERE id = :id"),
    }
    try:
        await execute(block, namespace)
    finally:
        await outbox.aclose()
    assert namespace["published"] is True
    [(message_id, message)] = publisher.messages
    staged = namespace["staged"]
    assert isinstance(staged, OutgoingMessage)
    assert message.event_id == staged.event_id
    async with engine.connect() as connection:
        assert await connection.scalar(select(User.name).where(User.id == 7)) == "Bea"
        waiting = await connection.scalar(select(func.count()).select_from(text("homing_outbox")))
    assert waiting == 0  # published, and deleted at close
    received: list[UserNameChanged] = []

    @homing.handler(UserNameChanged)
    async def record(event: UserNameChanged) -> None:
        received.append(event)

    assert_handled(await push(homing, publisher.envelope(message_id, message)))
    assert received == [UserNameChanged(user_id=7, old_name="Ann", new_name="Bea")]


async def run_telemetry(block: Block, engine: AsyncEngine) -> None:
    """Telemetry: a push through the app is counted on ``GET /metrics``, on the loopback port."""
    homing = service(engine)

    @homing.handler(UserNameChanged)
    async def handle(event: UserNameChanged) -> None:
        pass

    app = FastAPI(lifespan=homing.lifespan)
    app.include_router(push_router(homing))
    settings = Settings(log_format="text", metrics_port=free_port())
    namespace = {"homing": homing, "app": app, "settings": settings}
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        await execute(block, namespace)  # configure_logging replaces the root's handlers
        renamed = UserNameChanged(user_id=7, old_name="Ann", new_name="Bea")
        assert_handled(await push(app, renamed, homing=homing))
        server = namespace["metrics_server"]
        assert isinstance(server, MetricsServer)
        async with server, httpx.AsyncClient() as client:
            scraped = await client.get(f"http://127.0.0.1:{settings.metrics_port}/metrics")
            metrics = scraped.text
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    line = 'homing_pushes_total{event_type="user.name.changed",outcome="done"} 1.0'
    assert line in metrics.splitlines()


class AuditLog:
    """Stands in for a blocking audit writer: keeps what it was given, and on which thread."""

    def __init__(self) -> None:
        self.written: list[tuple[str, dict[str, Any], int]] = []

    def write(self, event_id: str, record: dict[str, Any]) -> None:
        self.written.append((event_id, record, threading.get_ident()))


async def run_several_handlers(block: Block, engine: AsyncEngine) -> None:
    """Two handlers of one type, the model from the annotation, one in a thread: each runs
    once, and a redelivery runs neither again."""
    homing, mailer, audit_log = service(engine), Mailer(), AuditLog()
    namespace = {
        "homing": homing,
        "UserNameChanged": UserNameChanged,
        "Delivery": Delivery,
        "mailer": mailer,
        "audit_log": audit_log,
    }
    await execute(block, namespace)
    assert len(homing.handlers.get("user.name.changed")) == 2
    renamed = UserNameChanged(user_id=7, old_name="Ann", new_name="Bea")
    assert_handled(await push(homing, renamed, event_id="e-1", message_id="m-1"))
    assert_handled(await push(homing, renamed, event_id="e-1", message_id="m-2"), "duplicate")
    assert mailer.sent == [{"to": "user-7", "subject": "You are Bea now"}]
    [(event_id, record, thread)] = audit_log.written
    assert (event_id, record["new_name"]) == ("e-1", "Bea")
    assert thread != threading.get_ident()


RUNNERS: dict[str, Callable[[Block, AsyncEngine], Awaitable[None]]] = {
    "handlers": run_handlers,
    "several-handlers": run_several_handlers,
    "outbox": run_outbox,
    "telemetry": run_telemetry,
}


def test_every_block_is_run_checked_or_says_why_not() -> None:
    assert len(BLOCKS) >= 11  # the parser still finds them (README's indented one included)
    for block in BLOCKS:
        where = f"{block.name}: "
        assert block.kind in (None, "run", "checked-by", "illustrative"), where + str(block.kind)
        if block.kind == "run":
            assert block.value in RUNNERS, where + f"no runner {block.value!r}"
        if block.kind == "illustrative":
            assert len(block.value.split()) >= 2, where + "an illustrative block says why"


@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
async def test_a_block(
    block: Block, engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if block.kind == "illustrative":
        pytest.skip(f"illustrative: {block.value}")
    elif block.kind == "checked-by":
        test = ROOT / block.value
        assert test.is_file(), f"no test {block.value}"
        assert test.name.startswith("test_"), f"{block.value} is not a test module"
        named = Path(block.included).stem if block.included else block.page.name
        assert named in test.read_text(), f"{block.value} does not mention {named}"
    elif block.kind == "run":
        await RUNNERS[block.value](block, engine)
    elif block.language == "pycon":
        monkeypatch.chdir(tmp_path)
        parsed = doctest.DocTestParser().get_doctest(block.code, {}, block.name, None, block.line)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        runner.run(parsed)
        assert runner.failures == 0, block.name
    else:  # on its own, as a module in an empty directory
        monkeypatch.chdir(tmp_path)
        await execute(block, {"__name__": "__docs__"})


def test_every_marker_stands_before_a_block() -> None:
    """A marker is read from the line before the fence: one left behind when its block moved
    or was deleted would leave nothing checked, and is caught here."""
    markers = [
        f"{page.name}:{number}"
        for page in PAGES
        for number, line in enumerate(page.read_text().splitlines(), 1)
        if MARKER.match(line)
    ]
    assert len(markers) == sum(1 for block in BLOCKS if block.kind is not None), markers


def test_the_parser_finds_indented_blocks_and_their_markers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Text.\n\n"
        "````md\n```python\nnot a block: inside another fence\n```\n````\n\n"
        "- an item:\n\n"
        "  <!-- illustrative: needs Google credentials -->\n\n"
        "  ```python\n  def f() -> int:\n      return 1\n  ```\n\n"
        '```py title="x.py"\nx = 1\n```\n'
    )
    [indented, titled] = python_blocks(page)
    assert (indented.line, indented.kind, indented.value) == (
        13,
        "illustrative",
        "needs Google credentials",
    )
    assert indented.code == "def f() -> int:\n    return 1\n"
    assert (titled.language, titled.kind, titled.code) == ("py", None, "x = 1\n")
