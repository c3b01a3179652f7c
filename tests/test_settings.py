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
            "HOMING_LEGACY_SECRET": "legacy-secret-of-16-bytes",
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
    assert settings.legacy_secret == "legacy-secret-of-16-bytes"
    assert settings.auth == "none"
    assert settings.publisher == "memory"
    assert settings.loopback_url == "http://127.0.0.1:9/events"
    assert settings.max_body_size == 2048
    assert settings.unknown_events == "retry"


def test_homing_app_names_the_service_for_the_commands_and_the_plugin() -> None:
    assert Settings.from_env({}).app is None
    assert Settings.from_env({"HOMING_APP": "shop:create_app"}).app == "shop:create_app"
    with pytest.raises(ConfigurationError, match=r"HOMING_APPS\b.*known: .*HOMING_APP\b"):
        Settings.from_env({"HOMING_APPS": "shop:app"})


def test_unknown_homing_variables_are_an_error() -> None:
    with pytest.raises(
        ConfigurationError, match=r"HOMING_SIGNING_KEY\b.*known: HOMING_SIGNING_KEYS"
    ):
        Settings.from_env({"HOMING_SIGNING_KEY": "a:0123456789abcdef"})


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("HOMING_AUTH", "oidcx", "HOMING_AUTH: must be one of hmac, oidc, both, none"),
        ("HOMING_PUBLISHER", "kafka", "must be one of loopback, memory, pubsub"),
        ("HOMING_ACK_DEADLINE", "5", "from 10 to 600"),
        ("HOMING_MAX_DELIVERY_ATTEMPTS", "101", "from 5 to 100"),
        ("HOMING_PUBLISH_TIMEOUT", "0", "positive number of seconds"),
        ("HOMING_MAX_BODY_SIZE", "-1", "whole number of at least 1"),
        ("HOMING_MAX_BODY_SIZE", "lots", "whole number of at least 1"),
        ("HOMING_SIGNING_KEYS", "nokey", "HOMING_SIGNING_KEYS: signing key #1"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env({variable: value})


def test_repr_masks_secrets() -> None:
    settings = Settings.from_env(
        {
            "HOMING_SIGNING_KEYS": "kid:super-secret-value-1",
            "HOMING_LEGACY_SECRET": "legacy-pw-of-16-bytes",
        }
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


def test_pubsub_settings() -> None:
    settings = Settings.from_env(
        {
            "GOOGLE_CLOUD_PROJECT": "acme",
            "HOMING_TOPIC": "events",
            "HOMING_SUBSCRIPTION": "events-push",
            "HOMING_PUSH_ENDPOINT": "https://api.example.com/events",
            "HOMING_PUSH_SERVICE_ACCOUNT": "pusher@acme.iam.gserviceaccount.com",
            "HOMING_ACK_DEADLINE": "120",
            "HOMING_MIN_BACKOFF": "5",
            "HOMING_MAX_BACKOFF": "60",
            "HOMING_MAX_DELIVERY_ATTEMPTS": "7",
            "HOMING_PUBLISH_TIMEOUT": "2.5",
        }
    )
    assert (settings.project, settings.topic, settings.subscription) == (
        "acme",
        "events",
        "events-push",
    )
    assert (settings.ack_deadline, settings.min_backoff, settings.max_backoff) == (120, 5, 60)
    assert settings.max_delivery_attempts == 7
    assert settings.publish_timeout == 2.5
    # The audience defaults to the push endpoint, the accepted account to the push account.
    assert settings.audience == "https://api.example.com/events"
    assert settings.allowed_push_accounts == ("pusher@acme.iam.gserviceaccount.com",)


def test_explicit_oidc_settings_win() -> None:
    settings = Settings.from_env(
        {
            "HOMING_PUSH_ENDPOINT": "https://api.example.com/events",
            "HOMING_OIDC_AUDIENCE": "my-audience",
            "HOMING_PUSH_SERVICE_ACCOUNT": "a@x.iam.gserviceaccount.com",
            "HOMING_OIDC_SERVICE_ACCOUNTS": (
                "b@x.iam.gserviceaccount.com, c@x.iam.gserviceaccount.com"
            ),
        }
    )
    assert settings.audience == "my-audience"
    assert settings.allowed_push_accounts == (
        "b@x.iam.gserviceaccount.com",
        "c@x.iam.gserviceaccount.com",
    )


def test_backoffs_must_be_ordered() -> None:
    with pytest.raises(ConfigurationError, match="HOMING_MIN_BACKOFF"):
        Settings.from_env({"HOMING_MIN_BACKOFF": "100", "HOMING_MAX_BACKOFF": "50"})


@pytest.mark.parametrize("variable", ["HOMING_FLUSH_TOKEN", "HOMING_LEGACY_SECRET"])
def test_tokens_and_legacy_secrets_need_16_bytes_and_are_never_echoed(variable: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{variable}: must be at least 16 bytes") as e:
        Settings.from_env({variable: "short-secret-x"})
    assert "short-secret-x" not in str(e.value)
    assert Settings.from_env({variable: "a-secret-of-16-bytes"})


def test_the_legacy_format_without_oidc_is_a_flag() -> None:
    assert Settings.from_env({"HOMING_LEGACY_WITHOUT_OIDC": "true"}).legacy_without_oidc
    assert not Settings.from_env({}).legacy_without_oidc
    with pytest.raises(ConfigurationError, match="HOMING_LEGACY_WITHOUT_OIDC: must be true or"):
        Settings.from_env({"HOMING_LEGACY_WITHOUT_OIDC": "maybe"})
