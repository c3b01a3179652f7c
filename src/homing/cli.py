"""The ``homing`` command: thin — parse, configure, call one function."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import uuid
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import orjson

from homing import __version__, provisioning
from homing.broker.cli import add_command as broker_command
from homing.catalog import Catalog, incompatible_changes, render_asyncapi, render_markdown
from homing.dev import add_command as dev_command
from homing.errors import ConfigurationError, HomingError
from homing.escaping import printable
from homing.ingress.wrapped import build_push
from homing.loading import homing_of, load, resolve, service_spec
from homing.settings import Settings
from homing.signing import Signer, new_key
from homing.stores.memory import MemoryQuarantineStore


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
    "--push-shape": ("push_shape", "SHAPE"),
    "--run-service": ("run_service", "SERVICE"),
    "--region": ("region", "REGION"),
    "--push-service-account": ("push_service_account", "EMAIL"),
    "--audience": ("oidc_audience", "AUDIENCE"),
    "--ack-deadline": ("ack_deadline", "SECONDS"),
    "--min-backoff": ("min_backoff", "SECONDS"),
    "--max-backoff": ("max_backoff", "SECONDS"),
    "--max-delivery-attempts": ("max_delivery_attempts", "N"),
    "--tasks-queue": ("tasks_queue", "QUEUE"),
    "--tasks-location": ("tasks_location", "LOCATION"),
    "--tasks-service-account": ("tasks_service_account", "EMAIL"),
    "--tasks-enqueuer": ("tasks_enqueuer", "EMAIL"),
    "--tasks-max-dispatches-per-second": ("tasks_max_dispatches_per_second", "N"),
    "--tasks-max-concurrent-dispatches": ("tasks_max_concurrent_dispatches", "N"),
    "--tasks-min-backoff": ("tasks_min_backoff", "SECONDS"),
    "--tasks-max-backoff": ("tasks_max_backoff", "SECONDS"),
    "--tasks-max-doublings": ("tasks_max_doublings", "N"),
}


def _infra_plan(args: argparse.Namespace) -> provisioning.Plan:
    """The plan from the environment's settings, overridden by the flags given."""
    return provisioning.plan(_infra_settings(args))


def _infra_settings(args: argparse.Namespace) -> Settings:
    """The environment's settings, overridden by the flags given."""
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
    return dataclasses.replace(settings, **overrides)


def _plan(args: argparse.Namespace) -> int:
    settings = _infra_settings(args)
    if settings.push_shape == "eventarc":
        trigger = provisioning.eventarc_trigger(settings)
        if args.format == "terraform":
            sys.stdout.write(provisioning.render_eventarc_terraform(trigger))
        else:
            sys.stdout.write(provisioning.render_eventarc_gcloud(trigger))
        return 0
    plan = provisioning.plan(settings)
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
    plan = _infra_plan(args)
    emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
    differences = provisioning.check(plan, compare_iam_bindings=not emulator)
    for difference in differences:
        print(difference)
    if emulator and plan.bindings:
        print(
            f"iam: not compared, the emulator at {emulator} (PUBSUB_EMULATOR_HOST) has no IAM",
            file=sys.stderr,
        )
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


def _run(coroutine: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coroutine)


async def _quarantine_list(args: argparse.Namespace) -> int:
    async with load(_service(args)) as loaded:
        store = loaded.homing.quarantine
        entries = await store.list(limit=args.limit)
    if isinstance(store, MemoryQuarantineStore):
        raise HomingError(
            "the service keeps its quarantine in memory, inside its own process: this command "
            "cannot see it (give the service a SQLQuarantineStore and DATABASE_URL)"
        )
    if not entries:
        sys.stdout.write("the quarantine is empty\n")
    for entry in entries:
        when = entry.received_at.isoformat(timespec="seconds")
        reason = entry.reason if len(entry.reason) <= 100 else entry.reason[:99] + "…"
        # Ids, types and reasons may hold text a sender chose: shown, never obeyed.
        fields = (entry.id, when, entry.event_type or "-", reason)
        sys.stdout.write("\t".join(map(printable, fields)) + "\n")
    return 0


async def _quarantine_show(args: argparse.Namespace) -> int:
    async with load(_service(args)) as loaded:
        entry = await loaded.homing.quarantine.get(args.id)
    if entry is None:
        raise HomingError(f"no quarantined message {args.id!r}")
    try:
        envelope: object = orjson.loads(entry.body)
    except orjson.JSONDecodeError:
        envelope = entry.body.decode("utf-8", errors="replace")
    shown = {
        "id": entry.id,
        "event_type": entry.event_type,
        "event_id": entry.event_id,
        "received_at": entry.received_at.isoformat(),
        "reason": entry.reason,
        "envelope": envelope,
    }
    sys.stdout.write(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


async def _quarantine_replay(args: argparse.Namespace) -> int:
    failed = 0
    async with load(_service(args)) as loaded:
        for entry_id in args.ids:
            result = await loaded.homing.replay(entry_id, force=args.force)
            if result.outcome == "done":
                sys.stdout.write(printable(f"{entry_id}: replayed, handled") + "\n")
            else:
                failed += 1
                sys.stdout.write(
                    printable(f"{entry_id}: still quarantined ({result.outcome}: {result.detail})")
                    + "\n"
                )
    return 1 if failed else 0


async def _quarantine_purge(args: argparse.Namespace) -> int:
    if not args.ids and not args.all:
        raise HomingError("name the entries to purge, or pass --all")
    async with load(_service(args)) as loaded:
        store = loaded.homing.quarantine
        ids = args.ids or [entry.id for entry in await store.list(limit=1_000_000)]
        purged = [entry_id for entry_id in ids if await store.delete(entry_id)]
    sys.stdout.write(f"purged {len(purged)} of {len(ids)}\n")
    return 0 if len(purged) == len(ids) else 1


async def _outbox_flush(args: argparse.Namespace) -> int:
    async with load(_service(args)) as loaded:
        if loaded.outbox is None:
            raise HomingError("the service has no outbox (app.state.outbox)")
        report = await loaded.outbox.flush(limit=args.limit)
        waiting = await loaded.outbox.count()
    sys.stdout.write(
        f"published {report.published}, failed {report.failed}, still waiting {waiting}\n"
    )
    for error in report.errors[:10]:
        sys.stdout.write(f"  {error}\n")
    return 1 if report.failed else 0


def _service(args: argparse.Namespace) -> str:
    spec, note = service_spec(args.app, Settings.from_env().app)
    if note:
        sys.stderr.write(f"homing: {note}\n")
    return spec


def _app_flag() -> argparse.ArgumentParser:
    app = argparse.ArgumentParser(add_help=False)
    app.add_argument(
        "--app",
        metavar="MODULE:ATTRIBUTE",
        help="the service: a Homing, an app whose state holds one, or a factory of either "
        "(default: HOMING_APP; inside a checkout of homing, the reference service "
        "users_api.app:create_app)",
    )
    return app


def _catalog(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    spec, note = service_spec(args.app, settings.app)
    if note:
        sys.stderr.write(f"homing: {note}\n")
    target = resolve(spec)
    homing = homing_of(target, spec)
    title = args.title or str(getattr(target, "title", "") or "homing service")
    version = args.version or str(getattr(target, "version", "") or "0.0.0")
    catalog = Catalog.of(
        homing,
        title=title,
        version=version,
        topic=settings.topic,
        project=settings.project,
        push_endpoint=settings.push_endpoint,
    )
    document = render_asyncapi(catalog)
    if args.check:
        try:
            saved = orjson.loads(Path(args.check).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise HomingError(f"cannot read the saved catalogue {args.check}: {exc}") from None
        if not isinstance(saved, dict) or "asyncapi" not in saved:
            raise HomingError(
                f"{args.check} is not an AsyncAPI document (save one with --format asyncapi)"
            )
        changes = incompatible_changes(saved, document)
        for change in changes:
            sys.stdout.write(f"incompatible: {change}\n")
        if changes:
            return 1
        sys.stdout.write(f"compatible with {args.check} ({len(catalog.events)} event types)\n")
        return 0
    if args.format == "asyncapi":
        text = orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"
    else:
        text = render_markdown(catalog)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _operator_commands(commands: Any) -> None:
    app = _app_flag()

    catalog = commands.add_parser(
        "catalog",
        parents=[app],
        help="list every event type with its JSON Schema (Markdown or AsyncAPI 3.0)",
        description="Print the service's event catalogue: Markdown by default, or an "
        "AsyncAPI 3.0 document. With --check SAVED, compare with a saved AsyncAPI catalogue "
        "and exit 1 naming each incompatible change.",
    )
    catalog.add_argument(
        "--format", choices=("markdown", "asyncapi"), default="markdown", help="output format"
    )
    catalog.add_argument("--output", metavar="FILE", help="write to FILE instead of stdout")
    catalog.add_argument(
        "--check",
        metavar="SAVED",
        help="a saved `--format asyncapi` catalogue: name each incompatible change (a field "
        "removed, its type changed, a field newly required), exit 1 if any",
    )
    catalog.add_argument("--title", help="the document's title (default: the app's)")
    catalog.add_argument("--version", help="the document's version (default: the app's)")
    catalog.set_defaults(run=_catalog)

    quarantine = commands.add_parser("quarantine", help="inspect and replay dropped messages")
    q = quarantine.add_subparsers(dest="quarantine_command", required=True, metavar="COMMAND")
    listing = q.add_parser("list", parents=[app], help="the newest entries first")
    listing.add_argument("--limit", type=int, default=100)
    listing.set_defaults(run=lambda a: _run(_quarantine_list(a)))
    show = q.add_parser("show", parents=[app], help="one entry with its raw envelope")
    show.add_argument("id")
    show.set_defaults(run=lambda a: _run(_quarantine_show(a)))
    replay = q.add_parser(
        "replay", parents=[app], help="verify again and run the handler; remove on success"
    )
    replay.add_argument("ids", nargs="+", metavar="ID")
    replay.add_argument(
        "--force",
        action="store_true",
        help="run the handler even when the event is marked handled (it would run twice)",
    )
    replay.set_defaults(run=lambda a: _run(_quarantine_replay(a)))
    purge = q.add_parser("purge", parents=[app], help="delete entries")
    purge.add_argument("ids", nargs="*", metavar="ID")
    purge.add_argument("--all", action="store_true", help="every entry")
    purge.set_defaults(run=lambda a: _run(_quarantine_purge(a)))

    outbox = commands.add_parser("outbox", help="the transactional outbox")
    o = outbox.add_subparsers(dest="outbox_command", required=True, metavar="COMMAND")
    flush = o.add_parser("flush", parents=[app], help="publish the events that wait")
    flush.add_argument("--limit", type=int, default=500)
    flush.set_defaults(run=lambda a: _run(_outbox_flush(a)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="homing", description="Signed background events for Cloud Run through Pub/Sub push."
    )
    parser.add_argument("--version", action="version", version=f"homing {__version__}")
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
    _operator_commands(commands)
    broker_command(commands)
    dev_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.run(args)
    except HomingError as exc:
        sys.stderr.write(f"homing: error: {exc}\n")
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
