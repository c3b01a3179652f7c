"""From the environment to the parts of a service: keys, publisher, push token, stores.

:meth:`homing.Homing.from_env` is built from these; a service that owns more wiring (its own
engine, an outbox) calls the pieces it needs. Every mistake is one
:class:`~homing.errors.ConfigurationError` naming the variable, never a secret.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from homing.errors import ConfigurationError
from homing.publishers.base import Publisher
from homing.publishers.loopback import LoopbackPublisher
from homing.publishers.memory import MemoryPublisher
from homing.settings import Settings
from homing.signing import KeyRing, Signer
from homing.stores.base import QuarantineStore

if TYPE_CHECKING:
    from homing.auth import OIDCVerifier

logger = logging.getLogger("homing")


def signer(settings: Settings, *, development: bool) -> Signer:
    """The signer of ``HOMING_SIGNING_KEYS``; in development without them, a key made now."""
    keys = settings.signing_keys
    if keys is None:
        if not development:
            raise ConfigurationError(
                "HOMING_SIGNING_KEYS is not set: give the service its kid:secret pairs "
                "(`homing keys new` makes one)"
            )
        keys = KeyRing.generate()
        logger.warning(
            "HOMING_SIGNING_KEYS is not set: signing with a development key (id %s) made for "
            "this process only. Set HOMING_SIGNING_KEYS (see `homing keys new`) for anything "
            "else.",
            keys.signing_key_id,
        )
    return Signer(keys, legacy_secret=settings.legacy_secret)


def publisher(
    settings: Settings,
    environ: Mapping[str, str],
    *,
    keep: QuarantineStore | None = None,
    journal: Path | None = None,
) -> Publisher:
    """``HOMING_PUBLISHER``'s publisher.

    The loopback publisher delivers to ``HOMING_LOOPBACK_URL``, else to this service on
    ``PORT``, else where the service is first seen to listen (through
    :class:`~homing.asgi.PushFastPath`). The Pub/Sub publisher honours
    ``PUBSUB_EMULATOR_HOST`` as google-cloud-pubsub does.
    """
    if settings.publisher == "memory":
        return MemoryPublisher()
    if settings.publisher == "pubsub":
        from homing.publishers.pubsub import PubSubPublisher  # the client is slow to import

        if not settings.topic:
            raise ConfigurationError("HOMING_PUBLISHER=pubsub needs HOMING_TOPIC")
        return PubSubPublisher(
            settings.topic, project=settings.project, timeout=settings.publish_timeout
        )
    url = settings.loopback_url
    port = environ.get("PORT")
    if url is None and port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(f"PORT must be a port number, not {port!r}")
        url = f"http://127.0.0.1:{port}/events"
    return LoopbackPublisher(url, keep=keep, journal=journal)


def oidc(settings: Settings) -> OIDCVerifier | None:
    """The push token's verifier under ``HOMING_AUTH=oidc`` or ``both``; else ``None``."""
    if settings.auth not in ("oidc", "both"):
        return None
    missing = []
    if not settings.audience:
        missing.append(
            f"{Settings.variable('push_endpoint')} or {Settings.variable('oidc_audience')}"
        )
    if not settings.allowed_push_accounts:
        missing.append(
            f"{Settings.variable('push_service_account')} or "
            f"{Settings.variable('oidc_service_accounts')}"
        )
    if missing or settings.audience is None:
        raise ConfigurationError(f"HOMING_AUTH={settings.auth} needs " + " and ".join(missing))
    from homing.auth import OIDCVerifier

    return OIDCVerifier(
        audience=settings.audience,
        service_accounts=settings.allowed_push_accounts,
        certs_url=settings.oidc_certs_url,
    )


Step = Callable[[], Awaitable[None]]


def options(
    environ: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], list[Step], list[Step]]:
    """``Homing``'s keyword arguments from the environment, what to run at start-up, and what
    to run at shutdown.

    ``DATABASE_URL`` puts the dedupe and quarantine stores on that database (their tables
    are created at start-up if missing); without it they are in memory.
    """
    env = os.environ if environ is None else environ
    settings = Settings.from_env(env)
    starting: list[Step] = []
    closing: list[Step] = []
    stores: dict[str, Any] = {}
    database_url = env.get("DATABASE_URL")
    if database_url:
        from homing.stores.sql import (
            SQLDedupeStore,
            SQLQuarantineStore,
            create_engine,
            create_tables,
        )

        engine = create_engine(database_url)
        stores = {"dedupe": SQLDedupeStore(engine), "quarantine": SQLQuarantineStore(engine)}

        async def tables() -> None:
            await create_tables(engine)

        starting.append(tables)
        closing.append(engine.dispose)
    sender = publisher(settings, env, keep=stores.get("quarantine"))
    return (
        {
            "signer": signer(settings, development=sender.local),
            "oidc": oidc(settings),
            "publisher": sender,
            "auth": settings.auth,
            "unknown_events": settings.unknown_events,
            "max_body_size": settings.max_body_size,
            "max_delivery_attempts": (
                settings.max_delivery_attempts if settings.dead_letter_topic else None
            ),
            "accept_legacy_without_oidc": settings.legacy_without_oidc,
            **stores,
        },
        starting,
        closing,
    )
