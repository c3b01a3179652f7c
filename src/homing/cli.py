"""The ``homing`` command: thin — parse, configure, call one function."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Sequence

import orjson

from homing.envelope import build_push
from homing.errors import HomingError
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
