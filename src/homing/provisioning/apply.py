"""``provision``: bring Pub/Sub and the Cloud Tasks queue to the plan, idempotently, and grant
their IAM bindings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from homing.provisioning.clients import (
    CloudRunIamClient,
    ProvisioningFailed,
    _call,
    _calling,
    _clients,
    _project_number,
    _tasks_client,
)
from homing.provisioning.drift import (
    _compare,
    _get_queue,
    _get_subscription,
    _get_topic,
    _PolicyClients,
    _read_policy,
    compare_queue,
    has_member,
)
from homing.provisioning.gcloud import _gcloud_binding
from homing.provisioning.model import Plan, PushSubscription, TaskQueue, service_agent

if TYPE_CHECKING:
    from google.pubsub_v1 import types as pubsub


@dataclass(frozen=True)
class Outcome:
    """What ``provision`` did to one resource."""

    resource: str
    action: str

    def __str__(self) -> str:
        return f"{self.resource}: {self.action}"


def provision(
    plan: Plan, *, apply_iam_bindings: bool = True, cloud_run: Any | None = None
) -> Iterator[Outcome]:
    """Bring Pub/Sub to ``plan``, idempotently, yielding one outcome per resource as it goes.

    Topics, the subscription and the Cloud Tasks queue are created when missing; a
    subscription or queue that differs is updated in place (a subscription's topic cannot
    change: that is an error; a paused queue is resumed). IAM bindings are applied only when
    ``apply_iam_bindings`` (the emulator has no IAM); the one on the Cloud Run service through
    ``cloud_run`` (by default a :class:`CloudRunIamClient`).

    Raises:
        ProvisioningFailed: Pub/Sub or Cloud Tasks refused or could not be reached; one line
            says why.
    """
    with ExitStack() as stack:
        publisher, subscriber = stack.enter_context(_clients())
        tasks = None if plan.queue is None else stack.enter_context(_tasks_client())
        for topic in plan.topics:
            yield _ensure_topic(publisher, topic.name)
        yield _ensure_subscription(subscriber, plan.subscription)
        if plan.queue is not None:
            yield _ensure_queue(tasks, plan.queue)
        if apply_iam_bindings and plan.bindings:
            # The Pub/Sub service agent is named by the project's number: looked up if needed.
            needed = any(b.member is None for b in plan.bindings)
            number = _project_number(plan.project) if needed else ""
            yield from apply_iam(
                plan, publisher, subscriber, number, cloud_run=cloud_run, tasks=tasks
            )


def _ensure_queue(client: Any, planned: TaskQueue) -> Outcome:
    from google.api_core import exceptions as api

    resource = f"queue {planned.name}"
    existing = _get_queue(client, planned.name)
    if existing is None:
        parent = planned.name.rsplit("/queues/", 1)[0]
        with _calling(f"creating {resource}", service="tasks"):
            try:
                client.create_queue(parent=parent, queue=_desired_queue(planned), **_call())
                return Outcome(resource, "created")
            except api.AlreadyExists:  # created meanwhile: compare it like any other
                pass
        existing = _get_queue(client, planned.name)
        if existing is None:
            raise ProvisioningFailed(f"{resource} exists and then does not: run provision again")
    differences = compare_queue(existing, planned)
    if not differences:
        return Outcome(resource, "unchanged")
    fields = list(dict.fromkeys(d.field.split(".")[0] for d in differences if d.field))
    changed = [f for f in fields if f != "state"]
    if changed:
        with _calling(f"updating {resource} ({', '.join(changed)})", service="tasks"):
            client.update_queue(
                queue=_desired_queue(planned), update_mask={"paths": changed}, **_call()
            )
    if "state" in fields:
        with _calling(f"resuming {resource}", service="tasks"):
            client.resume_queue(name=planned.name, **_call())
    return Outcome(resource, f"updated ({', '.join(fields)})")


def _desired_queue(planned: TaskQueue) -> Any:
    from google.cloud import tasks_v2

    return tasks_v2.Queue(
        name=planned.name,
        rate_limits=tasks_v2.RateLimits(
            max_dispatches_per_second=planned.max_dispatches_per_second,
            max_concurrent_dispatches=planned.max_concurrent_dispatches,
        ),
        retry_config=tasks_v2.RetryConfig(
            max_attempts=planned.max_attempts,
            min_backoff=timedelta(seconds=planned.min_backoff),
            max_backoff=timedelta(seconds=planned.max_backoff),
            max_doublings=planned.max_doublings,
        ),
    )


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


def apply_iam(
    plan: Plan,
    publisher: Any,
    subscriber: Any,
    project_number: str,
    *,
    cloud_run: Any | None = None,
    tasks: Any | None = None,
) -> Iterator[Outcome]:
    """Grant the plan's bindings on the dead-letter topic, the subscription, the Cloud Tasks
    queue and the Cloud Run service (read, add the member if missing, write back with the
    policy's etag); ``cloud_run`` holds the service's policy (by default a
    :class:`CloudRunIamClient`), ``tasks`` (a Cloud Tasks client) the queue's. Bindings on
    service accounts need the IAM API, which the Google clients used here do not include: their
    gcloud commands are reported instead.
    """
    clients = _PolicyClients(publisher, subscriber, cloud_run or CloudRunIamClient(), tasks)
    agent = f"serviceAccount:{service_agent(project_number)}"
    for binding in plan.bindings:
        member = binding.member or agent
        resource = f"iam {binding.role} on {binding.kind.replace('_', ' ')} {binding.resource}"
        if binding.kind == "service_account":
            command = _gcloud_binding(binding, member).replace(" \\\n    ", " ")
            yield Outcome(resource, f"not applied by homing (needs the IAM API); run: {command}")
            continue
        policy = _read_policy(clients, binding)
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
        service = "tasks" if binding.kind == "queue" else "pubsub"
        with _calling(
            f"setting the IAM policy of {binding.kind} {binding.resource}", service=service
        ):
            clients.of(binding).set_iam_policy(
                request={"resource": binding.resource, "policy": policy}, **_call()
            )
        yield Outcome(resource, f"granted to {member}")
