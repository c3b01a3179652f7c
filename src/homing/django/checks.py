"""``manage.py check``: homing's misconfigurations as Django system checks (``homing.E...``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core import checks
from django.db import connections

import homing.django.config as config
from homing.errors import HomingError
from homing.settings import Settings


def register() -> None:
    checks.register(check_settings, "homing")


def check_settings(app_configs: Sequence[Any] | None = None, **_: Any) -> list[checks.CheckMessage]:
    """The settings parse, the database is one homing speaks, the service loads."""
    errors: list[checks.CheckMessage] = []
    try:
        settings = Settings.from_env(config.environment())
    except HomingError as exc:
        return [checks.Error(str(exc), hint=_HINT, id="homing.E001")]
    try:
        alias = config.database()
    except HomingError as exc:
        errors.append(checks.Error(str(exc), id="homing.E002"))
    else:
        from homing.django.stores import VENDORS

        vendor = connections[alias].vendor
        if vendor not in VENDORS:
            errors.append(
                checks.Error(
                    f"homing's Django stores support {' and '.join(VENDORS)}; database "
                    f"{alias!r} is {vendor}",
                    hint="point settings.HOMING['DATABASE'] at a SQLite or PostgreSQL alias",
                    id="homing.E003",
                )
            )
    if settings.auth == "none":
        errors.append(
            checks.Warning(
                "push authentication is off (AUTH='none'): anyone who reaches the push view "
                "can run handlers",
                hint="use 'hmac', 'oidc' or 'both' outside development",
                id="homing.W001",
            )
        )
    if settings.auth in ("oidc", "both") and not (
        settings.audience and settings.allowed_push_accounts
    ):
        errors.append(
            checks.Error(
                f"AUTH={settings.auth!r} needs the push audience (PUSH_ENDPOINT or OIDC_AUDIENCE) "
                "and the push service account (PUSH_SERVICE_ACCOUNT or OIDC_SERVICE_ACCOUNTS)",
                id="homing.E004",
            )
        )
    if settings.publisher == "pubsub" and not settings.topic:
        errors.append(checks.Error("PUBLISHER='pubsub' needs TOPIC", id="homing.E005"))
    if not errors and not (config.configured().get("APP") or settings.app):
        errors.append(
            checks.Warning(
                "no service is configured: settings.HOMING['APP'] (or HOMING_APP) names none, "
                "so the push view has no handlers to run",
                hint="set settings.HOMING['APP'] to 'module:attribute' of the service's Homing",
                id="homing.W002",
            )
        )
    elif not errors:
        try:
            config.service()
        except HomingError as exc:
            errors.append(checks.Error(str(exc), hint=_HINT, id="homing.E006"))
    return errors


_HINT = "settings.HOMING (docs/django.md) and the HOMING_* environment variables"
