"""The plan as Terraform (hashicorp/google provider) resources, laid out as ``terraform fmt``
would."""

from __future__ import annotations

import json

from homing.provisioning.model import IamBinding, Plan, TaskQueue, service_agent


def render_terraform(plan: Plan) -> str:
    """The plan as Terraform (hashicorp/google provider) resources."""
    sub = plan.subscription
    topics = {plan.topic.name: "google_pubsub_topic.homing"}
    blocks: list[str] = []
    if any(b.member is None for b in plan.bindings):
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
    if plan.queue is not None:
        blocks.append(_queue_block(plan.queue))

    for binding in plan.bindings:
        blocks.append(_terraform_binding(binding, topics))
    return "\n".join(blocks)


def _queue_block(queue: TaskQueue) -> str:
    project, location, queue_id = queue.parts
    return "# The Cloud Tasks queue of delayed events.\n" + _block(
        'resource "google_cloud_tasks_queue" "homing"',
        [
            ("project", _hcl(project)),
            ("location", _hcl(location)),
            ("name", _hcl(queue_id)),
            _block(
                "rate_limits",
                [
                    ("max_dispatches_per_second", f"{queue.max_dispatches_per_second:g}"),
                    ("max_concurrent_dispatches", str(queue.max_concurrent_dispatches)),
                ],
            ),
            _block(
                "retry_config",
                [
                    ("max_attempts", str(queue.max_attempts)),
                    ("min_backoff", _hcl(f"{queue.min_backoff:g}s")),
                    ("max_backoff", _hcl(f"{queue.max_backoff:g}s")),
                    ("max_doublings", str(queue.max_doublings)),
                ],
            ),
        ],
    )


def _tasks_binding(binding: IamBinding) -> str:
    """A binding a task needs, on the queue, the tasks' account or the Cloud Run service."""
    assert binding.member is not None  # named by the plan
    header = f"# {binding.member} needs {binding.role} {binding.reason}.\n"
    role, member = ("role", _hcl(binding.role)), ("member", _hcl(binding.member))
    if binding.kind == "queue":
        return header + _block(
            'resource "google_cloud_tasks_queue_iam_member" "homing_tasks_enqueuer"',
            [
                ("project", "google_cloud_tasks_queue.homing.project"),
                ("location", "google_cloud_tasks_queue.homing.location"),
                ("name", "google_cloud_tasks_queue.homing.name"),
                role,
                member,
            ],
        )
    if binding.kind == "service_account":
        return header + _block(
            'resource "google_service_account_iam_member" "homing_tasks_account_user"',
            [
                ("service_account_id", _hcl(f"projects/-/serviceAccounts/{binding.resource}")),
                role,
                member,
            ],
        )
    _, project, _, region, _, service = binding.resource.split("/")
    return header + _block(
        'resource "google_cloud_run_service_iam_member" "homing_tasks_invoker"',
        [
            ("project", _hcl(project)),
            ("location", _hcl(region)),
            ("service", _hcl(service)),
            role,
            member,
        ],
    )


def _topic_block(label: str, name: str) -> str:
    _, project, _, topic = name.split("/")
    return _block(
        f'resource "google_pubsub_topic" "{label}"',
        [("project", _hcl(project)), ("name", _hcl(topic))],
    )


def _terraform_binding(binding: IamBinding, topics: dict[str, str]) -> str:
    if binding.purpose == "tasks":
        return _tasks_binding(binding)
    member = ("member", "local.pubsub_service_agent")
    role = ("role", _hcl(binding.role))
    if binding.kind == "run_service":
        assert binding.member is not None  # the push account, named by the plan
        _, project, _, region, _, service = binding.resource.split("/")
        return f"# {binding.member} needs {binding.role} {binding.reason}.\n" + _block(
            'resource "google_cloud_run_service_iam_member" "homing_push_invoker"',
            [
                ("project", _hcl(project)),
                ("location", _hcl(region)),
                ("service", _hcl(service)),
                role,
                ("member", _hcl(binding.member)),
            ],
        )
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
