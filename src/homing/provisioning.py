"""Pub/Sub infrastructure as an explicit step: ``plan`` describes, ``provision`` creates, ``check``
compares. Nothing here runs when the app imports homing or starts.

The plan is pure data built from :class:`~homing.settings.Settings`; it renders as gcloud commands
or Terraform. ``provision`` and ``check`` talk to Pub/Sub (or to the emulator named by
``PUBSUB_EMULATOR_HOST``, which the client library honours) through google-cloud-pubsub, imported
only when they run, so the rest of homing works without it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from homing.errors import ConfigurationError, HomingError
from homing.settings import Settings

if TYPE_CHECKING:
    from google.pubsub_v1 import types as pubsub

__all__ = [
    "DeadLetter",
    "Difference",
    "EventarcTrigger",
    "IamBinding",
    "Outcome",
    "Plan",
    "ProvisioningFailed",
    "PushAuth",
    "PushSubscription",
    "Topic",
    "apply_iam",
    "check",
    "eventarc_trigger",
    "has_member",
    "plan",
    "provision",
    "render_eventarc_gcloud",
    "render_eventarc_terraform",
    "render_gcloud",
    "render_terraform",
]

#: Every admin call gets this many seconds per attempt ...
CALL_TIMEOUT = 10.0
#: ... and an unreachable endpoint is retried for at most this long.
RETRY_DEADLINE = 15.0

_ID = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")
_ID_RULE = (
    "ids are 3-255 characters, start with a letter, contain only letters, digits and - _ . ~ + %,"
    " and do not start with 'goog'"
)
_PROJECT = re.compile(r"(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]")
_PATH = re.compile(r"projects/([^/]+)/([a-z]+)/([^/]+)")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

# Pub/Sub's default when a dead-letter policy leaves max_delivery_attempts at 0.
_DEFAULT_ATTEMPTS = 5
# Pub/Sub's defaults for a retry policy field that is not set.
_DEFAULT_MIN_BACKOFF = 10
_DEFAULT_MAX_BACKOFF = 600


class ProvisioningFailed(HomingError):
    """Raised when Pub/Sub refuses, cannot be reached, or cannot be brought to the plan."""


@dataclass(frozen=True)
class Topic:
    """A topic to create, by full name ``projects/P/topics/T``."""

    name: str


@dataclass(frozen=True)
class PushAuth:
    """The OIDC token Pub/Sub attaches to every push."""

    service_account_email: str
    audience: str


@dataclass(frozen=True)
class DeadLetter:
    """Where Pub/Sub moves a message after ``max_delivery_attempts`` failed deliveries."""

    topic: str
    max_delivery_attempts: int


@dataclass(frozen=True)
class PushSubscription:
    """The push subscription that delivers the topic's messages to the service.

    ``expires_after`` is ``None``: Pub/Sub's default deletes a subscription after 31 days without
    a successful delivery, and a quiet service would then lose every event published afterwards.
    """

    name: str
    topic: str
    push_endpoint: str
    push_auth: PushAuth | None
    ack_deadline_seconds: int
    min_backoff: int
    max_backoff: int
    dead_letter: DeadLetter | None
    expires_after: int | None = None
    #: Pushed unwrapped (``noWrapper`` with write-metadata: the data as the body, attributes
    #: and metadata as headers) rather than in Pub/Sub's JSON envelope.
    unwrapped: bool = False


@dataclass(frozen=True)
class IamBinding:
    """A role the Pub/Sub service agent needs on one resource, and why."""

    kind: Literal["topic", "subscription", "service_account", "run_service"]
    resource: str
    role: str
    reason: str


@dataclass(frozen=True)
class Plan:
    """Everything homing needs in Pub/Sub, as data.

    ``project`` is the subscription's project: its Pub/Sub service agent
    (``service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com``) is the member of every
    binding.
    """

    project: str
    topic: Topic
    dead_letter_topic: Topic | None
    subscription: PushSubscription
    bindings: tuple[IamBinding, ...]

    @property
    def topics(self) -> tuple[Topic, ...]:
        return (
            (self.topic,)
            if self.dead_letter_topic is None
            else (self.topic, self.dead_letter_topic)
        )


def service_agent(project_number: str) -> str:
    """The email of the Pub/Sub service agent of the project numbered ``project_number``."""
    return f"service-{project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"


# --- the plan ---------------------------------------------------------------------------------

_REQUIRED = ("project", "topic", "subscription", "push_endpoint")


def plan(settings: Settings) -> Plan:
    """The Pub/Sub resources and IAM bindings ``settings`` call for.

    Raises:
        ConfigurationError: a required setting is missing (all missing ones are named) or a
            value cannot work.
    """
    if settings.push_shape == "eventarc":
        raise ConfigurationError(
            f"{Settings.variable('push_shape')}=eventarc: the Eventarc trigger makes its own "
            "subscription; `homing plan` prints the trigger, to create with gcloud or Terraform"
        )
    missing = [name for name in _REQUIRED if not getattr(settings, name)]
    if missing:
        raise ConfigurationError(
            "missing setting(s) for the Pub/Sub plan: set "
            + ", ".join(Settings.variable(name) for name in missing)
            + " (or pass "
            + ", ".join("--" + name.replace("_", "-") for name in missing)
            + ")"
        )
    assert settings.project  # all four checked above
    assert settings.topic
    assert settings.subscription
    assert settings.push_endpoint
    project = settings.project
    if not _PROJECT.fullmatch(project):
        raise ConfigurationError(
            f"{Settings.variable('project')}: {project!r} is not a project id (6-30 lowercase "
            "letters, digits and hyphens, starting with a letter)"
        )
    topic = _name(settings.topic, "topics", project, "topic")
    subscription = _name(settings.subscription, "subscriptions", project, "subscription")
    dead_letter_topic = (
        _name(settings.dead_letter_topic, "topics", project, "dead_letter_topic")
        if settings.dead_letter_topic
        else None
    )
    if dead_letter_topic == topic:
        raise ConfigurationError(
            f"{Settings.variable('dead_letter_topic')} is the topic itself ({topic}): "
            "dead-lettered messages would be delivered again"
        )
    endpoint = urlsplit(settings.push_endpoint)
    if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
        raise ConfigurationError(
            f"{Settings.variable('push_endpoint')}: {settings.push_endpoint!r} is not an http(s) "
            "URL (Pub/Sub needs https://HOST/PATH; http only works with the emulator)"
        )

    account = settings.push_service_account
    push_auth = None
    if account:
        if not _EMAIL.fullmatch(account):
            raise ConfigurationError(
                f"{Settings.variable('push_service_account')}: {account!r} is not a service "
                "account email"
            )
        push_auth = PushAuth(account, settings.audience or settings.push_endpoint)
    elif settings.oidc_audience:
        raise ConfigurationError(
            f"{Settings.variable('oidc_audience')} is set but "
            f"{Settings.variable('push_service_account')} is not: Pub/Sub attaches a token "
            "only when the subscription names a service account"
        )
    elif settings.auth in ("oidc", "both"):
        raise ConfigurationError(
            f"{Settings.variable('auth')}={settings.auth} needs "
            f"{Settings.variable('push_service_account')}: without it Pub/Sub pushes no token "
            "and the service refuses every push"
        )

    subscription_project = subscription.split("/")[1]
    bindings: list[IamBinding] = []
    if push_auth is not None:
        bindings.append(
            IamBinding(
                "service_account",
                push_auth.service_account_email,
                "roles/iam.serviceAccountTokenCreator",
                "to mint the push OIDC token as this service account",
            )
        )
    dead_letter = None
    if dead_letter_topic is not None:
        dead_letter = DeadLetter(dead_letter_topic, settings.max_delivery_attempts)
        bindings += [
            IamBinding(
                "topic",
                dead_letter_topic,
                "roles/pubsub.publisher",
                "to publish dead-lettered messages to the dead-letter topic",
            ),
            IamBinding(
                "subscription",
                subscription,
                "roles/pubsub.subscriber",
                "to acknowledge the dead-lettered messages on the source subscription",
            ),
        ]
    return Plan(
        project=subscription_project,
        topic=Topic(topic),
        dead_letter_topic=None if dead_letter_topic is None else Topic(dead_letter_topic),
        subscription=PushSubscription(
            name=subscription,
            topic=topic,
            push_endpoint=settings.push_endpoint,
            push_auth=push_auth,
            ack_deadline_seconds=settings.ack_deadline,
            min_backoff=settings.min_backoff,
            max_backoff=settings.max_backoff,
            dead_letter=dead_letter,
            unwrapped=settings.push_shape == "unwrapped",
        ),
        bindings=tuple(bindings),
    )


def _name(value: str, kind: str, project: str, setting: str) -> str:
    """``projects/P/<kind>/ID`` from a short id or a full name, or a ConfigurationError."""
    variable = Settings.variable(setting)
    singular = kind.removesuffix("s")
    match = _PATH.fullmatch(value)
    if match:
        project, found, value = match.groups()
        if found != kind:
            raise ConfigurationError(
                f"{variable}: {match.string!r} names {found}, not {kind} "
                f"(give an id or projects/PROJECT/{kind}/ID)"
            )
        if not _PROJECT.fullmatch(project):
            raise ConfigurationError(f"{variable}: {project!r} is not a project id")
    elif "/" in value:
        raise ConfigurationError(
            f"{variable}: {value!r} is neither a {singular} id nor projects/PROJECT/{kind}/ID"
        )
    if not _ID.fullmatch(value) or value.lower().startswith("goog"):
        raise ConfigurationError(f"{variable}: {value!r} is not a valid {singular} id: {_ID_RULE}")
    return f"projects/{project}/{kind}/{value}"


# --- renderings -------------------------------------------------------------------------------

_AGENT_VARIABLE = "PUBSUB_SERVICE_AGENT"


def render_gcloud(plan: Plan) -> str:
    """The plan as a shell script of gcloud commands."""
    lines = [
        "#!/bin/sh",
        f"# homing plan: Pub/Sub push delivery for {plan.subscription.name}",
        "# Re-running stops at the first resource that exists; `homing provision` is idempotent.",
        "set -eu",
        "",
    ]
    for topic in plan.topics:
        lines.append(_command(["gcloud", "pubsub", "topics", "create", topic.name]))
    sub = plan.subscription
    flags = [
        f"--topic={sub.topic}",
        f"--push-endpoint={sub.push_endpoint}",
    ]
    if sub.push_auth is not None:
        flags += [
            f"--push-auth-service-account={sub.push_auth.service_account_email}",
            f"--push-auth-token-audience={sub.push_auth.audience}",
        ]
    if sub.unwrapped:
        flags += ["--push-no-wrapper", "--push-no-wrapper-write-metadata"]
    flags += [
        f"--ack-deadline={sub.ack_deadline_seconds}",
        f"--min-retry-delay={sub.min_backoff}s",
        f"--max-retry-delay={sub.max_backoff}s",
    ]
    if sub.dead_letter is not None:
        flags += [
            f"--dead-letter-topic={sub.dead_letter.topic}",
            f"--max-delivery-attempts={sub.dead_letter.max_delivery_attempts}",
        ]
    expiration = "never" if sub.expires_after is None else f"{sub.expires_after}s"
    flags.append(f"--expiration-period={expiration}")
    lines.append(_command(["gcloud", "pubsub", "subscriptions", "create", sub.name, *flags]))
    if plan.bindings:
        number = (
            f"$(gcloud projects describe {shlex.quote(plan.project)} "
            "--format='value(projectNumber)')"
        )
        lines += [
            "",
            f"# The Pub/Sub service agent of project {plan.project} needs:",
            *(
                f"#   {b.role} on {b.kind.replace('_', ' ')} {b.resource}, {b.reason}"
                for b in plan.bindings
            ),
            f'{_AGENT_VARIABLE}="serviceAccount:{service_agent(number)}"',
        ]
        for binding in plan.bindings:
            lines.append(_gcloud_binding(binding, f'"${{{_AGENT_VARIABLE}}}"'))
    return "\n".join(lines) + "\n"


def _gcloud_binding(binding: IamBinding, member: str) -> str:
    """The gcloud command granting ``binding`` to ``member`` (already quoted for the shell)."""
    group = {
        "topic": ["pubsub", "topics"],
        "subscription": ["pubsub", "subscriptions"],
        "service_account": ["iam", "service-accounts"],
    }[binding.kind]
    command = ["gcloud", *group, "add-iam-policy-binding", shlex.quote(binding.resource)]
    flags = [f"--member={member}", f"--role={shlex.quote(binding.role)}"]
    return " \\\n    ".join([" ".join(command), *flags])


def _command(words: list[str]) -> str:
    """A command with one flag per line; everything quoted for the shell."""
    head = [shlex.quote(word) for word in words if not word.startswith("--")]
    flags = [shlex.quote(word) for word in words if word.startswith("--")]
    return " \\\n    ".join([" ".join(head), *flags])


def render_terraform(plan: Plan) -> str:
    """The plan as Terraform (hashicorp/google provider) resources."""
    sub = plan.subscription
    topics = {plan.topic.name: "google_pubsub_topic.homing"}
    blocks: list[str] = []
    if plan.bindings:
        blocks += [
            _block('data "google_project" "homing"', [("project_id", _hcl(plan.project))]),
            _block(
                "locals",
                [
                    (
                        "pubsub_service_agent",
                        # Interpolated by Terraform: not quoted with _hcl().
                        f'"serviceAccount:{service_agent("${data.google_project.homing.number}")}"',
                    )
                ],
            ),
        ]
    blocks.append(_topic_block("homing", plan.topic.name))
    if plan.dead_letter_topic is not None:
        topics[plan.dead_letter_topic.name] = "google_pubsub_topic.homing_dead_letter"
        blocks.append(_topic_block("homing_dead_letter", plan.dead_letter_topic.name))

    _, project, _, name = sub.name.split("/")
    push: list[tuple[str, str] | str] = [("push_endpoint", _hcl(sub.push_endpoint))]
    if sub.push_auth is not None:
        push.append(
            _block(
                "oidc_token",
                [
                    ("service_account_email", _hcl(sub.push_auth.service_account_email)),
                    ("audience", _hcl(sub.push_auth.audience)),
                ],
            )
        )
    if sub.unwrapped:
        push.append(_block("no_wrapper", [("write_metadata", "true")]))
    body: list[tuple[str, str] | str] = [
        ("project", _hcl(project)),
        ("name", _hcl(name)),
        ("topic", f"{topics[sub.topic]}.id"),
        ("ack_deadline_seconds", str(sub.ack_deadline_seconds)),
        _block("push_config", push),
        _block(
            "retry_policy",
            [
                ("minimum_backoff", _hcl(f"{sub.min_backoff}s")),
                ("maximum_backoff", _hcl(f"{sub.max_backoff}s")),
            ],
        ),
    ]
    if sub.dead_letter is not None:
        body.append(
            _block(
                "dead_letter_policy",
                [
                    ("dead_letter_topic", f"{topics[sub.dead_letter.topic]}.id"),
                    ("max_delivery_attempts", str(sub.dead_letter.max_delivery_attempts)),
                ],
            )
        )
    ttl = "" if sub.expires_after is None else f"{sub.expires_after}s"
    body.append(_block("expiration_policy", [("ttl", _hcl(ttl))]))
    blocks.append(_block('resource "google_pubsub_subscription" "homing"', body))

    for binding in plan.bindings:
        blocks.append(_terraform_binding(binding, topics))
    return "\n".join(blocks)


def _topic_block(label: str, name: str) -> str:
    _, project, _, topic = name.split("/")
    return _block(
        f'resource "google_pubsub_topic" "{label}"',
        [("project", _hcl(project)), ("name", _hcl(topic))],
    )


def _terraform_binding(binding: IamBinding, topics: dict[str, str]) -> str:
    member = ("member", "local.pubsub_service_agent")
    role = ("role", _hcl(binding.role))
    header = f"# The Pub/Sub service agent needs {binding.role} {binding.reason}.\n"
    if binding.kind == "topic":
        topic = topics[binding.resource]
        return header + _block(
            'resource "google_pubsub_topic_iam_member" "homing_dead_letter_publisher"',
            [("project", f"{topic}.project"), ("topic", f"{topic}.name"), role, member],
        )
    if binding.kind == "subscription":
        return header + _block(
            'resource "google_pubsub_subscription_iam_member" "homing_dead_letter_subscriber"',
            [
                ("project", "google_pubsub_subscription.homing.project"),
                ("subscription", "google_pubsub_subscription.homing.name"),
                role,
                member,
            ],
        )
    # "-" lets the IAM API find the account's project from its email.
    return header + _block(
        'resource "google_service_account_iam_member" "homing_push_token_creator"',
        [
            ("service_account_id", _hcl(f"projects/-/serviceAccounts/{binding.resource}")),
            role,
            member,
        ],
    )


def _block(header: str, body: list[tuple[str, str] | str]) -> str:
    """An HCL block laid out as ``terraform fmt`` would: aligned ``=`` in runs of attributes."""
    lines = [header + " {"]
    run: list[tuple[str, str]] = []

    def flush() -> None:
        width = max((len(key) for key, _ in run), default=0)
        lines.extend(f"  {key.ljust(width)} = {value}" for key, value in run)
        run.clear()

    for item in body:
        if isinstance(item, tuple):
            run.append(item)
            continue
        flush()
        if len(lines) > 1:  # a blank line between a block and what precedes it in its parent
            lines.append("")
        lines.extend(("  " + line) if line else "" for line in item.rstrip("\n").split("\n"))
    flush()
    lines.append("}")
    return "\n".join(lines) + "\n"


def _hcl(value: str) -> str:
    """A quoted HCL string; ``${`` and ``%{`` are escaped so nothing is interpolated."""
    return json.dumps(value).replace("${", "$${").replace("%{", "%%{")


# --- Eventarc ---------------------------------------------------------------------------------

#: The CloudEvent type Eventarc gives a message published to a Pub/Sub topic.
PUBSUB_MESSAGE_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
_EVENTARC_REQUIRED = ("project", "topic", "push_endpoint", "push_service_account")
_EVENTARC_NAMED = ("run_service", "region")
_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]")
_SERVICE = re.compile(r"[a-z](?:[a-z0-9-]{0,47}[a-z0-9])?")


@dataclass(frozen=True)
class EventarcTrigger:
    """An Eventarc trigger delivering a topic's messages to a Cloud Run service as CloudEvents.

    Eventarc creates (and owns) the push subscription itself; ``service_account`` is the
    identity of the push token and needs ``roles/run.invoker`` on the service.
    """

    project: str
    name: str
    region: str
    topic: str
    run_service: str
    path: str
    service_account: str

    @property
    def bindings(self) -> tuple[IamBinding, ...]:
        return (
            IamBinding(
                "run_service",
                self.run_service,
                "roles/run.invoker",
                "so the trigger's push, with this account's token, may call the service",
            ),
            IamBinding(
                "service_account",
                self.service_account,
                "roles/iam.serviceAccountTokenCreator",
                "to mint the push OIDC token as this account",
            ),
        )


def eventarc_trigger(settings: Settings) -> EventarcTrigger:
    """The Eventarc trigger ``settings`` call for (``HOMING_PUSH_SHAPE=eventarc``).

    Raises:
        ConfigurationError: a required setting is missing (all are named) or cannot work.
    """
    missing = [n for n in (*_EVENTARC_REQUIRED, *_EVENTARC_NAMED) if not getattr(settings, n)]
    if missing:
        raise ConfigurationError(
            "missing setting(s) for the Eventarc trigger: set "
            + ", ".join(Settings.variable(name) for name in missing)
        )
    assert settings.project  # all checked above
    assert settings.topic
    assert settings.push_endpoint
    assert settings.push_service_account
    assert settings.run_service
    assert settings.region
    if not _PROJECT.fullmatch(settings.project):
        raise ConfigurationError(
            f"{Settings.variable('project')}: {settings.project!r} is not a project id"
        )
    topic = _name(settings.topic, "topics", settings.project, "topic")
    if not _REGION.fullmatch(settings.region):
        raise ConfigurationError(
            f"{Settings.variable('region')}: {settings.region!r} is not a region "
            "(e.g. europe-west1)"
        )
    if not _SERVICE.fullmatch(settings.run_service):
        raise ConfigurationError(
            f"{Settings.variable('run_service')}: {settings.run_service!r} is not a Cloud Run "
            "service name (lowercase letters, digits and hyphens, at most 49)"
        )
    if not _EMAIL.fullmatch(settings.push_service_account):
        raise ConfigurationError(
            f"{Settings.variable('push_service_account')}: {settings.push_service_account!r} "
            "is not a service account email"
        )
    trigger_id = (settings.subscription or "").rpartition("/")[2] or (
        "homing-" + topic.rpartition("/")[2]
    )
    return EventarcTrigger(
        project=settings.project,
        name=trigger_id,
        region=settings.region,
        topic=topic,
        run_service=settings.run_service,
        path=urlsplit(settings.push_endpoint).path or "/",
        service_account=settings.push_service_account,
    )


def render_eventarc_gcloud(trigger: EventarcTrigger) -> str:
    """The trigger, its topic and its IAM bindings as a shell script of gcloud commands."""
    project = shlex.quote(trigger.project)
    number = f"$(gcloud projects describe {project} --format='value(projectNumber)')"
    lines = [
        "#!/bin/sh",
        f"# homing plan: Eventarc delivers {trigger.topic} to Cloud Run service "
        f"{trigger.run_service} as CloudEvents",
        "set -eu",
        "",
        _command(["gcloud", "pubsub", "topics", "create", trigger.topic]),
        _command(
            [
                "gcloud",
                "eventarc",
                "triggers",
                "create",
                trigger.name,
                f"--project={trigger.project}",
                f"--location={trigger.region}",
                f"--destination-run-service={trigger.run_service}",
                f"--destination-run-region={trigger.region}",
                f"--destination-run-path={trigger.path}",
                f"--event-filters=type={PUBSUB_MESSAGE_PUBLISHED}",
                f"--transport-topic={trigger.topic}",
                f"--service-account={trigger.service_account}",
            ]
        ),
        "",
        *(
            f"# {b.role} on {b.kind.replace('_', ' ')} {b.resource}, {b.reason}"
            for b in trigger.bindings
        ),
        _command(
            [
                "gcloud",
                "run",
                "services",
                "add-iam-policy-binding",
                trigger.run_service,
                f"--project={trigger.project}",
                f"--region={trigger.region}",
                f"--member=serviceAccount:{trigger.service_account}",
                "--role=roles/run.invoker",
            ]
        ),
        f'{_AGENT_VARIABLE}="serviceAccount:{service_agent(number)}"',
        _gcloud_binding(trigger.bindings[1], f'"${{{_AGENT_VARIABLE}}}"'),
    ]
    return "\n".join(lines) + "\n"


def render_eventarc_terraform(trigger: EventarcTrigger) -> str:
    """The trigger, its topic and its IAM bindings as Terraform (hashicorp/google provider)."""
    account = _hcl(trigger.service_account)
    blocks = [
        _block('data "google_project" "homing"', [("project_id", _hcl(trigger.project))]),
        _block(
            "locals",
            [
                (
                    "pubsub_service_agent",
                    f'"serviceAccount:{service_agent("${data.google_project.homing.number}")}"',
                )
            ],
        ),
        _topic_block("homing", trigger.topic),
        _block(
            'resource "google_eventarc_trigger" "homing"',
            [
                ("project", _hcl(trigger.project)),
                ("name", _hcl(trigger.name)),
                ("location", _hcl(trigger.region)),
                ("service_account", account),
                _block(
                    "matching_criteria",
                    [("attribute", _hcl("type")), ("value", _hcl(PUBSUB_MESSAGE_PUBLISHED))],
                ),
                _block(
                    "destination",
                    [
                        _block(
                            "cloud_run_service",
                            [
                                ("service", _hcl(trigger.run_service)),
                                ("region", _hcl(trigger.region)),
                                ("path", _hcl(trigger.path)),
                            ],
                        )
                    ],
                ),
                _block(
                    "transport",
                    [_block("pubsub", [("topic", "google_pubsub_topic.homing.id")])],
                ),
            ],
        ),
        f"# The trigger's account needs roles/run.invoker {trigger.bindings[0].reason}.\n"
        + _block(
            'resource "google_cloud_run_service_iam_member" "homing_trigger_invoker"',
            [
                ("project", _hcl(trigger.project)),
                ("location", _hcl(trigger.region)),
                ("service", _hcl(trigger.run_service)),
                ("role", _hcl("roles/run.invoker")),
                ("member", _hcl(f"serviceAccount:{trigger.service_account}")),
            ],
        ),
        _terraform_binding(trigger.bindings[1], {}),
    ]
    return "\n".join(blocks)


# --- talking to Pub/Sub -----------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What ``provision`` did to one resource."""

    resource: str
    action: str

    def __str__(self) -> str:
        return f"{self.resource}: {self.action}"


@dataclass(frozen=True)
class Difference:
    """One way in which Pub/Sub differs from the plan; ``field`` is ``None`` for a missing
    resource."""

    resource: str
    field: str | None = None
    actual: str = ""
    planned: str = ""

    def __str__(self) -> str:
        if self.field is None:
            return f"{self.resource} is missing"
        return f"{self.resource}: {self.field} is {self.actual}, plan says {self.planned}"


def provision(plan: Plan, *, apply_iam_bindings: bool = True) -> Iterator[Outcome]:
    """Bring Pub/Sub to ``plan``, idempotently, yielding one outcome per resource as it goes.

    Topics and the subscription are created when missing; a subscription that differs is updated
    in place (its topic cannot change: that is an error). IAM bindings are applied only when
    ``apply_iam_bindings`` (the emulator has no IAM).

    Raises:
        ProvisioningFailed: Pub/Sub refused or could not be reached; one line says why.
    """
    with _clients() as (publisher, subscriber):
        for topic in plan.topics:
            yield _ensure_topic(publisher, topic.name)
        yield _ensure_subscription(subscriber, plan.subscription)
        if apply_iam_bindings and plan.bindings:
            yield from apply_iam(plan, publisher, subscriber, _project_number(plan.project))


def check(plan: Plan, *, compare_iam_bindings: bool | None = None) -> list[Difference]:
    """Every difference between Pub/Sub and ``plan``: resources, subscription settings (the push
    shape included) and, when ``compare_iam_bindings`` (by default: unless
    ``PUBSUB_EMULATOR_HOST`` names an emulator or local broker, which have no IAM), the IAM
    bindings on the dead-letter topic and the subscription. The binding on the push service
    account needs the IAM API, which google-cloud-pubsub does not include: it is not compared.

    Raises:
        ProvisioningFailed: Pub/Sub refused or could not be reached; one line says why.
    """
    if compare_iam_bindings is None:
        compare_iam_bindings = not os.environ.get("PUBSUB_EMULATOR_HOST")
    differences: list[Difference] = []
    with _clients() as (publisher, subscriber):
        for topic in plan.topics:
            if _get_topic(publisher, topic.name) is None:
                differences.append(Difference(f"topic {topic.name}"))
        existing = _get_subscription(subscriber, plan.subscription.name)
        if existing is None:
            differences.append(Difference(f"subscription {plan.subscription.name}"))
        else:
            differences += _compare(existing, plan.subscription)
        pubsub_bindings = [b for b in plan.bindings if b.kind in ("topic", "subscription")]
        if compare_iam_bindings and pubsub_bindings and not differences:
            member = f"serviceAccount:{service_agent(_project_number(plan.project))}"
            for binding in pubsub_bindings:
                client = publisher if binding.kind == "topic" else subscriber
                with _calling(f"reading the IAM policy of {binding.kind} {binding.resource}"):
                    policy = client.get_iam_policy(
                        request={"resource": binding.resource}, **_call()
                    )
                if not has_member(policy, binding.role, member):
                    differences.append(Difference(_iam_resource(binding, member)))
    return differences


def has_member(policy: Any, role: str, member: str) -> bool:
    """Whether an IAM ``policy`` grants ``role`` to ``member`` without a condition."""
    return any(
        member in b.members
        for b in policy.bindings
        if b.role == role and not b.HasField("condition")
    )


def _iam_resource(binding: IamBinding, member: str) -> str:
    return f"iam {binding.role} for {member} on {binding.kind} {binding.resource}"


def _ensure_topic(publisher: Any, name: str) -> Outcome:
    from google.api_core import exceptions as api

    if _get_topic(publisher, name) is not None:
        return Outcome(f"topic {name}", "unchanged")
    with _calling(f"creating topic {name}"):
        try:
            publisher.create_topic(name=name, **_call())
        except api.AlreadyExists:  # created meanwhile by someone else
            return Outcome(f"topic {name}", "unchanged")
    return Outcome(f"topic {name}", "created")


def _ensure_subscription(subscriber: Any, planned: PushSubscription) -> Outcome:
    from google.api_core import exceptions as api

    resource = f"subscription {planned.name}"
    existing = _get_subscription(subscriber, planned.name)
    if existing is None:
        with _calling(f"creating {resource}"):
            try:
                subscriber.create_subscription(request=_desired(planned), **_call())
                return Outcome(resource, "created")
            except api.AlreadyExists:  # created meanwhile: compare it like any other
                pass
        existing = _get_subscription(subscriber, planned.name)
        if existing is None:
            raise ProvisioningFailed(f"{resource} exists and then does not: run provision again")
    differences = _compare(existing, planned)
    if not differences:
        return Outcome(resource, "unchanged")
    for difference in differences:
        if difference.field == "topic":
            raise ProvisioningFailed(
                f"{resource} is attached to {difference.actual}, the plan says "
                f"{difference.planned}; a subscription's topic cannot change: delete the "
                "subscription (its unacknowledged messages are lost) and provision again"
            )
    fields = list(dict.fromkeys(d.field.split(".")[0] for d in differences if d.field))
    desired = _desired(planned)
    if "push_config" in fields:
        desired.push_config = _merged_push_config(existing.push_config, planned)
    with _calling(f"updating {resource} ({', '.join(fields)})"):
        subscriber.update_subscription(
            request={"subscription": desired, "update_mask": {"paths": fields}}, **_call()
        )
    return Outcome(resource, f"updated ({', '.join(fields)})")


def _desired(planned: PushSubscription) -> pubsub.Subscription:
    from google.pubsub_v1 import types as pubsub

    push = pubsub.PushConfig(push_endpoint=planned.push_endpoint)
    if planned.push_auth is not None:
        push.oidc_token = pubsub.PushConfig.OidcToken(
            service_account_email=planned.push_auth.service_account_email,
            audience=planned.push_auth.audience,
        )
    if planned.unwrapped:
        push.no_wrapper = pubsub.PushConfig.NoWrapper(write_metadata=True)
    subscription = pubsub.Subscription(
        name=planned.name,
        topic=planned.topic,
        push_config=push,
        ack_deadline_seconds=planned.ack_deadline_seconds,
        retry_policy=pubsub.RetryPolicy(
            minimum_backoff=timedelta(seconds=planned.min_backoff),
            maximum_backoff=timedelta(seconds=planned.max_backoff),
        ),
        # An expiration policy without a ttl: the subscription never expires.
        expiration_policy=pubsub.ExpirationPolicy(),
    )
    if planned.expires_after is not None:
        subscription.expiration_policy.ttl = timedelta(seconds=planned.expires_after)
    if planned.dead_letter is not None:
        subscription.dead_letter_policy = pubsub.DeadLetterPolicy(
            dead_letter_topic=planned.dead_letter.topic,
            max_delivery_attempts=planned.dead_letter.max_delivery_attempts,
        )
    return subscription


def _merged_push_config(existing: pubsub.PushConfig, planned: PushSubscription) -> Any:
    """The planned endpoint, token and shape on a copy of the existing push config, so settings
    the plan does not manage (push attributes) survive the update."""
    from google.pubsub_v1 import types as pubsub

    push = pubsub.PushConfig(existing)
    push.push_endpoint = planned.push_endpoint
    if planned.unwrapped:
        push.no_wrapper = pubsub.PushConfig.NoWrapper(write_metadata=True)
    elif "no_wrapper" in push:
        push.pubsub_wrapper = pubsub.PushConfig.PubsubWrapper()
    if planned.push_auth is None:
        del push.oidc_token
    else:
        push.oidc_token = pubsub.PushConfig.OidcToken(
            service_account_email=planned.push_auth.service_account_email,
            audience=planned.push_auth.audience,
        )
    return push


def _compare(existing: pubsub.Subscription, planned: PushSubscription) -> list[Difference]:
    push = existing.push_config
    found: list[tuple[str, object, object]] = [
        ("topic", existing.topic, planned.topic),
        ("ack_deadline_seconds", existing.ack_deadline_seconds, planned.ack_deadline_seconds),
        ("push_config.push_endpoint", push.push_endpoint or None, planned.push_endpoint),
        # The shape decides what the service receives: drift here is every push refused.
        ("push_config.shape", _push_shape(push), _UNWRAPPED if planned.unwrapped else _WRAPPED),
    ]
    token = push.oidc_token if "oidc_token" in push else None
    auth = planned.push_auth
    found += _group(
        "push_config.oidc_token",
        None
        if token is None
        else {
            "service_account_email": token.service_account_email,
            # An empty audience means the push endpoint.
            "audience": token.audience or push.push_endpoint,
        },
        None
        if auth is None
        else {"service_account_email": auth.service_account_email, "audience": auth.audience},
    )
    retry = existing.retry_policy if "retry_policy" in existing else None
    found += _group(
        "retry_policy",
        None
        if retry is None
        else {
            "minimum_backoff": _seconds(retry, "minimum_backoff", _DEFAULT_MIN_BACKOFF),
            "maximum_backoff": _seconds(retry, "maximum_backoff", _DEFAULT_MAX_BACKOFF),
        },
        {
            "minimum_backoff": f"{planned.min_backoff}s",
            "maximum_backoff": f"{planned.max_backoff}s",
        },
    )
    letter = existing.dead_letter_policy if "dead_letter_policy" in existing else None
    wanted = planned.dead_letter
    found += _group(
        "dead_letter_policy",
        None
        if letter is None
        else {
            "dead_letter_topic": letter.dead_letter_topic or None,
            "max_delivery_attempts": letter.max_delivery_attempts or _DEFAULT_ATTEMPTS,
        },
        None
        if wanted is None
        else {
            "dead_letter_topic": wanted.topic,
            "max_delivery_attempts": wanted.max_delivery_attempts,
        },
    )
    if "expiration_policy" not in existing:
        expires: object = "31 days (the default)"
    else:
        expires = _seconds(existing.expiration_policy, "ttl", None) or "never"
    wanted_expiry = "never" if planned.expires_after is None else f"{planned.expires_after}s"
    found.append(("expiration_policy.ttl", expires, wanted_expiry))
    resource = f"subscription {planned.name}"
    return [
        Difference(resource, field, _show(actual), _show(planned_value))
        for field, actual, planned_value in found
        if actual != planned_value
    ]


_WRAPPED = "wrapped"
_UNWRAPPED = "unwrapped (no_wrapper, write_metadata)"


def _push_shape(push: Any) -> str:
    if "no_wrapper" not in push:
        return _WRAPPED
    if push.no_wrapper.write_metadata:
        return _UNWRAPPED
    return "unwrapped without write_metadata (no attributes: no signature reaches the service)"


def _group(
    name: str, actual: dict[str, object] | None, planned: dict[str, object] | None
) -> list[tuple[str, object, object]]:
    """A message field compared field by field when both sides have it, else as a whole."""
    if actual is None or planned is None:
        return [(name, _summary(actual), _summary(planned))]
    return [(f"{name}.{key}", actual[key], value) for key, value in planned.items()]


def _summary(values: dict[str, object] | None) -> str | None:
    if values is None:
        return None
    return "{" + ", ".join(f"{key}={_show(value)}" for key, value in values.items()) + "}"


def _seconds(message: Any, field: str, default: int | None) -> str | None:
    """A Duration field as ``"Ns"``; ``default`` (or None) when the field is not set."""
    if field not in message:
        return None if default is None else f"{default}s"
    value = getattr(message, field).total_seconds()
    return f"{value:g}s"


def _show(value: object) -> str:
    return "not set" if value is None else str(value)


def apply_iam(
    plan: Plan, publisher: Any, subscriber: Any, project_number: str
) -> Iterator[Outcome]:
    """Grant the plan's bindings on the dead-letter topic and the subscription (read, add the
    member if missing, write back with the policy's etag). The binding on the push service
    account needs the IAM API, which google-cloud-pubsub does not include: its gcloud command is
    reported instead.
    """
    member = f"serviceAccount:{service_agent(project_number)}"
    for binding in plan.bindings:
        resource = f"iam {binding.role} on {binding.kind.replace('_', ' ')} {binding.resource}"
        if binding.kind == "service_account":
            command = _gcloud_binding(binding, member).replace(" \\\n    ", " ")
            yield Outcome(resource, f"not applied by homing (needs the IAM API); run: {command}")
            continue
        client = publisher if binding.kind == "topic" else subscriber
        with _calling(f"reading the IAM policy of {binding.kind} {binding.resource}"):
            policy = client.get_iam_policy(request={"resource": binding.resource}, **_call())
        if has_member(policy, binding.role, member):
            yield Outcome(resource, "unchanged")
            continue
        granted = [
            b for b in policy.bindings if b.role == binding.role and not b.HasField("condition")
        ]
        if granted:
            granted[0].members.append(member)
        else:
            policy.bindings.add(role=binding.role, members=[member])
        with _calling(f"setting the IAM policy of {binding.kind} {binding.resource}"):
            client.set_iam_policy(
                request={"resource": binding.resource, "policy": policy}, **_call()
            )
        yield Outcome(resource, f"granted to {member}")


def _project_number(project: str) -> str:
    """The number of ``project``, from Cloud Resource Manager (the service agent is named by
    it)."""
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    what = f"looking up the number of project {project} (to name its Pub/Sub service agent)"
    with _calling(what):
        credentials, _ = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
        url = f"https://cloudresourcemanager.googleapis.com/v1/projects/{project}"
        try:
            session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
            response = session.get(url, timeout=CALL_TIMEOUT)
        except OSError as exc:  # requests' errors are OSErrors
            raise ProvisioningFailed(f"{what}: {_line(exc)}") from exc
    if response.status_code != 200:
        raise ProvisioningFailed(
            f"{what}: {response.status_code} {_line(response.text)[:300]}; apply the IAM "
            "bindings with the commands from `homing plan` instead"
        )
    return str(response.json()["projectNumber"])


def _get_topic(publisher: Any, name: str) -> object | None:
    from google.api_core import exceptions as api

    with _calling(f"reading topic {name}"):
        try:
            return publisher.get_topic(topic=name, **_call())  # type: ignore[no-any-return]
        except api.NotFound:
            return None


def _get_subscription(subscriber: Any, name: str) -> pubsub.Subscription | None:
    from google.api_core import exceptions as api

    with _calling(f"reading subscription {name}"):
        try:
            return subscriber.get_subscription(subscription=name, **_call())  # type: ignore[no-any-return]
        except api.NotFound:
            return None


def _call() -> dict[str, Any]:
    """Per-call options: a short timeout, and a retry only while Pub/Sub is unavailable."""
    from google.api_core import exceptions as api
    from google.api_core.retry import Retry, if_exception_type

    return {
        "timeout": CALL_TIMEOUT,
        "retry": Retry(predicate=if_exception_type(api.ServiceUnavailable), timeout=RETRY_DEADLINE),
    }


@contextmanager
def _clients() -> Iterator[tuple[Any, Any]]:
    from google.cloud import pubsub_v1

    with _calling("connecting to Pub/Sub"):
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
    try:
        yield publisher, subscriber
    finally:
        subscriber.close()
        publisher.transport.close()


def _target() -> str:
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    return f"the emulator at {host} (PUBSUB_EMULATOR_HOST)" if host else "pubsub.googleapis.com"


@contextmanager
def _calling(what: str) -> Iterator[None]:
    """Translate client errors into one-line ProvisioningFailed, keeping the cause."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    try:
        yield
    except api.RetryError as exc:
        cause = f": {_line(exc.cause)}" if exc.cause else ""
        raise ProvisioningFailed(f"{what}: cannot reach {_target()}{cause}") from exc
    except (api.ServiceUnavailable, api.DeadlineExceeded) as exc:
        raise ProvisioningFailed(f"{what}: cannot reach {_target()}: {_line(exc)}") from exc
    except api.PermissionDenied as exc:
        raise ProvisioningFailed(
            f"{what}: permission denied ({_line(exc.message)}); the caller needs "
            "roles/pubsub.editor in the project (roles/pubsub.admin for IAM bindings)"
        ) from exc
    except api.NotFound as exc:
        raise ProvisioningFailed(
            f"{what}: not found ({_line(exc.message)}); is the project right?"
        ) from exc
    except api.GoogleAPICallError as exc:
        raise ProvisioningFailed(f"{what}: {_line(exc)}") from exc
    except auth.GoogleAuthError as exc:
        raise ProvisioningFailed(
            f"{what}: no usable Google credentials ({_line(exc)}); run `gcloud auth "
            "application-default login`, or set PUBSUB_EMULATOR_HOST to use the emulator"
        ) from exc


def _line(value: object) -> str:
    return " ".join(str(value).split())
