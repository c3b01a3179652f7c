"""An Eventarc trigger instead of a push subscription (``HOMING_PUSH_SHAPE=eventarc``): its model
and its gcloud and Terraform renderings. Eventarc creates and owns the subscription itself."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from urllib.parse import urlsplit

from homing.errors import ConfigurationError
from homing.provisioning.gcloud import _AGENT_VARIABLE, _command, _gcloud_binding
from homing.provisioning.model import (
    _EMAIL,
    _PROJECT,
    IamBinding,
    _name,
    _run_service_name,
    service_agent,
)
from homing.provisioning.terraform import _block, _hcl, _terraform_binding, _topic_block
from homing.settings import Settings

#: The CloudEvent type Eventarc gives a message published to a Pub/Sub topic.
PUBSUB_MESSAGE_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
_EVENTARC_REQUIRED = ("project", "topic", "push_endpoint", "push_service_account")
_EVENTARC_NAMED = ("run_service", "region")


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
                member=f"serviceAccount:{self.service_account}",
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
    _run_service_name(settings.project, settings.region, settings.run_service)  # checks both
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
