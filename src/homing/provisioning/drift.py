"""``check``: every way in which Pub/Sub, the Cloud Tasks queue (and the IAM they need) differ
from the plan, and the reads ``provision`` shares with it."""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from homing.provisioning.clients import (
    CloudRunIamClient,
    _call,
    _calling,
    _clients,
    _project_number,
    _tasks_client,
)
from homing.provisioning.model import IamBinding, Plan, PushSubscription, TaskQueue, service_agent

if TYPE_CHECKING:
    from google.pubsub_v1 import types as pubsub

# Pub/Sub's default when a dead-letter policy leaves max_delivery_attempts at 0.
_DEFAULT_ATTEMPTS = 5
# Pub/Sub's defaults for a retry policy field that is not set.
_DEFAULT_MIN_BACKOFF = 10
_DEFAULT_MAX_BACKOFF = 600


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


def check(
    plan: Plan, *, compare_iam_bindings: bool | None = None, cloud_run: Any | None = None
) -> list[Difference]:
    """Every difference between Pub/Sub and ``plan``: resources, subscription settings (the push
    shape included) and, when ``compare_iam_bindings`` (by default: unless
    ``PUBSUB_EMULATOR_HOST`` names an emulator or local broker, which have no IAM), the IAM
    bindings on the dead-letter topic, the subscription, the Cloud Tasks queue and the Cloud
    Run service (read through ``cloud_run``, by default a :class:`CloudRunIamClient`). The
    bindings on service accounts need the IAM API, which the Google clients used here do not
    include: they are not compared. The queue (with ``plan.queue``) is read through
    google-cloud-tasks, from the local broker when ``CLOUD_TASKS_EMULATOR_HOST`` is set.

    Raises:
        ProvisioningFailed: Pub/Sub refused or could not be reached; one line says why.
    """
    if compare_iam_bindings is None:
        compare_iam_bindings = not os.environ.get("PUBSUB_EMULATOR_HOST")
    differences: list[Difference] = []
    with ExitStack() as stack:
        publisher, subscriber = stack.enter_context(_clients())
        tasks = None if plan.queue is None else stack.enter_context(_tasks_client())
        for topic in plan.topics:
            if _get_topic(publisher, topic.name) is None:
                differences.append(Difference(f"topic {topic.name}"))
        existing = _get_subscription(subscriber, plan.subscription.name)
        if existing is None:
            differences.append(Difference(f"subscription {plan.subscription.name}"))
        else:
            differences += _compare(existing, plan.subscription)
        if plan.queue is not None:
            queue = _get_queue(tasks, plan.queue.name)
            if queue is None:
                differences.append(Difference(f"queue {plan.queue.name}"))
            else:
                differences += compare_queue(queue, plan.queue)
        if compare_iam_bindings and not differences:
            clients = _PolicyClients(publisher, subscriber, cloud_run or CloudRunIamClient(), tasks)
            differences += _missing_bindings(plan, clients)
    return differences


@dataclass(frozen=True)
class _PolicyClients:
    """Who holds the IAM policy of each kind of resource."""

    publisher: Any
    subscriber: Any
    cloud_run: Any
    tasks: Any = None

    def of(self, binding: IamBinding) -> Any:
        by_kind = {
            "topic": self.publisher,
            "subscription": self.subscriber,
            "run_service": self.cloud_run,
            "queue": self.tasks,
        }
        return by_kind[binding.kind]


def _missing_bindings(plan: Plan, clients: _PolicyClients) -> list[Difference]:
    """The plan's bindings that no policy grants, but the one on the push service account."""
    compared = [b for b in plan.bindings if b.kind != "service_account"]
    agent = ""  # looked up only when a compared binding is the service agent's
    if any(b.member is None for b in compared):
        agent = f"serviceAccount:{service_agent(_project_number(plan.project))}"
    missing: list[Difference] = []
    for binding in compared:
        member = binding.member or agent
        if not has_member(_read_policy(clients, binding), binding.role, member):
            missing.append(Difference(_iam_resource(binding, member)))
    return missing


def _read_policy(clients: _PolicyClients, binding: IamBinding) -> Any:
    service = "tasks" if binding.kind == "queue" else "pubsub"
    with _calling(f"reading the IAM policy of {binding.kind} {binding.resource}", service=service):
        return clients.of(binding).get_iam_policy(request={"resource": binding.resource}, **_call())


def has_member(policy: Any, role: str, member: str) -> bool:
    """Whether an IAM ``policy`` grants ``role`` to ``member`` without a condition."""
    return any(
        member in b.members
        for b in policy.bindings
        if b.role == role and not b.HasField("condition")
    )


def _iam_resource(binding: IamBinding, member: str) -> str:
    return f"iam {binding.role} for {member} on {binding.kind.replace('_', ' ')} {binding.resource}"


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


def _get_queue(client: Any, name: str) -> Any | None:
    from google.api_core import exceptions as api

    with _calling(f"reading queue {name}", service="tasks"):
        try:
            return client.get_queue(name=name, **_call())
        except api.NotFound:
            return None


def compare_queue(existing: Any, planned: TaskQueue) -> list[Difference]:
    """Each way in which the Cloud Tasks ``existing`` queue differs from ``planned``: its
    state, rate limits and retry config."""
    rate, retry = existing.rate_limits, existing.retry_config
    found: list[tuple[str, object, object]] = [
        ("state", _state(existing), "RUNNING"),
        (
            "rate_limits.max_dispatches_per_second",
            f"{rate.max_dispatches_per_second:g}",
            f"{planned.max_dispatches_per_second:g}",
        ),
        (
            "rate_limits.max_concurrent_dispatches",
            rate.max_concurrent_dispatches,
            planned.max_concurrent_dispatches,
        ),
        ("retry_config.max_attempts", retry.max_attempts, planned.max_attempts),
        ("retry_config.min_backoff", _span(retry.min_backoff), f"{planned.min_backoff:g}s"),
        ("retry_config.max_backoff", _span(retry.max_backoff), f"{planned.max_backoff:g}s"),
        ("retry_config.max_doublings", retry.max_doublings, planned.max_doublings),
        # Not set: retried until max_attempts, however long that takes.
        ("retry_config.max_retry_duration", _span(retry.max_retry_duration), None),
    ]
    resource = f"queue {planned.name}"
    return [
        Difference(resource, field, _show(actual), _show(planned_value))
        for field, actual, planned_value in found
        if actual != planned_value
    ]


def _state(queue: Any) -> str:
    state = queue.state
    return str(getattr(state, "name", state))


def _span(value: Any) -> str | None:
    """A Duration field (a timedelta, through proto-plus) as ``"Ns"``; ``None`` when unset."""
    if not value:
        return None
    return f"{value.total_seconds():g}s"
