"""The Django app: ``INSTALLED_APPS += ["homing.django"]``."""

from __future__ import annotations

from django.apps import AppConfig


class HomingConfig(AppConfig):  # type: ignore[misc]
    """homing's tables (migrations), its system checks and its ``homing`` management command."""

    name = "homing.django"
    label = "homing"
    verbose_name = "homing"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        from homing.django import checks  # registers the system checks

        checks.register()
