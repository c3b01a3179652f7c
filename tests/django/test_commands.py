"""``manage.py check`` reports homing's misconfigurations; ``manage.py homing`` runs the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.test import override_settings

from homing import MemoryPublisher
from homing.django import config, outbox
from homing.django.models import OutboxEntry, QuarantineEntry
from tests.django.service import Ping

SERVICE = {"APP": "tests.django.service:create", "PUBLISHER": "memory"}


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    config.forget()
    yield
    config.forget()
    QuarantineEntry.objects.all().delete()
    OutboxEntry.objects.all().delete()


@pytest.mark.parametrize(
    ("homing", "expected"),
    [
        ({"AUTH": "bogus"}, "homing.E001"),
        ({"NOT_A_SETTING": "x"}, "NOT_A_SETTING"),
        ({**SERVICE, "DATABASE": "elsewhere"}, "homing.E002"),
        ({"AUTH": "oidc", "SIGNING_KEYS": "k1:a-secret-of-enough-length"}, "homing.E004"),
        ({"APP": "tests.django.nowhere:create"}, "homing.E006"),
        ({"APP": "tests.django.service:Ping"}, "homing.E006"),
    ],
)
def test_check_reports_what_is_misconfigured(homing: dict[str, str], expected: str) -> None:
    with override_settings(HOMING=homing), pytest.raises(SystemCheckError, match=expected):
        call_command("check", tags=["homing"])


def test_check_passes_a_configured_service_and_warns_without_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with override_settings(HOMING=SERVICE):
        call_command("check", tags=["homing"])
    with override_settings(HOMING={}):
        call_command("check", tags=["homing"])
    assert "homing.W002" in capsys.readouterr().err


def test_the_homing_command_plans_from_django_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = {
        "PROJECT": "my-project",
        "TOPIC": "orders",
        "SUBSCRIPTION": "orders-push",
        "PUSH_ENDPOINT": "https://svc.example/events",
    }
    with override_settings(HOMING=settings):
        call_command("homing", "plan")
    printed = capsys.readouterr().out
    assert "projects/my-project/subscriptions/orders-push" in printed
    assert "https://svc.example/events" in printed


def test_the_homing_command_lists_the_quarantine_on_djangos_database(
    capsys: pytest.CaptureFixture[str],
) -> None:
    QuarantineEntry.objects.create(
        id="q-1",
        reason="kept for a person",
        body=b"{}",
        received_at=datetime.now(UTC),
        event_type="test.ping",
        event_id="q-1",
    )
    with override_settings(HOMING=SERVICE):
        call_command("homing", "quarantine", "list")
    printed = capsys.readouterr().out
    assert "q-1" in printed
    assert "kept for a person" in printed


def test_the_homing_command_flushes_djangos_outbox(capsys: pytest.CaptureFixture[str]) -> None:
    with override_settings(HOMING=SERVICE):
        homing = config.service()
        message = homing.sign(Ping(n=1))
        OutboxEntry.objects.create(
            event_id=message.event_id,
            event_type=message.event_type,
            data=message.data,
            attributes="{}",
            created_at=datetime.now(UTC),
        )
        call_command("homing", "outbox", "flush")
        assert outbox.count() == 0
    assert "published 1, failed 0, still waiting 0" in capsys.readouterr().out
    assert isinstance(homing.publisher, MemoryPublisher)
    assert [m.event_id for _, m in homing.publisher.messages] == [message.event_id]


def test_a_failing_homing_command_raises_a_command_error() -> None:
    with (
        override_settings(HOMING=SERVICE),
        pytest.raises(CommandError, match="homing quarantine show nope exited 2"),
    ):
        call_command("homing", "quarantine", "show", "nope")


def test_homings_migrations_match_its_models(capsys: pytest.CaptureFixture[str]) -> None:
    with override_settings(HOMING=SERVICE):
        call_command("makemigrations", "homing", check=True, dry_run=True)  # exits 1 if not
    assert "No changes detected" in capsys.readouterr().out
