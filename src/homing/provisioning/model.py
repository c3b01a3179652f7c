"""The plan: what homing needs in Pub/Sub (and, for delayed events, in Cloud Tasks), as frozen
data built from :class:`~homing.settings.Settings`, with the rules a name must follow."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from homing.errors import ConfigurationError
from homing.settings import Settings

_ID = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")
_ID_RULE = (
    "ids are 3-255 characters, start with a letter, contain only letters, digits and - _ . ~ + %,"
    " and do not start with 'goog'"
)
_PROJECT = re.compile(r"(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]")
_PATH = re.compile(r"projects/([^/]+)/([a-z]+)/([^/]+)")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]")
_SERVICE = re.compile(r"[a-z](?:[a-z0-9-]{0,47}[a-z0-9])?")
_LOCATION = re.compile(r"[a-z]+-[a-z]+[0-9]{1,2}")
_QUEUE_ID = re.compile(r"[A-Za-z0-9-]{1,100}")
_QUEUE_PATH = re.compile(r"projects/([^/]+)/locations/([^/]+)/queues/([^/]+)")

#: The roles a task needs: the enqueuer's on the queue, and to act as the token's account.
ENQUEUER = "roles/cloudtasks.enqueuer"
SERVICE_ACCOUNT_USER = "roles/iam.serviceAccountUser"
INVOKER = "roles/run.invoker"


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
    """A role a member needs on one resource, and why.

    ``member`` is ``None`` for the Pub/Sub service agent, whose email holds the project number
    (looked up when the binding is applied); any other member is named, e.g.
    ``serviceAccount:EMAIL``.
    """

    kind: Literal["topic", "subscription", "service_account", "run_service", "queue"]
    resource: str
    role: str
    reason: str
    member: str | None = None
    #: What needs it: Pub/Sub's push, or Cloud Tasks' delayed events.
    purpose: Literal["pubsub", "tasks"] = "pubsub"


@dataclass(frozen=True)
class TaskQueue:
    """The Cloud Tasks queue of delayed events: its rate limits and retry config.

    ``name`` is ``projects/P/locations/L/queues/Q``; backoffs are in seconds.
    """

    name: str
    max_dispatches_per_second: float
    max_concurrent_dispatches: int
    max_attempts: int
    min_backoff: float
    max_backoff: float
    max_doublings: int

    @property
    def parts(self) -> tuple[str, str, str]:
        """The queue's project, location and id."""
        _, project, _, location, _, queue = self.name.split("/")
        return project, location, queue


@dataclass(frozen=True)
class Plan:
    """Everything homing needs in Pub/Sub (and Cloud Tasks), as data.

    ``project`` is the subscription's project: its Pub/Sub service agent
    (``service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com``) is the member of every
    binding that names none. ``queue`` is the Cloud Tasks queue, when ``HOMING_TASKS_QUEUE``
    asks for one.
    """

    project: str
    topic: Topic
    dead_letter_topic: Topic | None
    subscription: PushSubscription
    bindings: tuple[IamBinding, ...]
    queue: TaskQueue | None = None

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
    invoker = _invoker_binding(settings, project, push_auth)

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
    if invoker is not None:
        bindings.append(invoker)
    queue = _queue(settings, project)
    if queue is not None:
        granted = {(b.kind, b.resource, b.role, b.member) for b in bindings}
        bindings += [
            b
            for b in _task_bindings(settings, queue, project)
            if (b.kind, b.resource, b.role, b.member) not in granted
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
        queue=queue,
    )


def _queue(settings: Settings, project: str) -> TaskQueue | None:
    """The Cloud Tasks queue ``HOMING_TASKS_QUEUE`` names, or ``None``."""
    if not settings.tasks_queue:
        return None
    variable = Settings.variable("tasks_queue")
    match = _QUEUE_PATH.fullmatch(settings.tasks_queue)
    if match:
        project, location, queue_id = match.groups()
        if not _PROJECT.fullmatch(project):
            raise ConfigurationError(f"{variable}: {project!r} is not a project id")
    elif "/" in settings.tasks_queue:
        raise ConfigurationError(
            f"{variable}: {settings.tasks_queue!r} is neither a queue id nor "
            "projects/PROJECT/locations/LOCATION/queues/ID"
        )
    else:
        queue_id = settings.tasks_queue
        location = settings.tasks_location or settings.region or ""
        if not location:
            raise ConfigurationError(
                f"{variable} needs a location: set {Settings.variable('tasks_location')} (or "
                f"{Settings.variable('region')}), or give projects/P/locations/L/queues/Q"
            )
    if not _LOCATION.fullmatch(location):
        raise ConfigurationError(
            f"{Settings.variable('tasks_location')}: {location!r} is not a Cloud Tasks "
            "location (e.g. europe-west1)"
        )
    if not _QUEUE_ID.fullmatch(queue_id):
        raise ConfigurationError(
            f"{variable}: {queue_id!r} is not a queue id (letters, digits and hyphens, at most 100)"
        )
    if settings.tasks_min_backoff > settings.tasks_max_backoff:  # settings made by replace()
        raise ConfigurationError(
            f"{Settings.variable('tasks_min_backoff')} exceeds "
            f"{Settings.variable('tasks_max_backoff')}"
        )
    return TaskQueue(
        name=f"projects/{project}/locations/{location}/queues/{queue_id}",
        max_dispatches_per_second=settings.tasks_max_dispatches_per_second,
        max_concurrent_dispatches=settings.tasks_max_concurrent_dispatches,
        max_attempts=settings.max_delivery_attempts,
        min_backoff=settings.tasks_min_backoff,
        max_backoff=settings.tasks_max_backoff,
        max_doublings=settings.tasks_max_doublings,
    )


def _task_bindings(settings: Settings, queue: TaskQueue, project: str) -> list[IamBinding]:
    """What a task needs: its token's account may invoke the service; the account that
    creates tasks may enqueue them and act as the token's account."""
    account = settings.tasks_account
    enqueuer = settings.tasks_enqueuer
    for name, value in (("tasks_service_account", account), ("tasks_enqueuer", enqueuer)):
        if value is not None and not _EMAIL.fullmatch(value):
            raise ConfigurationError(
                f"{Settings.variable(name)}: {value!r} is not a service account email"
            )
    if enqueuer is None:
        raise ConfigurationError(
            f"{Settings.variable('tasks_queue')} needs {Settings.variable('tasks_enqueuer')}: "
            "the account that creates the tasks (the service's own on Cloud Run) needs "
            f"{ENQUEUER} on the queue"
        )
    bindings = [
        IamBinding(
            "queue",
            queue.name,
            ENQUEUER,
            "to create the tasks of delayed events in the queue",
            member=f"serviceAccount:{enqueuer}",
            purpose="tasks",
        )
    ]
    if account is not None:
        bindings.append(
            IamBinding(
                "service_account",
                account,
                SERVICE_ACCOUNT_USER,
                "to create tasks that carry this account's OIDC token",
                member=f"serviceAccount:{enqueuer}",
                purpose="tasks",
            )
        )
        if settings.run_service and settings.region:
            bindings.append(
                IamBinding(
                    "run_service",
                    _run_service_name(project, settings.region, settings.run_service),
                    INVOKER,
                    "to call the service with the tasks' token: without it, a service that "
                    "requires authentication answers every task 403",
                    member=f"serviceAccount:{account}",
                    purpose="tasks",
                )
            )
    return bindings


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


def _invoker_binding(
    settings: Settings, project: str, push_auth: PushAuth | None
) -> IamBinding | None:
    """``roles/run.invoker`` for the push account on the Cloud Run service, when one is named."""
    if not settings.run_service and not settings.region:
        return None
    if not settings.run_service or not settings.region:
        given, other = (
            ("run_service", "region") if settings.run_service else ("region", "run_service")
        )
        raise ConfigurationError(
            f"{Settings.variable(given)} is set but {Settings.variable(other)} is not: the "
            "roles/run.invoker binding on the Cloud Run service needs both"
        )
    if push_auth is None:
        raise ConfigurationError(
            f"{Settings.variable('run_service')} is set but "
            f"{Settings.variable('push_service_account')} is not: without a push token there is "
            "no account to allow to invoke the service"
        )
    return IamBinding(
        "run_service",
        _run_service_name(project, settings.region, settings.run_service),
        "roles/run.invoker",
        "to call the service: without it, a service that requires authentication "
        "(--no-allow-unauthenticated) answers every push 403",
        member=f"serviceAccount:{push_auth.service_account_email}",
    )


def _run_service_name(project: str, region: str, service: str) -> str:
    """``projects/P/locations/R/services/S``, or a ConfigurationError naming the setting that
    cannot work."""
    if not _REGION.fullmatch(region):
        raise ConfigurationError(
            f"{Settings.variable('region')}: {region!r} is not a region (e.g. europe-west1)"
        )
    if not _SERVICE.fullmatch(service):
        raise ConfigurationError(
            f"{Settings.variable('run_service')}: {service!r} is not a Cloud Run "
            "service name (lowercase letters, digits and hyphens, at most 49)"
        )
    return f"projects/{project}/locations/{region}/services/{service}"
