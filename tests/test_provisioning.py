from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import urllib3
from google.iam.v1 import policy_pb2  # type: ignore[import-untyped]

from homing import ConfigurationError, Settings
from homing.cli import main
from homing.provisioning import (
    CALL_TIMEOUT,
    CloudRunIamClient,
    DeadLetter,
    Difference,
    IamBinding,
    Plan,
    ProvisioningFailed,
    PushAuth,
    apply_iam,
    check,
    eventarc_trigger,
    has_member,
    plan,
    provision,
    render_eventarc_gcloud,
    render_eventarc_terraform,
    render_gcloud,
    render_terraform,
)
from tests.support.ports import free_port
from tests.support.required import required_tool

PROJECT = "homing-test"
ENDPOINT = "https://api-abc.a.run.app/events"
PUSHER = "pusher@homing-test.iam.gserviceaccount.com"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: no HOMING_* variable, project or emulator from the outside."""
    for name in list(os.environ):
        if name.startswith("HOMING_") or name in ("GOOGLE_CLOUD_PROJECT", "PUBSUB_EMULATOR_HOST"):
            monkeypatch.delenv(name)


def full_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "project": PROJECT,
        "topic": "events",
        "subscription": "events-push",
        "push_endpoint": ENDPOINT,
        "push_service_account": PUSHER,
        "dead_letter_topic": "events-dead-letter",
    }
    values.update(overrides)
    return Settings(**values)


# --- the plan ---------------------------------------------------------------------------------


def test_plan_describes_topics_subscription_and_bindings() -> None:
    result = plan(full_settings(ack_deadline=300, min_backoff=5, max_backoff=120))

    assert result.project == PROJECT
    assert result.topic.name == "projects/homing-test/topics/events"
    assert result.dead_letter_topic is not None
    assert result.dead_letter_topic.name == "projects/homing-test/topics/events-dead-letter"
    sub = result.subscription
    assert sub.name == "projects/homing-test/subscriptions/events-push"
    assert sub.topic == "projects/homing-test/topics/events"
    assert sub.push_endpoint == ENDPOINT
    assert sub.push_auth == PushAuth(PUSHER, audience=ENDPOINT)  # audience defaults to endpoint
    assert (sub.ack_deadline_seconds, sub.min_backoff, sub.max_backoff) == (300, 5, 120)
    assert sub.dead_letter == DeadLetter("projects/homing-test/topics/events-dead-letter", 5)
    assert sub.expires_after is None
    assert [(b.kind, b.resource, b.role) for b in result.bindings] == [
        ("service_account", PUSHER, "roles/iam.serviceAccountTokenCreator"),
        ("topic", "projects/homing-test/topics/events-dead-letter", "roles/pubsub.publisher"),
        (
            "subscription",
            "projects/homing-test/subscriptions/events-push",
            "roles/pubsub.subscriber",
        ),
    ]


def test_plan_without_push_account_or_dead_letter_topic_needs_no_bindings() -> None:
    result = plan(full_settings(push_service_account=None, dead_letter_topic=None))
    assert result.subscription.push_auth is None
    assert result.subscription.dead_letter is None
    assert result.dead_letter_topic is None
    assert result.bindings == ()


def test_plan_accepts_full_names_and_an_explicit_audience() -> None:
    result = plan(
        full_settings(
            topic="projects/other-project/topics/events",
            subscription="projects/homing-test/subscriptions/events-push",
            oidc_audience="https://audience.example",
            max_delivery_attempts=9,
        )
    )
    assert result.topic.name == "projects/other-project/topics/events"
    assert result.subscription.topic == "projects/other-project/topics/events"
    assert result.subscription.push_auth == PushAuth(PUSHER, "https://audience.example")
    assert result.subscription.dead_letter is not None
    assert result.subscription.dead_letter.max_delivery_attempts == 9


def test_missing_settings_are_named_in_one_error() -> None:
    expected = (
        "missing setting(s) for the Pub/Sub plan: set GOOGLE_CLOUD_PROJECT, HOMING_TOPIC, "
        "HOMING_SUBSCRIPTION, HOMING_PUSH_ENDPOINT (or pass --project, --topic, --subscription, "
        "--push-endpoint)"
    )
    with pytest.raises(ConfigurationError, match=f"^{re.escape(expected)}$"):
        plan(Settings(push_service_account=PUSHER))


def test_only_the_missing_settings_are_named() -> None:
    expected = (
        "missing setting(s) for the Pub/Sub plan: set HOMING_SUBSCRIPTION, HOMING_PUSH_ENDPOINT "
        "(or pass --subscription, --push-endpoint)"
    )
    with pytest.raises(ConfigurationError, match=f"^{re.escape(expected)}$"):
        plan(Settings(project=PROJECT, topic="events"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"topic": "ev"}, "HOMING_TOPIC: 'ev' is not a valid topic id: ids are 3-255 characters"),
        ({"topic": "1events"}, "HOMING_TOPIC: '1events' is not a valid topic id"),
        ({"topic": "goog-events"}, "HOMING_TOPIC: 'goog-events' is not a valid topic id"),
        ({"topic": "events!"}, "HOMING_TOPIC: 'events!' is not a valid topic id"),
        ({"topic": "x" * 256}, "HOMING_TOPIC: 'xxx"),
        ({"subscription": "a/b"}, "HOMING_SUBSCRIPTION: 'a/b' is neither a subscription id"),
        ({"topic": "projects/homing-test/subscriptions/s-1"}, "HOMING_TOPIC: 'projects/"),
        ({"dead_letter_topic": "events"}, "HOMING_DEAD_LETTER_TOPIC is the topic itself"),
        ({"project": "P"}, "GOOGLE_CLOUD_PROJECT: 'P' is not a project id"),
        ({"push_endpoint": "api.example/events"}, "HOMING_PUSH_ENDPOINT: 'api.example/events'"),
        ({"push_service_account": "pusher"}, "HOMING_PUSH_SERVICE_ACCOUNT: 'pusher' is not"),
        (
            {"push_service_account": None, "oidc_audience": "aud"},
            "HOMING_OIDC_AUDIENCE is set but HOMING_PUSH_SERVICE_ACCOUNT is not",
        ),
        (
            {"push_service_account": None, "auth": "oidc"},
            "HOMING_AUTH=oidc needs HOMING_PUSH_SERVICE_ACCOUNT",
        ),
    ],
)
def test_invalid_settings_say_what_is_wrong(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match="^" + re.escape(message)):
        plan(full_settings(**overrides))


def test_ids_at_the_limits_are_valid() -> None:
    result = plan(full_settings(topic="abc", subscription="a" + "-_.~+%9" * 36))
    assert result.topic.name.endswith("/topics/abc")
    assert len(result.subscription.name.rsplit("/", 1)[1]) == 253


# --- renderings -------------------------------------------------------------------------------


def test_gcloud_rendering() -> None:
    script = render_gcloud(plan(full_settings(ack_deadline=300, min_backoff=5, max_backoff=120)))
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "set -eu" in lines
    assert "gcloud pubsub topics create projects/homing-test/topics/events" in lines
    assert "gcloud pubsub topics create projects/homing-test/topics/events-dead-letter" in lines
    create = script[script.index("gcloud pubsub subscriptions create") :].split("\n\n")[0]
    assert create.splitlines() == [
        "gcloud pubsub subscriptions create projects/homing-test/subscriptions/events-push \\",
        "    --topic=projects/homing-test/topics/events \\",
        f"    --push-endpoint={ENDPOINT} \\",
        f"    --push-auth-service-account={PUSHER} \\",
        f"    --push-auth-token-audience={ENDPOINT} \\",
        "    --ack-deadline=300 \\",
        "    --min-retry-delay=5s \\",
        "    --max-retry-delay=120s \\",
        "    --dead-letter-topic=projects/homing-test/topics/events-dead-letter \\",
        "    --max-delivery-attempts=5 \\",
        "    --expiration-period=never",
    ]
    agent = (
        'PUBSUB_SERVICE_AGENT="serviceAccount:service-$(gcloud projects describe homing-test '
        "--format='value(projectNumber)')@gcp-sa-pubsub.iam.gserviceaccount.com\""
    )
    assert agent in lines
    member = '    --member="${PUBSUB_SERVICE_AGENT}" \\'
    iam = script[script.index(agent) + len(agent) + 1 :]
    assert iam.splitlines() == [
        f"gcloud iam service-accounts add-iam-policy-binding {PUSHER} \\",
        member,
        "    --role=roles/iam.serviceAccountTokenCreator",
        "gcloud pubsub topics add-iam-policy-binding "
        "projects/homing-test/topics/events-dead-letter \\",
        member,
        "    --role=roles/pubsub.publisher",
        "gcloud pubsub subscriptions add-iam-policy-binding "
        "projects/homing-test/subscriptions/events-push \\",
        member,
        "    --role=roles/pubsub.subscriber",
    ]


def test_gcloud_rendering_quotes_for_the_shell_and_skips_absent_parts() -> None:
    endpoint = "https://api.example/events?a=1&b=$HOME"
    script = render_gcloud(
        plan(
            full_settings(push_endpoint=endpoint, push_service_account=None, dead_letter_topic=None)
        )
    )
    assert f"    '--push-endpoint={endpoint}' \\" in script.splitlines()
    assert "--push-auth" not in script
    assert "--dead-letter-topic" not in script
    assert "add-iam-policy-binding" not in script
    assert "gcloud projects describe" not in script


def test_terraform_rendering() -> None:
    hcl = render_terraform(plan(full_settings(ack_deadline=300, min_backoff=5, max_backoff=120)))
    assert 'data "google_project" "homing" {\n  project_id = "homing-test"\n}\n' in hcl
    assert (
        '  pubsub_service_agent = "serviceAccount:service-${data.google_project.homing.number}'
        '@gcp-sa-pubsub.iam.gserviceaccount.com"'
    ) in hcl
    assert (
        'resource "google_pubsub_topic" "homing" {\n'
        '  project = "homing-test"\n'
        '  name    = "events"\n'
        "}\n"
    ) in hcl
    assert 'resource "google_pubsub_topic" "homing_dead_letter" {' in hcl
    subscription = hcl[hcl.index('resource "google_pubsub_subscription" "homing"') :]
    subscription = subscription[: subscription.index("\n}\n") + 3]
    assert subscription == (
        'resource "google_pubsub_subscription" "homing" {\n'
        '  project              = "homing-test"\n'
        '  name                 = "events-push"\n'
        "  topic                = google_pubsub_topic.homing.id\n"
        "  ack_deadline_seconds = 300\n"
        "\n"
        "  push_config {\n"
        f'    push_endpoint = "{ENDPOINT}"\n'
        "\n"
        "    oidc_token {\n"
        f'      service_account_email = "{PUSHER}"\n'
        f'      audience              = "{ENDPOINT}"\n'
        "    }\n"
        "  }\n"
        "\n"
        "  retry_policy {\n"
        '    minimum_backoff = "5s"\n'
        '    maximum_backoff = "120s"\n'
        "  }\n"
        "\n"
        "  dead_letter_policy {\n"
        "    dead_letter_topic     = google_pubsub_topic.homing_dead_letter.id\n"
        "    max_delivery_attempts = 5\n"
        "  }\n"
        "\n"
        "  expiration_policy {\n"
        '    ttl = ""\n'
        "  }\n"
        "}\n"
    )
    assert (
        'resource "google_service_account_iam_member" "homing_push_token_creator" {\n'
        f'  service_account_id = "projects/-/serviceAccounts/{PUSHER}"\n'
        '  role               = "roles/iam.serviceAccountTokenCreator"\n'
        "  member             = local.pubsub_service_agent\n"
    ) in hcl
    assert (
        'resource "google_pubsub_topic_iam_member" "homing_dead_letter_publisher" {\n'
        "  project = google_pubsub_topic.homing_dead_letter.project\n"
        "  topic   = google_pubsub_topic.homing_dead_letter.name\n"
        '  role    = "roles/pubsub.publisher"\n'
        "  member  = local.pubsub_service_agent\n"
    ) in hcl
    assert (
        'resource "google_pubsub_subscription_iam_member" "homing_dead_letter_subscriber" {\n'
        "  project      = google_pubsub_subscription.homing.project\n"
        "  subscription = google_pubsub_subscription.homing.name\n"
        '  role         = "roles/pubsub.subscriber"\n'
        "  member       = local.pubsub_service_agent\n"
    ) in hcl


def test_terraform_rendering_without_bindings_and_with_an_odd_endpoint() -> None:
    hcl = render_terraform(
        plan(
            full_settings(
                push_endpoint='https://api.example/e?x="${y}"',
                push_service_account=None,
                dead_letter_topic=None,
            )
        )
    )
    assert "google_project" not in hcl
    assert "iam_member" not in hcl
    assert "oidc_token" not in hcl
    assert "dead_letter_policy" not in hcl
    assert r'push_endpoint = "https://api.example/e?x=\"$${y}\""' in hcl


@pytest.fixture
def terraform() -> str:
    return required_tool("terraform", install="https://developer.hashicorp.com/terraform/install")


def test_terraform_rendering_is_formatted_as_terraform_fmt_would(
    terraform: str, tmp_path: Path
) -> None:
    (tmp_path / "homing.tf").write_text(render_terraform(plan(full_settings())))
    result = subprocess.run(
        [terraform, "fmt", "-check", "-diff", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TF_CLI_CONFIG_FILE": "/dev/null"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the commands, in process -----------------------------------------------------------------

FLAGS = [
    "--project",
    PROJECT,
    "--topic",
    "events",
    "--subscription",
    "events-push",
    "--push-endpoint",
    ENDPOINT,
]


def test_plan_command_prints_gcloud_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", *FLAGS, "--push-service-account", PUSHER]) == 0
    out = capsys.readouterr().out
    assert out == render_gcloud(plan(full_settings(dead_letter_topic=None)))


def test_plan_command_prints_terraform(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--format", "terraform", *FLAGS]) == 0
    out = capsys.readouterr().out
    assert out == render_terraform(
        plan(full_settings(push_service_account=None, dead_letter_topic=None))
    )


def test_flags_override_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    monkeypatch.setenv("HOMING_TOPIC", "events")
    monkeypatch.setenv("HOMING_SUBSCRIPTION", "events-push")
    monkeypatch.setenv("HOMING_PUSH_ENDPOINT", ENDPOINT)
    monkeypatch.setenv("HOMING_ACK_DEADLINE", "60")
    monkeypatch.setenv("HOMING_DEAD_LETTER_TOPIC", "events-dead-letter")
    argv = ["plan", "--ack-deadline", "120", "--audience", "aud", "--push-service-account", PUSHER]
    assert main([*argv, "--dead-letter-topic", "", "--max-backoff", "30"]) == 0
    out = capsys.readouterr().out
    assert "--ack-deadline=120 \\" in out
    assert "--push-auth-token-audience=aud \\" in out
    assert "--max-retry-delay=30s \\" in out
    assert "dead-letter" not in out  # an empty flag unsets, as an empty variable does


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ack-deadline", "5"], "--ack-deadline: must be a whole number from 10 to 600, not '5'"),
        (["--max-delivery-attempts", "x"], "--max-delivery-attempts: must be a whole number"),
        (["--min-backoff", "60", "--max-backoff", "30"], "HOMING_MIN_BACKOFF (60) exceeds"),
        (["--topic", "ab"], "HOMING_TOPIC: 'ab' is not a valid topic id"),
    ],
)
def test_plan_command_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["plan", *FLAGS, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"homing: error: {message}")
    assert err.count("\n") == 1


@pytest.mark.parametrize("command", ["plan", "provision", "check"])
def test_missing_settings_fail_every_command_in_one_line(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    assert main([command, "--topic", "events"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "homing: error: missing setting(s) for the Pub/Sub plan: set GOOGLE_CLOUD_PROJECT, "
        "HOMING_SUBSCRIPTION, HOMING_PUSH_ENDPOINT (or pass --project, --subscription, "
        "--push-endpoint)\n"
    )


def test_the_plan_command_runs_as_a_program() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMING_")}
    env["GOOGLE_CLOUD_PROJECT"] = PROJECT
    result = subprocess.run(
        [sys.executable, "-m", "homing.cli", "plan", *FLAGS[2:], "--format", "terraform"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert 'resource "google_pubsub_subscription" "homing" {' in result.stdout
    assert result.stderr == ""


# --- IAM, at the client seam ------------------------------------------------------------------


class FakeIamClient:
    """The IAM half of a Pub/Sub admin client: policies kept per resource, with an etag check."""

    def __init__(self) -> None:
        self.policies: dict[str, Any] = {}
        self.writes = 0
        self._new = policy_pb2.Policy

    def get_iam_policy(self, *, request: dict[str, Any], **_options: Any) -> Any:
        policy = self._new()
        policy.CopyFrom(self.policies.setdefault(request["resource"], self._new(etag=b"0")))
        return policy

    def set_iam_policy(self, *, request: dict[str, Any], **_options: Any) -> Any:
        current = self.policies[request["resource"]]
        assert request["policy"].etag == current.etag, "write without the current etag"
        self.writes += 1
        stored = self._new()
        stored.CopyFrom(request["policy"])
        stored.etag = str(self.writes).encode()
        self.policies[request["resource"]] = stored
        return stored


def test_apply_iam_grants_each_binding_once() -> None:
    the_plan = plan(full_settings())
    publisher, subscriber = FakeIamClient(), FakeIamClient()
    dead_letter = "projects/homing-test/topics/events-dead-letter"
    existing = policy_pb2.Policy(etag=b"7")
    existing.bindings.add(role="roles/pubsub.publisher", members=["user:a@example.com"])
    publisher.policies[dead_letter] = existing
    agent = "serviceAccount:service-42@gcp-sa-pubsub.iam.gserviceaccount.com"

    first = [str(o) for o in apply_iam(the_plan, publisher, subscriber, "42")]

    assert first[0].startswith(
        f"iam roles/iam.serviceAccountTokenCreator on service account {PUSHER}: not applied by "
        f"homing (needs the IAM API); run: gcloud iam service-accounts add-iam-policy-binding "
        f"{PUSHER} --member={agent} --role=roles/iam.serviceAccountTokenCreator"
    )
    assert first[1:] == [
        f"iam roles/pubsub.publisher on topic {dead_letter}: granted to {agent}",
        "iam roles/pubsub.subscriber on subscription "
        f"projects/homing-test/subscriptions/events-push: granted to {agent}",
    ]
    publishers = publisher.policies[dead_letter].bindings
    assert [(b.role, list(b.members)) for b in publishers] == [
        ("roles/pubsub.publisher", ["user:a@example.com", agent])
    ]
    second = [str(o) for o in apply_iam(the_plan, publisher, subscriber, "42")]
    assert [line.rsplit(": ", 1)[1] for line in second[1:]] == ["unchanged", "unchanged"]
    assert (publisher.writes, subscriber.writes) == (1, 1)


def test_a_plan_without_bindings_applies_none() -> None:
    the_plan = plan(full_settings(push_service_account=None, dead_letter_topic=None))
    assert list(apply_iam(the_plan, FakeIamClient(), FakeIamClient(), "42")) == []


def test_bindings_name_their_reason() -> None:
    for binding in plan(full_settings()).bindings:
        assert isinstance(binding, IamBinding)
        assert binding.reason.startswith("to ")


# --- against the official emulator ------------------------------------------------------------


@pytest.fixture
def emulator(pubsub_emulator: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    return pubsub_emulator


@pytest.fixture
def subscriber(emulator: str) -> Iterator[Any]:
    from google.cloud import pubsub_v1

    with pubsub_v1.SubscriberClient() as client:
        yield client


@pytest.fixture
def publisher(emulator: str) -> Iterator[Any]:
    from google.cloud import pubsub_v1

    client = pubsub_v1.PublisherClient()
    yield client
    client.transport.close()


class Names:
    """Unique ids for one test, and the flags that name them."""

    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:10]
        self.topic = f"events-{suffix}"
        self.dead_letter = f"dead-{suffix}"
        self.subscription = f"push-{suffix}"
        self.topic_path = f"projects/{PROJECT}/topics/{self.topic}"
        self.dead_letter_path = f"projects/{PROJECT}/topics/{self.dead_letter}"
        self.subscription_path = f"projects/{PROJECT}/subscriptions/{self.subscription}"

    def flags(self, *extra: str) -> list[str]:
        return [
            "--project",
            PROJECT,
            "--topic",
            self.topic,
            "--subscription",
            self.subscription,
            "--push-endpoint",
            "http://127.0.0.1:9/events",
            "--push-service-account",
            PUSHER,
            "--dead-letter-topic",
            self.dead_letter,
            "--ack-deadline",
            "300",
            "--min-backoff",
            "5",
            "--max-backoff",
            "120",
            "--max-delivery-attempts",
            "7",
            *extra,
        ]


@pytest.fixture
def names() -> Names:
    return Names()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    """Exit status, stdout lines and stderr of the command; stderr without the note that IAM
    was not compared on the emulator (`test_check_on_the_emulator_says_iam_was_not_compared`)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    err = "".join(
        line
        for line in captured.err.splitlines(keepends=True)
        if not line.startswith("iam: not compared, the emulator at ")
    )
    return code, captured.out.splitlines(), err


def test_provision_creates_everything(
    capsys: pytest.CaptureFixture[str], names: Names, subscriber: Any, publisher: Any
) -> None:
    code, out, err = run(capsys, "provision", *names.flags())

    assert (code, err) == (0, "")
    assert out[:3] == [
        f"topic {names.topic_path}: created",
        f"topic {names.dead_letter_path}: created",
        f"subscription {names.subscription_path}: created",
    ]
    assert out[3].startswith("iam: skipped, the emulator at ")
    publisher.get_topic(topic=names.topic_path, timeout=10)
    publisher.get_topic(topic=names.dead_letter_path, timeout=10)
    sub = subscriber.get_subscription(subscription=names.subscription_path, timeout=10)
    assert sub.topic == names.topic_path
    assert sub.push_config.push_endpoint == "http://127.0.0.1:9/events"
    # Stored by the emulator although it never sends the token.
    assert sub.push_config.oidc_token.service_account_email == PUSHER
    assert sub.push_config.oidc_token.audience == "http://127.0.0.1:9/events"
    assert sub.ack_deadline_seconds == 300
    assert sub.retry_policy.minimum_backoff == timedelta(seconds=5)
    assert sub.retry_policy.maximum_backoff == timedelta(seconds=120)
    assert sub.dead_letter_policy.dead_letter_topic == names.dead_letter_path
    assert sub.dead_letter_policy.max_delivery_attempts == 7
    assert "expiration_policy" in sub
    assert "ttl" not in sub.expiration_policy  # never expires


def test_a_second_provision_changes_nothing_and_check_is_clean(
    capsys: pytest.CaptureFixture[str], names: Names, subscriber: Any
) -> None:
    assert run(capsys, "provision", *names.flags())[0] == 0
    before = subscriber.get_subscription(subscription=names.subscription_path, timeout=10)

    code, out, err = run(capsys, "provision", *names.flags())

    assert (code, err) == (0, "")
    assert out[:3] == [
        f"topic {names.topic_path}: unchanged",
        f"topic {names.dead_letter_path}: unchanged",
        f"subscription {names.subscription_path}: unchanged",
    ]
    assert subscriber.get_subscription(subscription=names.subscription_path, timeout=10) == before
    assert run(capsys, "check", *names.flags()) == (0, ["no drift"], "")


def test_check_names_what_is_missing(
    capsys: pytest.CaptureFixture[str], emulator: str, names: Names
) -> None:
    assert run(capsys, "check", *names.flags()) == (
        1,
        [
            f"topic {names.topic_path} is missing",
            f"topic {names.dead_letter_path} is missing",
            f"subscription {names.subscription_path} is missing",
        ],
        "",
    )


def test_drift_is_reported_then_provisioned_away(
    capsys: pytest.CaptureFixture[str], names: Names, subscriber: Any
) -> None:
    from google.pubsub_v1 import types

    assert run(capsys, "provision", *names.flags())[0] == 0
    subscriber.update_subscription(
        request={
            "subscription": types.Subscription(
                name=names.subscription_path, ack_deadline_seconds=10
            ),
            "update_mask": {"paths": ["ack_deadline_seconds"]},
        },
        timeout=10,
    )

    assert run(capsys, "check", *names.flags()) == (
        1,
        [
            f"subscription {names.subscription_path}: ack_deadline_seconds is 10, plan says 300",
        ],
        "",
    )
    code, out, _ = run(capsys, "provision", *names.flags())
    assert code == 0
    assert f"subscription {names.subscription_path}: updated (ack_deadline_seconds)" in out
    sub = subscriber.get_subscription(subscription=names.subscription_path, timeout=10)
    assert sub.ack_deadline_seconds == 300
    assert run(capsys, "check", *names.flags()) == (0, ["no drift"], "")


def test_push_config_retry_and_dead_letter_policies_are_updated_in_place(
    capsys: pytest.CaptureFixture[str], names: Names, subscriber: Any
) -> None:
    assert run(capsys, "provision", *names.flags())[0] == 0
    changed = names.flags(
        "--push-endpoint",
        "http://127.0.0.1:9/elsewhere",
        "--audience",
        "https://audience.example",
        "--min-backoff",
        "1",
        "--dead-letter-topic",
        "",
    )

    code, out, err = run(capsys, "check", *changed)
    assert (code, err) == (1, "")
    prefix = f"subscription {names.subscription_path}: "
    assert out == [
        prefix + "push_config.push_endpoint is http://127.0.0.1:9/events, "
        "plan says http://127.0.0.1:9/elsewhere",
        prefix + "push_config.oidc_token.audience is http://127.0.0.1:9/events, "
        "plan says https://audience.example",
        prefix + "retry_policy.minimum_backoff is 5s, plan says 1s",
        prefix + f"dead_letter_policy is {{dead_letter_topic={names.dead_letter_path}, "
        "max_delivery_attempts=7}, plan says not set",
    ]

    code, out, err = run(capsys, "provision", *changed)
    assert (code, err) == (0, "")
    assert out[:2] == [
        f"topic {names.topic_path}: unchanged",
        prefix + "updated (push_config, retry_policy, dead_letter_policy)",
    ]
    sub = subscriber.get_subscription(subscription=names.subscription_path, timeout=10)
    assert sub.push_config.push_endpoint == "http://127.0.0.1:9/elsewhere"
    assert sub.push_config.oidc_token.audience == "https://audience.example"
    assert sub.retry_policy.minimum_backoff == timedelta(seconds=1)
    assert "dead_letter_policy" not in sub
    assert run(capsys, "check", *changed) == (0, ["no drift"], "")

    # And back: the dead-letter policy is added to an existing subscription.
    code, out, _ = run(capsys, "provision", *names.flags())
    assert prefix + "updated (push_config, retry_policy, dead_letter_policy)" in out
    assert run(capsys, "check", *names.flags()) == (0, ["no drift"], "")


def test_a_subscription_on_another_topic_is_an_error_not_a_silent_change(
    capsys: pytest.CaptureFixture[str], emulator: str, names: Names
) -> None:
    assert run(capsys, "provision", *names.flags())[0] == 0
    moved = names.flags("--topic", f"moved-{names.topic}")

    code, out, _ = run(capsys, "check", *moved)
    assert code == 1
    assert (
        f"subscription {names.subscription_path}: topic is {names.topic_path}, plan says "
        f"projects/{PROJECT}/topics/moved-{names.topic}"
    ) in out

    code, _, err = run(capsys, "provision", *moved)
    assert code == 2
    assert err.startswith(
        f"homing: error: subscription {names.subscription_path} is attached to {names.topic_path}"
    )
    assert "cannot change" in err
    assert err.count("\n") == 1


def test_the_emulator_cannot_update_an_expiration_policy(
    capsys: pytest.CaptureFixture[str], names: Names, subscriber: Any, publisher: Any
) -> None:
    # A subscription made elsewhere with Pub/Sub's default expiration (the emulator stores none).
    # Real Pub/Sub updates expiration_policy; the emulator refuses to, and provision says so.
    from google.pubsub_v1 import types

    publisher.create_topic(name=names.topic_path, timeout=10)
    subscriber.create_subscription(
        request=types.Subscription(name=names.subscription_path, topic=names.topic_path),
        timeout=10,
    )
    flags = names.flags("--dead-letter-topic", "")

    code, out, _ = run(capsys, "check", *flags)
    assert code == 1
    assert (
        f"subscription {names.subscription_path}: expiration_policy.ttl is 31 days (the default), "
        "plan says never"
    ) in out

    code, _, err = run(capsys, "provision", *flags)
    assert code == 2
    assert err.startswith(f"homing: error: updating subscription {names.subscription_path} (")
    assert "unsupported in the Pub/Sub Emulator" in err
    assert err.count("\n") == 1


def test_an_unreachable_endpoint_fails_in_one_line_within_seconds(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, names: Names
) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{port}")

    started = time.monotonic()
    code, out, err = run(capsys, "provision", *names.flags())
    elapsed = time.monotonic() - started

    assert code == 2
    assert out == []
    assert err.startswith(
        f"homing: error: reading topic {names.topic_path}: cannot reach the emulator at "
        f"127.0.0.1:{port} (PUBSUB_EMULATOR_HOST)"
    )
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert elapsed < 20  # the retry deadline is 15 s, not the client's default 600 s


def test_an_unreachable_endpoint_fails_the_program_without_a_traceback(names: Names) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMING_")}
    env["PUBSUB_EMULATOR_HOST"] = f"127.0.0.1:{port}"
    result = subprocess.run(
        [sys.executable, "-m", "homing.cli", "check", *names.flags()],
        capture_output=True,
        text=True,
        check=False,
        timeout=40,
        env=env,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("homing: error: reading topic ")
    assert result.stderr.count("\n") == 1


def test_missing_credentials_fail_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # No emulator and credentials that cannot load: nothing is sent anywhere.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    code, out, err = run(capsys, "check", *Names().flags())
    assert (code, out) == (2, [])
    assert err.startswith("homing: error: connecting to Pub/Sub: no usable Google credentials (")
    assert "gcloud auth application-default login" in err
    assert err.count("\n") == 1


def test_the_gcloud_plan_builds_what_check_expects(
    capsys: pytest.CaptureFixture[str], emulator: str, names: Names, tmp_path: Path
) -> None:
    required_tool("gcloud", install="Debian package google-cloud-cli")
    # The printed commands, run by the real gcloud against the emulator (IAM part left out:
    # the emulator has none), produce exactly the planned subscription.
    assert main(["plan", *names.flags()]) == 0
    script = capsys.readouterr().out
    script = script[: script.index("\n# The Pub/Sub service agent")] + "\n"
    env = {
        **os.environ,
        "CLOUDSDK_CONFIG": str(tmp_path),
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB": f"http://{emulator}/",
        "CLOUDSDK_AUTH_DISABLE_CREDENTIALS": "true",
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    }
    result = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, check=False, env=env, timeout=50
    )
    assert result.returncode == 0, result.stderr
    assert run(capsys, "check", *names.flags()) == (0, ["no drift"], "")


def test_plan_type_is_frozen() -> None:
    the_plan = plan(full_settings())
    assert isinstance(the_plan, Plan)
    with pytest.raises(AttributeError, match="cannot assign to field 'project'"):
        the_plan.project = "other"  # type: ignore[misc]


# --- the push shape ---------------------------------------------------------------------------


def test_an_unwrapped_plan_renders_no_wrapper_with_write_metadata() -> None:
    unwrapped = plan(full_settings(push_shape="unwrapped"))
    assert unwrapped.subscription.unwrapped
    gcloud = render_gcloud(unwrapped)
    assert "--push-no-wrapper \\\n    --push-no-wrapper-write-metadata" in gcloud
    assert "no_wrapper {\n      write_metadata = true\n    }" in render_terraform(unwrapped)
    wrapped = plan(full_settings())
    assert "no-wrapper" not in render_gcloud(wrapped)
    assert "no_wrapper" not in render_terraform(wrapped)


def test_a_subscription_switched_to_no_wrapper_by_hand_is_drift_and_provisioned_back(
    capsys: pytest.CaptureFixture[str], names: Names, subscriber: Any
) -> None:
    from google.pubsub_v1 import types as pubsub

    assert run(capsys, "provision", *names.flags())[0] == 0
    existing = subscriber.get_subscription(subscription=names.subscription_path)
    push = pubsub.PushConfig(existing.push_config)
    push.no_wrapper = pubsub.PushConfig.NoWrapper(write_metadata=False)
    subscriber.modify_push_config(subscription=names.subscription_path, push_config=push)

    code, out, _ = run(capsys, "check", *names.flags())
    assert code == 1
    assert out == [
        f"subscription {names.subscription_path}: push_config.shape is unwrapped without "
        "write_metadata (no attributes: no signature reaches the service), plan says wrapped"
    ]
    code, out, _ = run(capsys, "provision", *names.flags())
    assert f"subscription {names.subscription_path}: updated (push_config)" in out
    assert run(capsys, "check", *names.flags())[:2] == (0, ["no drift"])


def test_an_unwrapped_subscription_is_provisioned_and_checked(
    capsys: pytest.CaptureFixture[str], names: Names, subscriber: Any
) -> None:
    flags = names.flags("--push-shape", "unwrapped")
    assert run(capsys, "provision", *flags)[0] == 0
    stored = subscriber.get_subscription(subscription=names.subscription_path).push_config
    assert "no_wrapper" in stored
    assert stored.no_wrapper.write_metadata
    assert run(capsys, "check", *flags)[:2] == (0, ["no drift"])
    # The same subscription, checked against a wrapped plan, has drifted.
    code, out, _ = run(capsys, "check", *names.flags())
    assert code == 1
    assert (
        "push_config.shape is unwrapped (no_wrapper, write_metadata), plan says wrapped" in (out[0])
    )


# --- Eventarc ---------------------------------------------------------------------------------

TRIGGER_ACCOUNT = "trigger@homing-test.iam.gserviceaccount.com"


def eventarc_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "project": PROJECT,
        "topic": "events",
        "push_endpoint": "https://users-api-xyz.a.run.app/events",
        "push_service_account": TRIGGER_ACCOUNT,
        "push_shape": "eventarc",
        "run_service": "users-api",
        "region": "europe-west1",
    }
    values.update(overrides)
    return Settings(**values)


def test_the_eventarc_trigger_is_printed_for_gcloud_with_its_iam() -> None:
    script = render_eventarc_gcloud(eventarc_trigger(eventarc_settings()))
    assert (
        "gcloud eventarc triggers create homing-events \\\n"
        "    --project=homing-test \\\n"
        "    --location=europe-west1 \\\n"
        "    --destination-run-service=users-api \\\n"
        "    --destination-run-region=europe-west1 \\\n"
        "    --destination-run-path=/events \\\n"
        "    --event-filters=type=google.cloud.pubsub.topic.v1.messagePublished \\\n"
        "    --transport-topic=projects/homing-test/topics/events \\\n"
        f"    --service-account={TRIGGER_ACCOUNT}\n"
    ) in script
    assert (
        "gcloud run services add-iam-policy-binding users-api \\\n"
        "    --project=homing-test \\\n"
        "    --region=europe-west1 \\\n"
        f"    --member=serviceAccount:{TRIGGER_ACCOUNT} \\\n"
        "    --role=roles/run.invoker\n"
    ) in script
    assert f"gcloud iam service-accounts add-iam-policy-binding {TRIGGER_ACCOUNT}" in script
    assert "gcloud pubsub subscriptions" not in script  # Eventarc makes its own


def test_the_eventarc_trigger_is_printed_for_terraform_with_its_iam() -> None:
    hcl = render_eventarc_terraform(eventarc_trigger(eventarc_settings(subscription="orders")))
    assert 'resource "google_eventarc_trigger" "homing" {\n  project         = "homing-test"\n' in (
        hcl
    )
    assert '  name            = "orders"\n' in hcl
    assert "    cloud_run_service {\n" in hcl
    assert '      path    = "/events"\n' in hcl
    assert "      topic = google_pubsub_topic.homing.id\n" in hcl
    assert 'resource "google_cloud_run_service_iam_member" "homing_trigger_invoker"' in hcl
    assert f'  member   = "serviceAccount:{TRIGGER_ACCOUNT}"\n' in hcl
    assert "{\n\n" not in hcl  # no blank line opens a block


def test_the_eventarc_trigger_names_every_missing_setting() -> None:
    expected = "missing setting(s) for the Eventarc trigger: set HOMING_RUN_SERVICE, HOMING_REGION"
    with pytest.raises(ConfigurationError, match=f"^{re.escape(expected)}$"):
        eventarc_trigger(eventarc_settings(run_service=None, region=None))


def test_plan_prints_the_trigger_and_provision_says_who_creates_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    flags = ["--project", PROJECT, "--topic", "events", "--push-shape", "eventarc"]
    flags += ["--push-endpoint", "https://users-api-xyz.a.run.app/events"]
    flags += ["--push-service-account", TRIGGER_ACCOUNT, "--run-service", "users-api"]
    flags += ["--region", "europe-west1"]
    code, out, _ = run(capsys, "plan", *flags)
    assert code == 0
    assert "gcloud eventarc triggers create homing-events \\" in out
    code, out, err = run(capsys, "provision", *flags)
    assert code == 2
    assert "the Eventarc trigger makes its own subscription" in err


def test_iam_bindings_are_compared_by_role_member_and_condition() -> None:
    from google.iam.v1 import policy_pb2

    agent = "serviceAccount:service-123@gcp-sa-pubsub.iam.gserviceaccount.com"
    policy = policy_pb2.Policy()
    assert not has_member(policy, "roles/pubsub.publisher", agent)
    policy.bindings.add(role="roles/pubsub.publisher", members=["user:someone@example.com"])
    assert not has_member(policy, "roles/pubsub.publisher", agent)
    conditional = policy.bindings.add(role="roles/pubsub.publisher", members=[agent])
    conditional.condition.expression = "request.time < timestamp('2020-01-01T00:00:00Z')"
    assert not has_member(policy, "roles/pubsub.publisher", agent)  # expired, conditionally
    policy.bindings.add(role="roles/pubsub.subscriber", members=[agent])
    assert not has_member(policy, "roles/pubsub.publisher", agent)
    assert has_member(policy, "roles/pubsub.subscriber", agent)


def test_check_on_the_emulator_says_iam_was_not_compared(
    capsys: pytest.CaptureFixture[str], emulator: str, names: Names
) -> None:
    assert run(capsys, "provision", *names.flags())[0] == 0
    assert main(["check", *names.flags()]) == 0
    captured = capsys.readouterr()
    assert captured.out == "no drift\n"
    assert captured.err.startswith("iam: not compared, the emulator at ")


# --- the push account may invoke the Cloud Run service ---------------------------------------

SERVICE = "projects/homing-test/locations/europe-west1/services/users-api"
RUN_FLAGS = ["--push-service-account", PUSHER, "--run-service", "users-api"]
RUN_FLAGS += ["--region", "europe-west1"]
INVOKER_REASON = (
    "to call the service: without it, a service that requires authentication "
    "(--no-allow-unauthenticated) answers every push 403"
)


def run_settings(**overrides: Any) -> Settings:
    return full_settings(run_service="users-api", region="europe-west1", **overrides)


@pytest.mark.parametrize("shape", ["wrapped", "unwrapped"])
def test_a_named_cloud_run_service_lets_the_push_account_invoke_it(shape: str) -> None:
    result = plan(run_settings(push_shape=shape))
    assert result.bindings[-1] == IamBinding(
        "run_service",
        SERVICE,
        "roles/run.invoker",
        INVOKER_REASON,
        member=f"serviceAccount:{PUSHER}",
    )
    assert [b.member for b in result.bindings[:-1]] == [None, None, None]  # the service agent


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"region": None},
            "HOMING_RUN_SERVICE is set but HOMING_REGION is not: the roles/run.invoker binding "
            "on the Cloud Run service needs both",
        ),
        ({"run_service": None}, "HOMING_REGION is set but HOMING_RUN_SERVICE is not"),
        (
            {"push_service_account": None},
            "HOMING_RUN_SERVICE is set but HOMING_PUSH_SERVICE_ACCOUNT is not: without a push "
            "token there is no account to allow to invoke the service",
        ),
        ({"region": "europe"}, "HOMING_REGION: 'europe' is not a region (e.g. europe-west1)"),
        ({"run_service": "Users_API"}, "HOMING_RUN_SERVICE: 'Users_API' is not a Cloud Run"),
    ],
)
def test_a_cloud_run_service_that_cannot_work_is_refused(
    overrides: dict[str, Any], message: str
) -> None:
    values: dict[str, Any] = {"run_service": "users-api", "region": "europe-west1"}
    values.update(overrides)
    with pytest.raises(ConfigurationError, match="^" + re.escape(message)):
        plan(full_settings(**values))


GCLOUD_INVOKER = (
    f"\n# serviceAccount:{PUSHER} needs:\n"
    f"#   roles/run.invoker on run service {SERVICE}, {INVOKER_REASON}\n"
    "gcloud run services add-iam-policy-binding users-api \\\n"
    "    --project=homing-test \\\n"
    "    --region=europe-west1 \\\n"
    f"    --member=serviceAccount:{PUSHER} \\\n"
    "    --role=roles/run.invoker\n"
)
TERRAFORM_INVOKER = (
    f"# serviceAccount:{PUSHER} needs roles/run.invoker {INVOKER_REASON}.\n"
    'resource "google_cloud_run_service_iam_member" "homing_push_invoker" {\n'
    '  project  = "homing-test"\n'
    '  location = "europe-west1"\n'
    '  service  = "users-api"\n'
    '  role     = "roles/run.invoker"\n'
    f'  member   = "serviceAccount:{PUSHER}"\n'
    "}\n"
)


@pytest.mark.parametrize("shape", ["wrapped", "unwrapped"])
def test_plan_prints_the_invoker_binding_for_gcloud(
    capsys: pytest.CaptureFixture[str], shape: str
) -> None:
    assert main(["plan", *FLAGS, *RUN_FLAGS, "--push-shape", shape]) == 0
    script = capsys.readouterr().out
    assert script == render_gcloud(plan(run_settings(dead_letter_topic=None, push_shape=shape)))
    # After the service agent's bindings, granted to the push account by name.
    assert script.endswith("    --role=roles/iam.serviceAccountTokenCreator\n" + GCLOUD_INVOKER)
    assert ("--push-no-wrapper" in script) is (shape == "unwrapped")


@pytest.mark.parametrize("shape", ["wrapped", "unwrapped"])
def test_plan_prints_the_invoker_binding_for_terraform(
    capsys: pytest.CaptureFixture[str], shape: str
) -> None:
    assert main(["plan", "--format", "terraform", *FLAGS, *RUN_FLAGS, "--push-shape", shape]) == 0
    hcl = capsys.readouterr().out
    assert hcl == render_terraform(plan(run_settings(dead_letter_topic=None, push_shape=shape)))
    assert hcl.endswith("\n" + TERRAFORM_INVOKER)
    assert 'resource "google_service_account_iam_member" "homing_push_token_creator"' in hcl
    assert ("no_wrapper" in hcl) is (shape == "unwrapped")


def test_without_a_cloud_run_service_no_invoker_binding_is_printed() -> None:
    the_plan = plan(full_settings())
    assert "gcloud run" not in render_gcloud(the_plan)
    assert "cloud_run" not in render_terraform(the_plan)


def test_the_invoker_binding_is_formatted_as_terraform_fmt_would(
    terraform: str, tmp_path: Path
) -> None:
    (tmp_path / "homing.tf").write_text(render_terraform(plan(run_settings())))
    result = subprocess.run(
        [terraform, "fmt", "-check", "-diff", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TF_CLI_CONFIG_FILE": "/dev/null"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_apply_iam_grants_the_invoker_binding_once_to_the_push_account() -> None:
    the_plan = plan(run_settings())
    publisher, subscriber, cloud_run = FakeIamClient(), FakeIamClient(), FakeIamClient()
    existing = policy_pb2.Policy(etag=b"7")
    existing.bindings.add(role="roles/run.invoker", members=["user:a@example.com"])
    cloud_run.policies[SERVICE] = existing
    pusher = f"serviceAccount:{PUSHER}"

    first = [str(o) for o in apply_iam(the_plan, publisher, subscriber, "42", cloud_run=cloud_run)]

    assert first[-1] == f"iam roles/run.invoker on run service {SERVICE}: granted to {pusher}"
    invokers = cloud_run.policies[SERVICE].bindings
    assert [(b.role, list(b.members)) for b in invokers] == [
        ("roles/run.invoker", ["user:a@example.com", pusher])
    ]
    second = [str(o) for o in apply_iam(the_plan, publisher, subscriber, "42", cloud_run=cloud_run)]
    assert second[-1] == f"iam roles/run.invoker on run service {SERVICE}: unchanged"
    assert (publisher.writes, subscriber.writes, cloud_run.writes) == (1, 1, 1)


def test_check_reports_a_missing_invoker_binding(emulator: str, names: Names) -> None:
    # Pub/Sub from the emulator, the service's policy from the fake: the emulator has no IAM,
    # and without a dead-letter topic only the service's policy is read.
    the_plan = plan(
        run_settings(
            topic=names.topic,
            subscription=names.subscription,
            push_endpoint="http://127.0.0.1:9/events",
            dead_letter_topic=None,
        )
    )
    list(provision(the_plan, apply_iam_bindings=False))
    cloud_run = FakeIamClient()
    pusher = f"serviceAccount:{PUSHER}"

    differences = check(the_plan, compare_iam_bindings=True, cloud_run=cloud_run)

    assert differences == [
        Difference(f"iam roles/run.invoker for {pusher} on run service {SERVICE}")
    ]
    assert str(differences[0]) == (
        f"iam roles/run.invoker for {pusher} on run service {SERVICE} is missing"
    )
    list(apply_iam(the_plan, FakeIamClient(), FakeIamClient(), "42", cloud_run=cloud_run))
    assert check(the_plan, compare_iam_bindings=True, cloud_run=cloud_run) == []
    assert check(the_plan, compare_iam_bindings=False, cloud_run=FakeIamClient()) == []


class FakeCloudRunApi(requests.adapters.BaseAdapter):
    """run.googleapis.com's getIamPolicy and setIamPolicy at requests' transport: policies kept
    as JSON per service, with an etag check; ``status`` answers every request with that error,
    ``unreachable`` fails to connect."""

    def __init__(self, *, status: int = 200, unreachable: bool = False) -> None:
        super().__init__()
        self.policies: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.writes = 0
        self.status = status
        self.unreachable = unreachable

    def send(
        self, request: requests.PreparedRequest, *_args: Any, **options: Any
    ) -> requests.Response:
        assert request.url is not None
        url = urlsplit(request.url)
        assert (url.netloc, options["timeout"]) == ("run.googleapis.com", CALL_TIMEOUT)
        resource, _, verb = url.path.removeprefix("/v2/").partition(":")
        self.calls.append((str(request.method), verb))
        if self.unreachable:
            raise requests.ConnectionError("Connection refused")
        if self.status != 200:
            message = {403: f"Permission '{verb}' denied", 404: "Service not found"}[self.status]
            error = {"code": self.status, "message": message}
            return self._answer(request, self.status, {"error": error})
        current = self.policies.setdefault(resource, {"etag": "BwY="})
        if verb == "getIamPolicy":
            assert request.method == "GET"
            assert parse_qs(url.query) == {"options.requestedPolicyVersion": ["3"]}
            return self._answer(request, 200, current)
        assert (request.method, verb) == ("POST", "setIamPolicy")
        assert isinstance(request.body, bytes)
        policy = json.loads(request.body)["policy"]
        if policy.get("etag") != current["etag"]:
            return self._answer(request, 409, {"error": {"code": 409, "message": "etag"}})
        self.writes += 1
        policy["etag"] = f"BwY{self.writes}"
        self.policies[resource] = policy
        return self._answer(request, 200, policy)

    def close(self) -> None:
        pass

    @staticmethod
    def _answer(
        request: requests.PreparedRequest, status: int, body: dict[str, Any]
    ) -> requests.Response:
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(json.dumps(body).encode()),
            status=status,
            headers={"Content-Type": "application/json"},
            preload_content=False,
        )
        return requests.adapters.HTTPAdapter().build_response(request, raw)


def cloud_run_client(api: FakeCloudRunApi) -> CloudRunIamClient:
    session = requests.Session()
    session.mount("https://run.googleapis.com/", api)
    return CloudRunIamClient(session)


def test_the_invoker_binding_is_applied_through_the_cloud_run_admin_api() -> None:
    api = FakeCloudRunApi()
    conditional = {
        "role": "roles/run.invoker",
        "members": [f"serviceAccount:{PUSHER}"],
        "condition": {"expression": "request.time < timestamp('2030-01-01T00:00:00Z')"},
    }
    developers = {"role": "roles/run.developer", "members": ["user:b@example.com"]}
    api.policies[SERVICE] = {"version": 3, "etag": "BwY=", "bindings": [conditional, developers]}
    cloud_run = cloud_run_client(api)
    the_plan = plan(run_settings(dead_letter_topic=None))

    outcomes = [str(o) for o in apply_iam(the_plan, None, None, "42", cloud_run=cloud_run)]

    assert outcomes[-1] == (
        f"iam roles/run.invoker on run service {SERVICE}: granted to serviceAccount:{PUSHER}"
    )
    assert api.calls == [("GET", "getIamPolicy"), ("POST", "setIamPolicy")]
    assert api.policies[SERVICE] == {
        "version": 3,  # the conditional binding is kept as it was
        "etag": "BwY1",
        "bindings": [
            conditional,
            developers,
            {"role": "roles/run.invoker", "members": [f"serviceAccount:{PUSHER}"]},
        ],
    }
    again = [str(o) for o in apply_iam(the_plan, None, None, "42", cloud_run=cloud_run)]
    assert again[-1].endswith(": unchanged")
    assert api.writes == 1


@pytest.mark.parametrize(
    ("fault", "failure"),
    [
        (
            {"status": 403},
            "403 Permission 'getIamPolicy' denied; the caller needs roles/run.admin on the service",
        ),
        ({"status": 404}, "404 Service not found; is the service deployed, in that project"),
        ({"unreachable": True}, "cannot reach run.googleapis.com: Connection refused"),
    ],
)
def test_cloud_run_failures_are_one_line(fault: dict[str, Any], failure: str) -> None:
    one_line = re.escape(f"reading the IAM policy of Cloud Run service {SERVICE}: {failure}")
    with pytest.raises(ProvisioningFailed, match=f"^{one_line}[^\n]*$"):
        cloud_run_client(FakeCloudRunApi(**fault)).get_iam_policy(request={"resource": SERVICE})


# --- the package ------------------------------------------------------------------------------


def test_the_package_exports_exactly_all() -> None:
    import types

    import homing.provisioning

    exported = {
        name
        for name, value in vars(homing.provisioning).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert exported == set(homing.provisioning.__all__)
