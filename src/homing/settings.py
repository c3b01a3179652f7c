"""Settings, read once at the edge (app factory or CLI) and passed down.

``Settings.from_env()`` reads ``HOMING_*`` variables (and ``GOOGLE_CLOUD_PROJECT``); an unknown
``HOMING_*`` variable is an error, so a typo cannot silently fall back to a default. Secrets never
appear in ``repr``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Self, get_args

from homing._google import GOOGLE_CERTS_URL
from homing.errors import ConfigurationError
from homing.pipeline import DEFAULT_MAX_BODY_SIZE, AuthMode, UnknownEvents
from homing.signing import KeyRing

PublisherKind = Literal["loopback", "memory", "pubsub"]
LogFormat = Literal["auto", "json", "text"]
#: How Pub/Sub delivers to the service: its default JSON envelope, the unwrapped push (with
#: write-metadata), or an Eventarc trigger (CloudEvents).
PushShape = Literal["wrapped", "unwrapped", "eventarc"]


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {raw!r}")
        return raw

    return parse


def _whole(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not raw.isdigit() or int(raw) < low or (high is not None and int(raw) > high):
            span = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise ValueError(f"must be a whole number {span}, not {raw!r}")
        return int(raw)

    return parse


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"must be a positive number of seconds, not {raw!r}")
    return value


def _rate(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 500:
        raise ValueError(f"must be a number above 0 and at most 500 per second, not {raw!r}")
    return value


def _secret(raw: str) -> str:
    if len(raw.encode()) < 16:
        # The value is not echoed: it is a secret, however short.
        raise ValueError("must be at least 16 bytes long (it is a secret: make it unguessable)")
    return raw


def _flag(raw: str) -> bool:
    folded = raw.strip().lower()
    if folded not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise ValueError(f"must be true or false, not {raw!r}")
    return folded in ("true", "1", "yes", "on")


def _names(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _setting(
    default: Any, parse: Callable[[str], Any] = str, *, env: str | None = None, secret: bool = False
) -> Any:
    return field(default=default, repr=not secret, metadata={"parse": parse, "env": env})


@dataclass(frozen=True, kw_only=True)
class Settings:
    """homing's settings; each is read from ``HOMING_<NAME IN CAPITALS>`` unless noted.

    Attributes:
        signing_keys: ``kid:secret`` pairs, comma-separated; the first signs, all verify.
        legacy_secret: accept the article's format (``signature`` attribute) signed with this.
        legacy_without_oidc: accept the article's format under ``auth=hmac`` too, knowing that
            it signs only the data (``docs/signing.md``: the event type and id are the sender's
            choice); with ``auth=both`` it is not needed.
        auth: ``hmac``, ``oidc`` (Google's push token), ``both``, or ``none`` (development only).
        publisher: ``loopback`` (POST back to this service), ``memory`` or ``pubsub``.
        loopback_url: where the loopback publisher delivers; default this service's /events.
        max_body_size: push bodies larger than this many bytes are refused with 413.
        unknown_events: ``quarantine`` or ``retry`` an event type this service doesn't know.
        project: the Google Cloud project (``GOOGLE_CLOUD_PROJECT``).
        topic: the topic events are published to (id or ``projects/P/topics/T``).
        subscription: the push subscription that delivers them.
        push_endpoint: the URL Pub/Sub pushes to (this service's ``/events``).
        dead_letter_topic: where Pub/Sub moves messages after ``max_delivery_attempts``.
        push_shape: ``wrapped`` (Pub/Sub's JSON envelope), ``unwrapped`` (``noWrapper`` with
            write-metadata) or ``eventarc`` (a trigger delivering CloudEvents) — what
            ``homing plan`` sets up; the endpoint accepts all three.
        run_service, region: the Cloud Run service and its region: the push account gets
            ``roles/run.invoker`` on it; with ``eventarc``, the trigger's destination.
        push_service_account: the service account whose OIDC token Pub/Sub attaches.
        oidc_audience: the token audience to require (default: ``push_endpoint``).
        oidc_service_accounts: accepted token emails, comma-separated (default:
            ``push_service_account``).
        oidc_certs_url: where Google's token-signing certificates are fetched.
        ack_deadline: seconds Pub/Sub waits for an answer (10-600; also the push timeout).
        min_backoff, max_backoff: the subscription's retry policy, in seconds (0-600).
        max_delivery_attempts: attempts before dead-lettering (5-100).
        publish_timeout: seconds a publish may take before the request fails.
        flush_token: a bearer token that may call the outbox flush route.
        scheduler_service_accounts: Cloud Scheduler accounts whose OIDC token may call it.
        scheduler_audience: the audience of their tokens (default: the flush route's URL).
        app: the service the ``homing`` command and the pytest plugin load when not told,
            as ``MODULE:ATTRIBUTE`` (like ``FLASK_APP``).
        log_format: ``json`` (Cloud Logging's structured lines), ``text``, or ``auto``: JSON on
            Cloud Run (``K_SERVICE`` set), text elsewhere.
        telemetry: :meth:`homing.Homing.from_env` attaches :class:`~homing.telemetry.Telemetry`
            (a summary line per push, the publisher's trace continued, Prometheus metrics
            when ``homing[metrics]`` is installed, OpenTelemetry when an SDK is configured).
        log_duplicates: write a duplicate push's summary line at INFO (by default at DEBUG: a
            duplicate changed nothing, the metrics count it and Cloud Run logs the request).
        tasks_queue: the Cloud Tasks queue of delayed events (id or
            ``projects/P/locations/L/queues/Q``): :meth:`homing.Homing.from_env` publishes the
            event types declared with ``transport="tasks"`` there, and ``homing plan`` plans it.
        tasks_location: the queue's location (default: ``region``).
        tasks_service_account: the account whose OIDC token each task carries (default:
            ``push_service_account``); the push endpoint accepts it as it accepts Pub/Sub's.
        tasks_enqueuer: the account that creates the tasks (the service's own identity on
            Cloud Run): it gets ``roles/cloudtasks.enqueuer`` on the queue and
            ``roles/iam.serviceAccountUser`` on ``tasks_service_account``.
        tasks_max_dispatches_per_second, tasks_max_concurrent_dispatches: the queue's rate
            limits. The queue's ``max_attempts`` is ``max_delivery_attempts``.
        tasks_min_backoff, tasks_max_backoff, tasks_max_doublings: the queue's retry config
            (seconds; doublings of the backoff before it grows linearly).
        followup_delay: seconds the reference service (``examples/users_api``) waits before
            its ``user.welcome.followup`` event; read here so that ``homing dev`` and
            ``homing plan`` accept it in the environment.
        metrics_port: serve the Prometheus metrics on ``127.0.0.1`` at this port (``GET
            /metrics``), for a scraper in the same instance (Managed Service for Prometheus's
            sidecar on Cloud Run); unset, :meth:`homing.Homing.from_env` serves them nowhere.
    """

    signing_keys: KeyRing | None = _setting(None, KeyRing.from_string)
    legacy_secret: str | None = _setting(None, _secret, secret=True)
    legacy_without_oidc: bool = _setting(False, _flag)
    auth: AuthMode = _setting("hmac", _choice(get_args(AuthMode)))
    publisher: PublisherKind = _setting("loopback", _choice(get_args(PublisherKind)))
    loopback_url: str | None = _setting(None)
    max_body_size: int = _setting(DEFAULT_MAX_BODY_SIZE, _whole(1))
    unknown_events: UnknownEvents = _setting("quarantine", _choice(get_args(UnknownEvents)))
    project: str | None = _setting(None, env="GOOGLE_CLOUD_PROJECT")
    topic: str | None = _setting(None)
    subscription: str | None = _setting(None)
    push_endpoint: str | None = _setting(None)
    dead_letter_topic: str | None = _setting(None)
    push_shape: PushShape = _setting("wrapped", _choice(get_args(PushShape)))
    run_service: str | None = _setting(None)
    region: str | None = _setting(None)
    push_service_account: str | None = _setting(None)
    oidc_audience: str | None = _setting(None)
    oidc_service_accounts: tuple[str, ...] = _setting((), _names)
    oidc_certs_url: str = _setting(GOOGLE_CERTS_URL)
    ack_deadline: int = _setting(600, _whole(10, 600))
    min_backoff: int = _setting(10, _whole(0, 600))
    max_backoff: int = _setting(600, _whole(0, 600))
    max_delivery_attempts: int = _setting(5, _whole(5, 100))
    publish_timeout: float = _setting(10.0, _seconds)
    flush_token: str | None = _setting(None, _secret, secret=True)
    scheduler_service_accounts: tuple[str, ...] = _setting((), _names)
    scheduler_audience: str | None = _setting(None)
    app: str | None = _setting(None)
    log_format: LogFormat = _setting("auto", _choice(get_args(LogFormat)))
    telemetry: bool = _setting(True, _flag)
    log_duplicates: bool = _setting(False, _flag)
    tasks_queue: str | None = _setting(None)
    tasks_location: str | None = _setting(None)
    tasks_service_account: str | None = _setting(None)
    tasks_enqueuer: str | None = _setting(None)
    tasks_max_dispatches_per_second: float = _setting(500.0, _rate)
    tasks_max_concurrent_dispatches: int = _setting(1000, _whole(1, 5000))
    tasks_min_backoff: float = _setting(10.0, _seconds)
    tasks_max_backoff: float = _setting(600.0, _seconds)
    tasks_max_doublings: int = _setting(16, _whole(1, 16))
    followup_delay: float = _setting(30.0, _seconds)
    metrics_port: int | None = _setting(None, _whole(1, 65535))

    def __post_init__(self) -> None:
        if self.min_backoff > self.max_backoff:
            raise ConfigurationError(
                f"HOMING_MIN_BACKOFF ({self.min_backoff}) exceeds HOMING_MAX_BACKOFF "
                f"({self.max_backoff})"
            )
        if self.tasks_min_backoff > self.tasks_max_backoff:
            raise ConfigurationError(
                f"HOMING_TASKS_MIN_BACKOFF ({self.tasks_min_backoff:g}) exceeds "
                f"HOMING_TASKS_MAX_BACKOFF ({self.tasks_max_backoff:g})"
            )

    def __repr__(self) -> str:
        shown = {f.name: repr(getattr(self, f.name)) for f in fields(self)}
        for secret in ("legacy_secret", "flush_token"):
            if getattr(self, secret) is not None:
                shown[secret] = "***"
        return "Settings(" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")"

    @property
    def audience(self) -> str | None:
        """The OIDC audience to require: ``oidc_audience``, else the push endpoint URL."""
        return self.oidc_audience or self.push_endpoint

    @property
    def allowed_push_accounts(self) -> tuple[str, ...]:
        """The accounts whose OIDC token the push endpoint accepts: ``oidc_service_accounts``,
        else the push account and the tasks' account."""
        if self.oidc_service_accounts:
            return self.oidc_service_accounts
        accounts = (self.push_service_account, self.tasks_account)
        return tuple(dict.fromkeys(a for a in accounts if a))

    @property
    def tasks_account(self) -> str | None:
        """The account in each task's OIDC token: ``tasks_service_account``, else the push
        account."""
        return self.tasks_service_account or self.push_service_account

    @classmethod
    def variable(cls, name: str, prefix: str = "HOMING_") -> str:
        """The environment variable that sets field ``name``."""
        meta = cls.__dataclass_fields__[name].metadata
        return meta.get("env") or prefix + name.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, prefix: str = "HOMING_") -> Self:
        """Build settings from ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        variables = {cls.variable(f.name, prefix): f for f in fields(cls)}
        unknown = sorted(k for k in env if k.startswith(prefix) and k not in variables)
        if unknown:
            known = [v for v in variables if v.startswith(prefix)]
            guesses = [
                f"{name} (did you mean {close[0]}?)" if close else name
                for name in unknown
                for close in [difflib.get_close_matches(name, known, n=1, cutoff=0.75)]
            ]
            raise ConfigurationError(
                f"unknown setting(s) {', '.join(guesses)}; known: " + ", ".join(known)
            )
        values: dict[str, object] = {}
        for variable, spec in variables.items():
            raw = env.get(variable)
            if raw is None or raw == "":
                continue
            try:
                values[spec.name] = spec.metadata["parse"](raw)
            except (ValueError, ConfigurationError) as exc:
                raise ConfigurationError(f"{variable}: {exc}") from None
        return cls(**values)  # type: ignore[arg-type]
