"""The Django reference service's settings: SQLite by default, PostgreSQL from DATABASE_URL."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured


def _database(url: str | None) -> dict[str, object]:
    if not url:
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("DJANGO_API_SQLITE", "django_api.sqlite3"),
            # BEGIN IMMEDIATE: a transaction takes SQLite's write lock up front, so two
            # deliveries of one event wait their turn instead of failing to upgrade a lock.
            "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
        }
    parts = urlsplit(url)
    if parts.scheme.split("+")[0] not in ("postgres", "postgresql"):
        raise ImproperlyConfigured("DATABASE_URL must be a postgresql:// URL (or unset: SQLite)")
    schema = os.environ.get("DJANGO_API_SCHEMA")  # a schema of its own (the e2e tests)
    return {
        "OPTIONS": {"options": f"-c search_path={schema}"} if schema else {},
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": parts.username or "",
        "PASSWORD": parts.password or "",
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-api-development-only")
DEBUG = False
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",")
USE_TZ = True
ROOT_URLCONF = "django_api.urls"
INSTALLED_APPS = ["homing.django", "django_api"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
DATABASES = {"default": _database(os.environ.get("DATABASE_URL"))}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
# homing: the service's Homing; everything else comes from the HOMING_* environment variables
# (signing keys, publisher, push token), as for users_api.
HOMING = {"APP": "django_api.events:create"}
TASKS = {"default": {"BACKEND": "homing.django.tasks.HomingTaskBackend"}}
