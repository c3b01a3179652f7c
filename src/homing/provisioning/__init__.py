"""Pub/Sub (and Cloud Tasks) infrastructure as an explicit step: ``plan`` describes,
``provision`` creates, ``check`` compares. Nothing here runs when the app imports homing or starts.

The plan is pure data built from :class:`~homing.settings.Settings` (``model``); it renders as
gcloud commands (``gcloud``) or Terraform (``terraform``), or, for ``HOMING_PUSH_SHAPE=eventarc``,
as an Eventarc trigger (``eventarc``). ``provision`` (``apply``) and ``check`` (``drift``) talk to
Pub/Sub (or to the emulator named by ``PUBSUB_EMULATOR_HOST``, which the client library honours)
through google-cloud-pubsub (``clients``), and to the Cloud Tasks queue of delayed events
(``HOMING_TASKS_QUEUE``) through google-cloud-tasks (the local broker's, with
``CLOUD_TASKS_EMULATOR_HOST``), imported only when they run, so the rest of homing works without
them.
"""

from homing.provisioning.apply import Outcome, apply_iam, provision
from homing.provisioning.clients import (
    CALL_TIMEOUT,
    RETRY_DEADLINE,
    CloudRunIamClient,
    ProvisioningFailed,
)
from homing.provisioning.drift import Difference, check, has_member
from homing.provisioning.eventarc import (
    PUBSUB_MESSAGE_PUBLISHED,
    EventarcTrigger,
    eventarc_trigger,
    render_eventarc_gcloud,
    render_eventarc_terraform,
)
from homing.provisioning.gcloud import render_gcloud
from homing.provisioning.model import (
    DeadLetter,
    IamBinding,
    Plan,
    PushAuth,
    PushSubscription,
    TaskQueue,
    Topic,
    plan,
    service_agent,
)
from homing.provisioning.terraform import render_terraform

__all__ = [
    "CALL_TIMEOUT",
    "PUBSUB_MESSAGE_PUBLISHED",
    "RETRY_DEADLINE",
    "CloudRunIamClient",
    "DeadLetter",
    "Difference",
    "EventarcTrigger",
    "IamBinding",
    "Outcome",
    "Plan",
    "ProvisioningFailed",
    "PushAuth",
    "PushSubscription",
    "TaskQueue",
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
    "service_agent",
]
