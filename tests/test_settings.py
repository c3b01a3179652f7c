from __future__ import annotations

import types

import pytest

import homing
from homing import ConfigurationError, Settings


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.signing_keys is None
    assert settings.auth == "hmac"
    assert settings.publisher == "loopback"
    assert settings.max_body_size == 10 * 1024 * 1024
    assert settings.unknown_events == "quarantine"


def test_reads_prefixed_variables() -> None:
    settings = Settings.from_env(
        {
            "HOMING_SIGNING_KEYS": "a:0123456789abcdef,b:fedcba9876543210",
            "HOMING_LEGACY_SECRET": "legacy-secret",
            "HOMING_AUTH": "none",
            "HOMING_PUBLISHER": "memory",
            "HOMING_LOOPBACK_URL": "http://127.0.0.1:9/events",
            "HOMING_MAX_BODY_SIZE": "2048",
            "HOMING_UNKNOWN_EVENTS": "retry",
            "UNRELATED": "ignored",
        }
    )
    assert settings.signing_keys is not None
    assert settings.signing_keys.key_ids == ("a", "b")
    assert settings.legacy_secret == "legacy-secret"
    assert settings.auth == "none"
    assert settings.publisher == "memory"
    assert settings.loopback_url == "http://127.0.0.1:9/events"
    assert settings.max_body_size == 2048
    assert settings.unknown_events == "retry"


def test_unknown_homing_variables_are_an_error() -> None:
    with pytest.raises(
        ConfigurationError, match=r"HOMING_SIGNING_KEY\b.*known: HOMING_SIGNING_KEYS"
    ):
        Settings.from_env({"HOMING_SIGNING_KEY": "a:0123456789abcdef"})


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("HOMING_AUTH", "oidcx", "must be one of hmac, none"),
        ("HOMING_PUBLISHER", "kafka", "must be one of loopback, memory"),
        ("HOMING_MAX_BODY_SIZE", "-1", "positive number"),
        ("HOMING_MAX_BODY_SIZE", "lots", "positive number"),
        ("HOMING_SIGNING_KEYS", "nokey", "HOMING_SIGNING_KEYS: signing key #1"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env({variable: value})


def test_repr_masks_secrets() -> None:
    settings = Settings.from_env(
        {"HOMING_SIGNING_KEYS": "kid:super-secret-value-1", "HOMING_LEGACY_SECRET": "legacy-pw"}
    )
    text = repr(settings)
    assert "super-secret-value-1" not in text
    assert "legacy-pw" not in text
    assert "legacy_secret=***" in text
    assert "kid" in text


def test_reading_the_environment_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMING_AUTH", "none")
    assert Settings.from_env().auth == "none"
    assert Settings().auth == "hmac"


def test_public_api_is_exactly_all() -> None:
    exported = {
        name
        for name, value in vars(homing).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert exported == set(homing.__all__) - {"__version__"}
    assert sorted(homing.__all__) == homing.__all__
