"""``homing broker`` and ``homing dev``: the broker on its own, or running an app with it.

``homing dev --app MODULE:ATTR`` starts the broker as a child process it owns (durable in
``--data``), creates the topic, dead-letter topic and push subscription with ``homing
provision``'s code, points the app at it through the environment (``PUBSUB_EMULATOR_HOST``,
``HOMING_PUBLISHER=pubsub``, ``HOMING_OIDC_CERTS_URL``, ``HOMING_AUTH=both``) and serves the
app with uvicorn. The production path runs: google-cloud-pubsub publishes, the broker pushes
with an OIDC token, the app verifies the token and the signature.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from homing.errors import ConfigurationError, HomingError

logger = logging.getLogger("homing.dev")

DEV_PROJECT = "homing-local"
DEV_TOPIC = "homing-events"
DEV_SUBSCRIPTION = "homing-events-push"
DEV_DEAD_LETTER_TOPIC = "homing-events-dead"
DEV_PUSH_ACCOUNT = "homing-push@homing-local.iam.gserviceaccount.com"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_commands(commands: Any) -> None:
    """Add ``broker`` and ``dev`` to the ``homing`` command's subparsers."""
    broker = commands.add_parser(
        "broker",
        help="serve the local push broker (the Pub/Sub API for PUBSUB_EMULATOR_HOST)",
        description="Serve Pub/Sub topics and push subscriptions on this machine, durable in "
        "--data: the Pub/Sub gRPC API on --port, the web page, REST view and push token "
        "certificates on --http-port.",
    )
    broker.add_argument("--host", default="127.0.0.1", help="address to listen on")
    broker.add_argument("--port", type=int, default=8085, help="Pub/Sub API port (0: any)")
    broker.add_argument(
        "--http-port", type=int, help="web page and REST port (default: --port + 1; 0: any)"
    )
    broker.add_argument(
        "--data",
        default="homing-broker.sqlite3",
        help="the SQLite file (default: homing-broker.sqlite3; ':memory:' keeps nothing)",
    )
    broker.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    broker.set_defaults(run=_broker)

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
    dev.set_defaults(run=_dev)


def _broker(args: argparse.Namespace) -> int:
    from homing.broker.server import run

    if args.host not in _LOOPBACK:
        logger.warning(
            "the broker's web page and API have no authentication, and listen on %s: "
            "anyone who can reach it can publish and replay",
            args.host,
        )
    if args.exit_with_parent:
        _exit_with_parent()
    # The standard loop: grpc.aio's server did not deliver under uvloop when tried.
    asyncio.run(run(args.data, host=args.host, port=args.port, http_port=args.http_port))
    return 0


def _exit_with_parent() -> None:
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)  # the owner is gone (even by kill -9): do not linger

    threading.Thread(target=watch, daemon=True, name="homing-broker-parent").start()


@contextmanager
def child_broker(data: str, *, host: str = "127.0.0.1") -> Iterator[dict[str, str]]:
    """Run ``homing broker`` as a child; yield its ``grpc`` and ``http`` addresses."""
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            "-m",
            "homing.cli",
            "broker",
            "--host",
            host,
            "--port",
            "0",
            "--http-port",
            "0",
            "--data",
            data,
            "--exit-with-parent",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    forwarding: threading.Thread | None = None
    try:
        assert process.stdout is not None
        found: dict[str, str] = {}
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while len(found) < 2:
            line = process.stdout.readline()
            if not line:
                raise HomingError(
                    f"the broker exited (status {process.wait()}) before it served: "
                    + "".join(lines)[-2000:]
                )
            lines.append(line)
            if "Pub/Sub API on " in line:
                found["grpc"] = line.split("Pub/Sub API on ")[1].split()[0]
            if "web page and REST view on " in line:
                found["http"] = line.split("REST view on ")[1].split()[0].rstrip("/")
            if time.monotonic() > deadline:
                raise HomingError("the broker did not start within 60 s")
        for line in lines:
            sys.stderr.write(line)
        forwarding = threading.Thread(
            target=_forward, args=(process.stdout,), daemon=True, name="homing-broker-output"
        )
        forwarding.start()
        yield found
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if forwarding is not None:
            forwarding.join(5)  # to the end of what the broker wrote
        if process.stdout is not None:
            process.stdout.close()


def _forward(stream: Any) -> None:
    for line in stream:
        sys.stderr.write(line)


def dev_environment(
    addresses: Mapping[str, str], *, host: str, port: int, push_path: str
) -> dict[str, str]:
    """The variables ``homing dev`` sets: those that point at the broker, then defaults."""
    url_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
    forced = {
        "PUBSUB_EMULATOR_HOST": addresses["grpc"],
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
    }
    return forced | {k: v for k, v in defaults.items() if k not in os.environ}


def dev_signing_keys(path: Path) -> str:
    """A development signing key kept in ``path`` (made on first use, readable by the owner
    only), so events the broker still owes after a restart verify."""
    from homing.signing import new_key

    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(new_key() + "\n")
        logger.info("made a development signing key in %s", path)
    return path.read_text().strip()


def _dev(args: argparse.Namespace) -> int:
    import uvicorn

    from homing import provisioning
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
            dev_environment(addresses, host=args.host, port=args.port, push_path=args.push_path)
        )
        if "HOMING_SIGNING_KEYS" not in os.environ:
            os.environ["HOMING_SIGNING_KEYS"] = dev_signing_keys(Path(data + ".signing-keys"))
        settings = Settings.from_env()
        for outcome in provisioning.provision(
            provisioning.plan(settings), apply_iam_bindings=False
        ):
            logger.info("%s", outcome)
        target = _import(args.app)
        if (
            callable(target)
            and not inspect.iscoroutinefunction(target)
            and not hasattr(target, "state")
        ):
            target = target()
        if not callable(target):
            raise ConfigurationError(f"--app {args.app!r} is not an ASGI app or a factory of one")
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
