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
        from homing.django import checks, config

        checks.register()
        if _names_the_task_backend():
            from homing.django import tasks

            config.on_load.append(tasks.install)  # the task event and its handler


def _names_the_task_backend() -> bool:
    from django.conf import settings

    backends = getattr(settings, "TASKS", None) or {}
    return any(
        str(options.get("BACKEND", "")).startswith("homing.django.tasks.")
        for options in backends.values()
    )
