"""From the environment to the parts of a service: keys, publisher (and the Cloud Tasks
transport), push token, stores, outbox and telemetry.

The composition root: it stands above the core, the outbox and telemetry, and only
:meth:`homing.Homing.from_env` (lazily) and services reach it. A service that owns more wiring
calls the pieces it needs (:func:`signer`, :func:`publisher`, :func:`oidc`). Every mistake is
one :class:`~homing.errors.ConfigurationError` naming the variable, never a secret.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
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
    from sqlalchemy.ext.asyncio import AsyncEngine

    from homing.auth import OIDCVerifier
    from homing.events import EventRegistry
    from homing.hooks import Hooks
    from homing.outbox import SQLOutbox
    from homing.telemetry import Telemetry
    from homing.telemetry.metrics import PrometheusMetrics
    from homing.telemetry.metrics_server import MetricsServer

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


def tasks(settings: Settings) -> Publisher | None:
    """The Cloud Tasks publisher of ``HOMING_TASKS_QUEUE`` (delayed events), or ``None``.

    Each task POSTs to ``HOMING_PUSH_ENDPOINT`` with the OIDC token of
    ``HOMING_TASKS_SERVICE_ACCOUNT`` (default: the push account) for the audience the push
    endpoint requires; ``CLOUD_TASKS_EMULATOR_HOST`` points it at the local broker.
    """
    if not settings.tasks_queue:
        return None
    if not settings.push_endpoint:
        raise ConfigurationError(
            "HOMING_TASKS_QUEUE needs HOMING_PUSH_ENDPOINT: the URL each task POSTs to"
        )
    from homing.publishers.cloudtasks import CloudTasksPublisher  # the client is slow to import

    try:
        return CloudTasksPublisher(
            settings.tasks_queue,
            url=settings.push_endpoint,
            service_account=settings.tasks_account,
            audience=settings.audience,
            project=settings.project,
            location=settings.tasks_location or settings.region,
            timeout=settings.publish_timeout,
        )
    except ConfigurationError as exc:
        raise ConfigurationError(f"HOMING_TASKS_QUEUE: {exc}") from None


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


@dataclass(kw_only=True)
class Wired:
    """What :meth:`homing.Homing.from_env` built beside the ``Homing`` (``homing.wired``).

    Attributes:
        settings: the ``HOMING_*`` settings it was built from.
        engine: the SQLAlchemy engine on ``DATABASE_URL`` (else ``None``).
        outbox: a :class:`~homing.outbox.SQLOutbox` on that engine, publishing through the
            service's publisher and telling its hooks (else ``None``); it drains what an
            earlier process left at start-up.
        telemetry: the :class:`~homing.telemetry.Telemetry` hook (``HOMING_TELEMETRY``).
        metrics: its Prometheus metrics when ``homing[metrics]`` is installed.
        metrics_server: with ``HOMING_METRICS_PORT``, the server of those metrics on
            ``127.0.0.1`` at that port, started and closed with the ``Homing``.
    """

    settings: Settings
    engine: AsyncEngine | None = None
    outbox: SQLOutbox | None = None
    telemetry: Telemetry | None = None
    metrics: PrometheusMetrics | None = None
    metrics_server: MetricsServer | None = None


@dataclass(kw_only=True)
class Wiring:
    """``Homing``'s keyword arguments from the settings, and what to attach once it exists."""

    options: dict[str, Any]
    wired: Wired
    starting: list[Step] = field(default_factory=list)
    closing: list[Step] = field(default_factory=list)

    def attach(
        self, events: EventRegistry, hooks: Hooks, publisher: Publisher | None
    ) -> tuple[list[Step], list[Step]]:
        """Attach telemetry to ``hooks`` and build the outbox on ``publisher``, once the
        ``Homing`` exists; its start-up and shutdown steps."""
        wired = self.wired
        if wired.settings.telemetry:
            wired.telemetry, wired.metrics = telemetry(
                events, log_duplicates=wired.settings.log_duplicates
            )
            hooks.append(wired.telemetry)
        starting, closing = list(self.starting), list(self.closing)
        if wired.settings.metrics_port is not None:
            serve, stop = self._metrics_server()
            starting.append(serve)
            closing.insert(0, stop)
        if wired.engine is not None and publisher is not None:
            from homing.outbox import SQLOutbox

            outbox = wired.outbox = SQLOutbox(wired.engine, publisher, hooks=hooks)
            starting.append(outbox.start)  # publishes what a killed predecessor left
            closing.insert(0, outbox.aclose)  # before the engine is disposed
        return starting, closing

    def _metrics_server(self) -> tuple[Step, Step]:
        wired = self.wired
        variable = Settings.variable("metrics_port")
        if wired.metrics is None:
            raise ConfigurationError(
                f"{variable} serves the Prometheus metrics: it needs "
                f"{Settings.variable('telemetry')} on and prometheus-client installed "
                "(pip install 'homing[metrics]')"
            )
        from homing.telemetry.metrics_server import MetricsServer

        port = wired.settings.metrics_port
        assert port is not None
        server = wired.metrics_server = MetricsServer(wired.metrics, port=port)

        async def serve() -> None:
            try:
                await server.start()
            except ConfigurationError as exc:
                raise ConfigurationError(f"{variable}: {exc}") from None
            logger.info("serving the metrics on %s (loopback only)", server.url)

        return serve, server.aclose


def telemetry(
    events: EventRegistry, *, log_duplicates: bool = False
) -> tuple[Telemetry, PrometheusMetrics | None]:
    """The :class:`~homing.telemetry.Telemetry` hook: summary lines and trace continuation
    always, Prometheus metrics when ``homing[metrics]`` is installed, OpenTelemetry spans and
    metrics when the process configured an SDK."""
    from homing.telemetry import Telemetry

    metrics = None
    if importlib.util.find_spec("prometheus_client") is not None:
        from homing.telemetry.metrics import PrometheusMetrics

        metrics = PrometheusMetrics()
    otel = None
    if importlib.util.find_spec("opentelemetry") is not None:
        from homing.telemetry.otel import OpenTelemetry, sdk_configured

        otel = OpenTelemetry() if sdk_configured() else None
    hook = Telemetry(events, metrics=metrics, opentelemetry=otel, log_duplicates=log_duplicates)
    return hook, metrics


def from_env(
    environ: Mapping[str, str] | None = None,
    settings: Settings | None = None,
    given: Mapping[str, Any] | None = None,
) -> Wiring:
    """:func:`from_settings` with ``HOMING_*`` (unless ``settings`` are given), ``DATABASE_URL``
    and ``PORT`` of ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    return from_settings(
        settings if settings is not None else Settings.from_env(env),
        database_url=env.get("DATABASE_URL") or None,
        port=env.get("PORT"),
        given=given,
    )


def from_settings(
    settings: Settings,
    *,
    database_url: str | None = None,
    port: str | None = None,
    given: Mapping[str, Any] | None = None,
) -> Wiring:
    """``Homing``'s parts from ``settings``.

    ``database_url`` puts the dedupe and quarantine stores and an outbox on that database
    (their tables are created at start-up if missing); without it they are in memory. On a
    SQLite file, the loopback publisher's journal lies beside it, so an event published is
    delivered even after a ``kill -9``. ``port`` is where this service listens, for the
    loopback publisher (``PORT``). ``given`` holds the ``Homing`` arguments the caller chose
    itself: those parts are not built (a publisher built and dropped would hold its journal
    open).
    """
    given = given or {}
    if settings.metrics_port is not None and port == str(settings.metrics_port):
        raise ConfigurationError(
            f"{Settings.variable('metrics_port')} must differ from PORT ({port}): the metrics "
            "are served on a loopback port of their own, never on the service's port"
        )
    wired = Wired(settings=settings)
    wiring = Wiring(options={}, wired=wired)
    stores: dict[str, Any] = {}
    journal = None
    if database_url:
        from homing.stores.sql import (
            SQLDedupeStore,
            SQLQuarantineStore,
            create_engine,
            create_tables,
        )

        try:
            engine = wired.engine = create_engine(database_url)
        except ConfigurationError as exc:
            raise ConfigurationError(f"DATABASE_URL: {exc}") from None
        stores = {"dedupe": SQLDedupeStore(engine), "quarantine": SQLQuarantineStore(engine)}
        journal = _beside_sqlite(engine)

        async def tables() -> None:
            await create_tables(engine)

        wiring.starting.append(tables)
        wiring.closing.append(engine.dispose)
    sender = given.get("publisher") or publisher(
        settings, {"PORT": port} if port else {}, keep=stores.get("quarantine"), journal=journal
    )
    later = None if "transports" in given else tasks(settings)
    wiring.options = {
        "signer": given.get("signer") or signer(settings, development=sender.local),
        "oidc": given["oidc"] if "oidc" in given else oidc(settings),
        "publisher": sender,
        # Without a queue, a local default publisher stands in for "tasks" (Transports).
        "transports": {"tasks": later} if later is not None else None,
        "auth": settings.auth,
        "unknown_events": settings.unknown_events,
        "max_body_size": settings.max_body_size,
        # The dead-letter limit, and the queue's max_attempts: the last attempt is known.
        "max_delivery_attempts": (
            settings.max_delivery_attempts
            if settings.dead_letter_topic or settings.tasks_queue
            else None
        ),
        "accept_legacy_without_oidc": settings.legacy_without_oidc,
        **stores,
    }
    return wiring


def _beside_sqlite(engine: AsyncEngine) -> Path | None:
    """``X.loopback.sqlite3`` beside a SQLite file database ``X.db``; ``None`` for others."""
    url = engine.url
    if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).with_suffix(".loopback.sqlite3")
