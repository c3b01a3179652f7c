"""``homing dev``: serve an app with the local push broker delivering its events.

``homing dev --app MODULE:ATTR`` starts the broker as a child process it owns (durable in
``--data``), creates the topic, dead-letter topic, push subscription and the Cloud Tasks queue
of delayed events with ``homing provision``'s code, points the app at it through the
environment (``PUBSUB_EMULATOR_HOST``, ``CLOUD_TASKS_EMULATOR_HOST``, ``HOMING_PUBLISHER=pubsub``,
``HOMING_TASKS_QUEUE``, ``HOMING_OIDC_CERTS_URL``, ``HOMING_AUTH=both``) and serves the app with
uvicorn. The production path runs: google-cloud-pubsub publishes, the broker pushes
with an OIDC token, the app verifies the token and the signature.
"""

from __future__ import annotations

import argparse
import inspect
import ipaddress
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from homing.broker.cli import child_broker
from homing.errors import ConfigurationError

logger = logging.getLogger("homing.dev")

DEV_PROJECT = "homing-local"
DEV_TOPIC = "homing-events"
DEV_SUBSCRIPTION = "homing-events-push"
DEV_DEAD_LETTER_TOPIC = "homing-events-dead"
DEV_PUSH_ACCOUNT = "homing-push@homing-local.iam.gserviceaccount.com"
DEV_TASKS_QUEUE = "homing-tasks"
DEV_TASKS_LOCATION = "us-central1"
DEV_TASKS_ENQUEUER = "homing-service@homing-local.iam.gserviceaccount.com"


def add_command(commands: Any) -> None:
    """Add ``dev`` to the ``homing`` command's subparsers."""
    dev = commands.add_parser(
        "dev",
        help="serve an app with the local broker delivering its events",
        description="Start the local broker, provision a topic, dead-letter topic and push "
        "subscription for the app, and serve the app with uvicorn. Settings already in the "
        "environment win over the development defaults.",
    )
    dev.add_argument(
        "--app",
        required=True,
        metavar="MODULE:ATTRIBUTE",
        help="an ASGI app, or a factory of one (e.g. users_api.app:create_app)",
    )
    dev.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    dev.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    dev.add_argument("--push-path", default="/events", help="the app's push endpoint path")
    dev.add_argument("--data", default="homing-broker.sqlite3", help="the broker's SQLite file")
    dev.add_argument(
        "--allow-remote-push",
        action="store_true",
        help="let HOMING_PUSH_ENDPOINT name a host that is not this machine (the local broker "
        "would push signed, token-bearing requests there)",
    )
    dev.set_defaults(run=_dev)


def dev_environment(
    addresses: Mapping[str, str],
    *,
    host: str,
    port: int,
    push_path: str,
    allow_remote_push: bool = False,
) -> dict[str, str]:
    """The variables ``homing dev`` sets: those that point at the broker, then defaults.

    Raises :class:`ConfigurationError` when the push endpoint (``HOMING_PUSH_ENDPOINT`` from
    the shell, say a production URL) is not on this machine, unless ``allow_remote_push``.
    """
    url_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
    forced = {
        "PUBSUB_EMULATOR_HOST": addresses["grpc"],
        "CLOUD_TASKS_EMULATOR_HOST": addresses["grpc"],  # the same port serves Cloud Tasks
        "HOMING_PUBLISHER": "pubsub",
        "HOMING_OIDC_CERTS_URL": f"{addresses['http']}/certs",
        "HOST": host,
        "PORT": str(port),
    }
    defaults = {
        "GOOGLE_CLOUD_PROJECT": DEV_PROJECT,
        "HOMING_TOPIC": DEV_TOPIC,
        "HOMING_SUBSCRIPTION": DEV_SUBSCRIPTION,
        "HOMING_DEAD_LETTER_TOPIC": DEV_DEAD_LETTER_TOPIC,
        "HOMING_PUSH_ENDPOINT": f"http://{url_host}:{port}{push_path}",
        "HOMING_PUSH_SERVICE_ACCOUNT": DEV_PUSH_ACCOUNT,
        "HOMING_AUTH": "both",
        # Delayed events: the broker's Cloud Tasks queue, made at start-up if missing.
        "HOMING_TASKS_QUEUE": DEV_TASKS_QUEUE,
        "HOMING_TASKS_LOCATION": DEV_TASKS_LOCATION,
        "HOMING_TASKS_ENQUEUER": DEV_TASKS_ENQUEUER,
    }
    chosen = forced | {k: v for k, v in defaults.items() if k not in os.environ}
    endpoint = chosen.get("HOMING_PUSH_ENDPOINT") or os.environ["HOMING_PUSH_ENDPOINT"]
    if not allow_remote_push and not _on_this_machine(endpoint, host):
        raise ConfigurationError(
            f"HOMING_PUSH_ENDPOINT names another machine ({urlsplit(endpoint).hostname}): "
            "homing dev would push this machine's events there. Unset it, or pass "
            "--allow-remote-push if that is meant"
        )
    return chosen


def _on_this_machine(url: str, listening_on: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host in ("localhost", listening_on.lower()):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dev_signing_keys(path: Path) -> str:
    """A development signing key kept in ``path`` (made on first use, readable by the owner
    only), so events the broker still owes after a restart verify."""
    from homing.signing import new_key

    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(new_key() + "\n")
        logger.info("made a development signing key in %s", path)
    return path.read_text().strip()


def warn_if_bypassing(target: Any, spec: str) -> None:
    """Say so when the app's publisher does not go through the broker (one it built itself
    rather than from the environment homing dev sets)."""
    from homing.loading import find_homing
    from homing.publishers.pubsub import PubSubPublisher

    homing = find_homing(target)
    if homing is None or homing.publisher is None:
        return
    if not isinstance(homing.publisher, PubSubPublisher):
        logger.warning(
            "%s publishes with %s, which bypasses the local broker: its events get no OIDC "
            "token, retries or dead letters here. Build it with Homing.from_env() (or give it "
            "a PubSubPublisher) to publish through the broker.",
            spec,
            type(homing.publisher).__name__,
        )


def _dev(args: argparse.Namespace) -> int:
    import uvicorn

    import homing.provisioning as provisioning
    from homing.loading import _import
    from homing.settings import Settings
    from homing.telemetry import configure_logging

    # homing's own handler, as a service's entry point installs it: summary lines name their
    # trace, and HOMING_LOG_FORMAT=json gives Cloud Logging's lines (an invalid value is
    # reported by the settings below).
    log_format = os.environ.get("HOMING_LOG_FORMAT", "auto")
    configure_logging(
        "json" if log_format == "json" else "text" if log_format == "text" else "auto",
        project=os.environ.get("GOOGLE_CLOUD_PROJECT"),
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    data = str(Path(args.data).resolve())
    with child_broker(data) as addresses:
        os.environ.update(
            dev_environment(
                addresses,
                host=args.host,
                port=args.port,
                push_path=args.push_path,
                allow_remote_push=args.allow_remote_push,
            )
        )
        if "HOMING_SIGNING_KEYS" not in os.environ:
            os.environ["HOMING_SIGNING_KEYS"] = dev_signing_keys(Path(data + ".signing-keys"))
        settings = Settings.from_env()
        for outcome in provisioning.provision(
            provisioning.plan(settings), apply_iam_bindings=False
        ):
            logger.info("%s", outcome)
        target = _import(args.app)
        if inspect.isfunction(target) and not inspect.iscoroutinefunction(target):
            target = target()  # a factory
        if not callable(target):
            raise ConfigurationError(f"--app {args.app!r} is not an ASGI app or a factory of one")
        warn_if_bypassing(target, args.app)
        logger.info(
            "serving %s on http://%s:%d with the local broker: pushes to %s, web page %s/",
            args.app,
            args.host,
            args.port,
            settings.push_endpoint,
            addresses["http"],
        )
        uvicorn.run(
            target,
            host=args.host,
            port=args.port,
            access_log=False,
            log_level="info",
            timeout_graceful_shutdown=8,
        )
    return 0
