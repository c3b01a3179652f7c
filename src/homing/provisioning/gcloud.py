"""The plan as a shell script of gcloud commands."""

from __future__ import annotations

import shlex

from homing.provisioning.model import IamBinding, Plan, TaskQueue, service_agent

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
    if plan.queue is not None:
        lines += ["", "# The Cloud Tasks queue of delayed events.", _queue_command(plan.queue)]
    agent_bindings = [b for b in plan.bindings if b.member is None]
    if agent_bindings:
        number = (
            f"$(gcloud projects describe {shlex.quote(plan.project)} "
            "--format='value(projectNumber)')"
        )
        lines += [
            "",
            f"# The Pub/Sub service agent of project {plan.project} needs:",
            *(f"#   {_described(b)}" for b in agent_bindings),
            f'{_AGENT_VARIABLE}="serviceAccount:{service_agent(number)}"',
        ]
        for binding in agent_bindings:
            lines.append(_gcloud_binding(binding, f'"${{{_AGENT_VARIABLE}}}"'))
    for binding in plan.bindings:
        if binding.member is not None:
            lines += [
                "",
                f"# {binding.member} needs:",
                f"#   {_described(binding)}",
                _gcloud_binding(binding, shlex.quote(binding.member)),
            ]
    return "\n".join(lines) + "\n"


def _queue_command(queue: TaskQueue) -> str:
    project, location, queue_id = queue.parts
    return _command(
        [
            "gcloud",
            "tasks",
            "queues",
            "create",
            queue_id,
            f"--project={project}",
            f"--location={location}",
            f"--max-dispatches-per-second={queue.max_dispatches_per_second:g}",
            f"--max-concurrent-dispatches={queue.max_concurrent_dispatches}",
            f"--max-attempts={queue.max_attempts}",
            f"--min-backoff={queue.min_backoff:g}s",
            f"--max-backoff={queue.max_backoff:g}s",
            f"--max-doublings={queue.max_doublings}",
        ]
    )


def _described(binding: IamBinding) -> str:
    return (
        f"{binding.role} on {binding.kind.replace('_', ' ')} {binding.resource}, {binding.reason}"
    )


def _gcloud_binding(binding: IamBinding, member: str) -> str:
    """The gcloud command granting ``binding`` to ``member`` (already quoted for the shell)."""
    where: list[str] = []
    if binding.kind == "run_service":
        _, project, _, region, _, service = binding.resource.split("/")
        command = ["gcloud", "run", "services", "add-iam-policy-binding", shlex.quote(service)]
        where = [f"--project={shlex.quote(project)}", f"--region={shlex.quote(region)}"]
    elif binding.kind == "queue":
        _, project, _, location, _, queue = binding.resource.split("/")
        command = ["gcloud", "tasks", "queues", "add-iam-policy-binding", shlex.quote(queue)]
        where = [f"--project={shlex.quote(project)}", f"--location={shlex.quote(location)}"]
    else:
        group = {
            "topic": ["pubsub", "topics"],
            "subscription": ["pubsub", "subscriptions"],
            "service_account": ["iam", "service-accounts"],
        }[binding.kind]
        command = ["gcloud", *group, "add-iam-policy-binding", shlex.quote(binding.resource)]
    flags = [*where, f"--member={member}", f"--role={shlex.quote(binding.role)}"]
    return " \\\n    ".join([" ".join(command), *flags])


def _command(words: list[str]) -> str:
    """A command with one flag per line; everything quoted for the shell."""
    head = [shlex.quote(word) for word in words if not word.startswith("--")]
    flags = [shlex.quote(word) for word in words if word.startswith("--")]
    return " \\\n    ".join([" ".join(head), *flags])
