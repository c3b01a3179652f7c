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
    options: dict[str, object] = {"options": f"-c search_path={schema}"} if schema else {}
    # Django's connection pool (psycopg_pool). Under ASGI each request, and each of homing's
    # transactions, runs on a thread of its own; without a pool every one of them opens and
    # closes a connection of its own (most of an event's cost), and as many are open at once
    # as requests are in flight, past PostgreSQL's max_connections under load. A connection
    # that does not come free within 5 s is an error (a push: 503, and Pub/Sub retries).
    options["pool"] = {"min_size": 2, "max_size": 10, "timeout": 5}
    return {
        "OPTIONS": options,
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
