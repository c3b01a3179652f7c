"""The ``homing`` command: thin — parse, configure, call one function."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from homing import provisioning
from homing.envelope import build_push
from homing.errors import ConfigurationError, HomingError
from homing.settings import Settings
from homing.signing import Signer, new_key


def _envelope(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if settings.signing_keys is None:
        raise HomingError(
            "HOMING_SIGNING_KEYS is not set: the envelope is signed with the service's keys"
        )
    try:
        data = orjson.dumps(orjson.loads(args.json))
    except orjson.JSONDecodeError as exc:
        raise HomingError(f"JSON is not valid JSON: {exc}") from None
    attributes = dict(_pair(item) for item in args.attribute)
    signer = Signer(settings.signing_keys)
    signed = signer.sign(data, args.type, event_id=args.event_id, attributes=attributes)
    body = build_push(
        data, signed, message_id=args.message_id or uuid.uuid4().hex, subscription=args.subscription
    )
    sys.stdout.write(body.decode() + "\n")
    return 0


def _pair(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise HomingError(f"attribute {item!r} is not of the form KEY=VALUE")
    return key, value


def _keys_new(_args: argparse.Namespace) -> int:
    sys.stdout.write(new_key() + "\n")
    return 0


# Flags of the plan / provision / check commands: the setting each overrides, and its metavar.
_INFRA_FLAGS = {
    "--project": ("project", "PROJECT"),
    "--topic": ("topic", "TOPIC"),
    "--subscription": ("subscription", "SUBSCRIPTION"),
    "--push-endpoint": ("push_endpoint", "URL"),
    "--dead-letter-topic": ("dead_letter_topic", "TOPIC"),
    "--push-service-account": ("push_service_account", "EMAIL"),
    "--audience": ("oidc_audience", "AUDIENCE"),
    "--ack-deadline": ("ack_deadline", "SECONDS"),
    "--min-backoff": ("min_backoff", "SECONDS"),
    "--max-backoff": ("max_backoff", "SECONDS"),
    "--max-delivery-attempts": ("max_delivery_attempts", "N"),
}


def _infra_plan(args: argparse.Namespace) -> provisioning.Plan:
    """The plan from the environment's settings, overridden by the flags given."""
    settings = Settings.from_env()
    overrides: dict[str, Any] = {}
    for flag, (name, _) in _INFRA_FLAGS.items():
        raw = getattr(args, name)
        if raw is None:
            continue
        spec = Settings.__dataclass_fields__[name]
        if raw == "" and spec.default is None:
            overrides[name] = None  # as in the environment: empty means unset
            continue
        try:
            overrides[name] = spec.metadata["parse"](raw)
        except ValueError as exc:
            raise ConfigurationError(f"{flag}: {exc}") from None
    return provisioning.plan(dataclasses.replace(settings, **overrides))


def _plan(args: argparse.Namespace) -> int:
    plan = _infra_plan(args)
    if args.format == "terraform":
        sys.stdout.write(provisioning.render_terraform(plan))
    else:
        sys.stdout.write(provisioning.render_gcloud(plan))
    return 0


def _provision(args: argparse.Namespace) -> int:
    plan = _infra_plan(args)
    emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
    for outcome in provisioning.provision(plan, apply_iam_bindings=not emulator):
        print(outcome, flush=True)
    if emulator and plan.bindings:
        print(
            f"iam: skipped, the emulator at {emulator} (PUBSUB_EMULATOR_HOST) has no IAM "
            "(against Pub/Sub, provision applies the bindings `homing plan` lists)"
        )
    return 0


def _check(args: argparse.Namespace) -> int:
    differences = provisioning.check(_infra_plan(args))
    for difference in differences:
        print(difference)
    if differences:
        return 1
    print("no drift")
    return 0


def _infra_flags() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group(
        "settings", "each overrides the environment variable of the same meaning"
    )
    for flag, (name, metavar) in _INFRA_FLAGS.items():
        group.add_argument(flag, dest=name, metavar=metavar, help=Settings.variable(name))
    return flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="homing", description="Signed background events for Cloud Run through Pub/Sub push."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    envelope = commands.add_parser(
        "envelope",
        help="print a signed push envelope (to curl the endpoint by hand)",
        description="Print, on stdout, a wrapped Pub/Sub push envelope carrying JSON as an "
        "event of TYPE, signed with the keys in HOMING_SIGNING_KEYS.",
    )
    envelope.add_argument("type", metavar="TYPE", help="event type, e.g. user.name.changed")
    envelope.add_argument("json", metavar="JSON", help="the event's data as JSON")
    envelope.add_argument("--event-id", help="event id (default: a fresh one)")
    envelope.add_argument("--message-id", help="Pub/Sub message id (default: a fresh one)")
    envelope.add_argument(
        "--attribute", action="append", default=[], metavar="KEY=VALUE", help="extra attribute"
    )
    envelope.add_argument(
        "--subscription", default="projects/local/subscriptions/homing-cli", help="subscription"
    )
    envelope.set_defaults(run=_envelope)

    keys = commands.add_parser("keys", help="signing keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    key_commands.add_parser("new", help="print a fresh kid:secret pair").set_defaults(run=_keys_new)

    infra = _infra_flags()
    plan = commands.add_parser(
        "plan",
        parents=[infra],
        help="print the Pub/Sub resources and IAM bindings as gcloud commands or Terraform",
        description="Print, without touching anything, the topic, dead-letter topic, push "
        "subscription and IAM bindings the settings call for.",
    )
    plan.add_argument(
        "--format",
        choices=("gcloud", "terraform"),
        default="gcloud",
        help="gcloud commands (default) or Terraform resources",
    )
    plan.set_defaults(run=_plan)
    commands.add_parser(
        "provision",
        parents=[infra],
        help="create or update the topics and the push subscription (idempotent)",
        description="Create what is missing and update a subscription that differs from the "
        "plan; print one line per resource. Honours PUBSUB_EMULATOR_HOST.",
    ).set_defaults(run=_provision)
    commands.add_parser(
        "check",
        parents=[infra],
        help="compare Pub/Sub with the plan; exit 1 naming each difference",
        description="Print each difference between Pub/Sub and the plan and exit 1, or print "
        "'no drift' and exit 0. Honours PUBSUB_EMULATOR_HOST.",
    ).set_defaults(run=_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except HomingError as exc:
        sys.stderr.write(f"homing: error: {exc}\n")
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
