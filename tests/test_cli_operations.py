"""`homing quarantine ...` and `homing outbox flush` against the reference service's database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest

from homing import QuarantinedMessage, build_push
from homing.cli import main
from homing.outbox import SQLOutbox
from users_api import ServiceConfig, create_app
from users_api.app import UserNameChanged

KEYS = "cli-key:a-cli-secret-long-enough-to-sign"
APP = ["--app", "users_api.app:create_app"]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/ops.db")
    monkeypatch.setenv("HOMING_SIGNING_KEYS", KEYS)
    monkeypatch.setenv("HOMING_PUBLISHER", "memory")


async def _quarantine_one() -> int:
    """Keep a dead-lettered copy of a valid event, as its push leaves it in the quarantine.

    (Pushed, it would need a verified OIDC token to be taken for one: tests/test_hostile.py.)
    """
    app = create_app(ServiceConfig.from_env())
    homing = app.state.homing
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            user = (await client.post("/users", json={"name": "A", "email": "a@x.io"})).json()
            message = homing.sign(
                UserNameChanged(user_id=user["id"], old_name="A", new_name="B"), event_id="e-dl"
            )
            dead = {**message.attributes, "CloudPubSubDeadLetterSourceDeliveryCount": "5"}
            body = build_push(message.data, dead, message_id="m1", subscription="dead")
            entry = QuarantinedMessage(
                id="e-dl",
                reason="dead-lettered by Pub/Sub from subscription dead after 5 delivery attempts",
                body=body,
                received_at=datetime.now(UTC),
                event_type="user.name.changed",
                event_id="e-dl",
            )
            assert await homing.quarantine.add(entry)
    return int(user["id"])


async def _notifications(user_id: int) -> list[dict[str, str]]:
    app = create_app(ServiceConfig.from_env())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            return (await client.get(f"/users/{user_id}/notifications")).json()  # type: ignore[no-any-return]


def test_list_show_replay_purge(env: None, capsys: pytest.CaptureFixture[str]) -> None:
    user_id = asyncio.run(_quarantine_one())
    assert main(["quarantine", "list", *APP]) == 0
    out = capsys.readouterr().out
    assert out.startswith("e-dl\t")
    assert "user.name.changed\tdead-lettered by Pub/Sub" in out

    assert main(["quarantine", "show", "e-dl", *APP]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert shown["event_id"] == "e-dl"
    attributes = shown["envelope"]["message"]["attributes"]
    assert attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"

    assert main(["quarantine", "replay", "e-dl", *APP]) == 0
    assert capsys.readouterr().out == "e-dl: replayed, handled\n"
    assert [n["event_id"] for n in asyncio.run(_notifications(user_id))] == ["e-dl"]
    assert main(["quarantine", "list", *APP]) == 0
    assert capsys.readouterr().out == "the quarantine is empty\n"


def test_a_replay_that_no_longer_verifies_stays(
    env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(_quarantine_one())
    monkeypatch.setenv("HOMING_SIGNING_KEYS", "rotated:a-completely-different-secret")
    assert main(["quarantine", "replay", "e-dl", *APP]) == 1
    assert "e-dl: still quarantined (unauthenticated: signed with key 'cli-key'" in (
        capsys.readouterr().out
    )
    assert main(["quarantine", "list", *APP]) == 0
    assert "replay: signed with key 'cli-key'" in capsys.readouterr().out

    assert main(["quarantine", "purge", *APP]) == 2
    assert "pass --all" in capsys.readouterr().err
    assert main(["quarantine", "purge", "--all", *APP]) == 0
    assert capsys.readouterr().out == "purged 1 of 1\n"


async def _stage_one() -> None:
    app = create_app(ServiceConfig.from_env())
    async with app.router.lifespan_context(app):
        outbox: SQLOutbox = app.state.outbox
        message = app.state.homing.sign(UserNameChanged(user_id=1, old_name="a", new_name="b"))
        async with outbox.engine.begin() as connection:
            await outbox.stage(connection, message)


def test_outbox_flush(env: None, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(_stage_one())
    assert main(["outbox", "flush", *APP]) == 0
    assert capsys.readouterr().out == "published 1, failed 0, still waiting 0\n"


def test_bad_app_specs_are_one_line(env: None, capsys: pytest.CaptureFixture[str]) -> None:
    for spec, message in (
        ("nocolon", "MODULE:ATTRIBUTE"),
        ("no_such_module_x:app", "cannot import"),
        ("users_api.app:nothing_here", "has no 'nothing_here'"),
        ("users_api.app:DEFAULT_DATABASE_URL", "neither a Homing"),
    ):
        assert main(["quarantine", "list", "--app", spec]) == 2
        err = capsys.readouterr().err
        assert message in err
        assert err.count("\n") == 1
