from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

import homing
from homing import KeyRing, Signer, parse_push
from homing.cli import main

KEYS = "k1:0123456789abcdef0123"


def test_envelope_prints_a_signed_push_body(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOMING_SIGNING_KEYS", KEYS)
    code = main(["envelope", "user.name.changed", '{"user_id": 1}', "--attribute", "tenant=a"])
    assert code == 0
    push = parse_push(capsys.readouterr().out.encode())
    assert orjson.loads(push.data) == {"user_id": 1}
    verified = Signer(KeyRing.from_string(KEYS)).verify(
        push.data, push.attributes, message_id=push.message_id
    )
    assert verified.event_type == "user.name.changed"
    assert verified.attributes["tenant"] == "a"


def test_envelope_without_keys_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HOMING_SIGNING_KEYS", raising=False)
    assert main(["envelope", "a.b", "{}"]) == 2
    assert "HOMING_SIGNING_KEYS is not set" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["envelope", "a.b", "{not json"], "not valid JSON"),
        (["envelope", "a.b", "{}", "--attribute", "novalue"], "KEY=VALUE"),
        (["envelope", "a.b", "{}", "--attribute", "homing-x=1"], "reserved"),
    ],
)
def test_envelope_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.setenv("HOMING_SIGNING_KEYS", KEYS)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_keys_new_prints_a_usable_pair(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "new"]) == 0
    ring = KeyRing.from_string(capsys.readouterr().out.strip())
    assert len(ring.signing_secret) >= 32


def test_version_prints_homings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"homing {homing.__version__}\n"


def test_the_installed_command_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "homing.cli", "keys", "new"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ":" in result.stdout
