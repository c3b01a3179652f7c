"""`homing dev`'s environment and signing key; the command runs in tests/e2e/test_dev_broker.py."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from homing.dev import DEV_TOPIC, dev_environment, dev_signing_keys
from homing.errors import ConfigurationError

BROKER = {"grpc": "127.0.0.1:9000", "http": "http://127.0.0.1:9001"}


def test_the_broker_is_always_pointed_at_and_the_defaults_yield_to_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOMING_TOPIC", "mine")
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "elsewhere:1")
    env = dev_environment(BROKER, host="0.0.0.0", port=8080, push_path="/events")  # noqa: S104
    assert env["PUBSUB_EMULATOR_HOST"] == "127.0.0.1:9000"
    assert env["HOMING_OIDC_CERTS_URL"] == "http://127.0.0.1:9001/certs"
    assert env["HOMING_PUSH_ENDPOINT"] == "http://127.0.0.1:8080/events"
    assert "HOMING_TOPIC" not in env  # the environment's own value stays
    monkeypatch.delenv("HOMING_TOPIC")
    assert dev_environment(BROKER, host="h", port=1, push_path="/e")["HOMING_TOPIC"] == DEV_TOPIC


def test_the_signing_key_is_made_once_for_the_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "broker.sqlite3.signing-keys"
    key = dev_signing_keys(path)
    assert dev_signing_keys(path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_broker_imports_nothing_of_homing_dev() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, homing.broker.cli, homing.broker.broker, homing.broker.server; "
            "print('homing.dev' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert loaded.strip() == "False"


@pytest.mark.parametrize(
    "endpoint",
    ["https://api.example.com/events", "http://10.1.2.3:8080/events", "http://[2001:db8::1]/e"],
)
def test_a_push_endpoint_on_another_machine_is_refused_unless_forced(
    monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    # A shell that still holds production's endpoint must not get this machine's pushes.
    monkeypatch.setenv("HOMING_PUSH_ENDPOINT", endpoint)
    with pytest.raises(ConfigurationError, match="--allow-remote-push"):
        dev_environment(BROKER, host="127.0.0.1", port=8080, push_path="/events")
    env = dev_environment(
        BROKER, host="127.0.0.1", port=8080, push_path="/events", allow_remote_push=True
    )
    assert "HOMING_PUSH_ENDPOINT" not in env  # the shell's value stays, as asked


@pytest.mark.parametrize(
    "endpoint", ["http://localhost:9/events", "http://127.0.0.2/e", "http://[::1]:8080/e"]
)
def test_a_loopback_push_endpoint_is_accepted(
    monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    monkeypatch.setenv("HOMING_PUSH_ENDPOINT", endpoint)
    dev_environment(BROKER, host="127.0.0.1", port=8080, push_path="/events")


def test_an_app_that_hard_codes_a_publisher_is_told_it_bypasses_the_broker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from fastapi import FastAPI

    from homing import Homing, KeyRing, MemoryPublisher, Signer
    from homing.asgi import PushEndpoint, PushFastPath
    from homing.dev import warn_if_bypassing

    homing = Homing(signer=Signer(KeyRing.generate()), publisher=MemoryPublisher())
    app = PushFastPath(FastAPI(), PushEndpoint(homing))
    warn_if_bypassing(app, "mine:app")
    assert "mine:app publishes with MemoryPublisher, which bypasses the local broker" in (
        caplog.text
    )
