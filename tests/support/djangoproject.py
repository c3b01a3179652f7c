"""One Django configuration for the test process: SQLite always, PostgreSQL when it answers.

Django's settings can be configured once per process, so every Django test shares this one:
``default`` is a SQLite file of its own, ``postgres`` the test PostgreSQL database (the
``postgres`` marker's), each migrated once. Tests serve a ``Homing`` of their own through
:func:`serving` (a URL configuration made for them).
"""

from __future__ import annotations

import tempfile
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

_configured: list[str] = []


#: The Django tests' own schema: the SQLAlchemy tests make and drop homing's tables in
#: ``public`` of the same database.
SCHEMA = "homing_django_tests"
#: The Django tests' connections name themselves: a test that kills the database's other
#: connections (a restarted server, for the SQLAlchemy pool) leaves these be.
APPLICATION = "homing-django-tests"


def postgres_settings(url: str) -> dict[str, object]:
    parts = urlsplit(url)
    return {
        "OPTIONS": {"options": f"-c search_path={SCHEMA}", "application_name": APPLICATION},
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": parts.username or "postgres",
        "PASSWORD": parts.password or "",
        "HOST": parts.hostname or "127.0.0.1",
        "PORT": str(parts.port or 5432),
    }


def postgres_answers(url: str, *, fresh_schema: str | None = None) -> bool:
    """Whether PostgreSQL answers; if so, ``fresh_schema`` is made anew, empty."""
    import psycopg

    settings = postgres_settings(url)
    try:
        with psycopg.connect(
            dbname=str(settings["NAME"]),
            user=str(settings["USER"]),
            host=str(settings["HOST"]),
            port=str(settings["PORT"]),
            connect_timeout=3,
            autocommit=True,
        ) as connection:
            if fresh_schema:
                connection.execute(f"DROP SCHEMA IF EXISTS {fresh_schema} CASCADE")
                connection.execute(f"CREATE SCHEMA {fresh_schema}")
    except psycopg.Error:
        return False
    return True


def configure(postgres_url: str) -> list[str]:
    """Configure Django once; the database aliases there are (``default``, maybe ``postgres``)."""
    if _configured:
        return _configured
    from django.conf import settings
    from django.core.management import call_command

    import django

    directory = Path(tempfile.mkdtemp(prefix="homing-django-"))
    databases: dict[str, dict[str, object]] = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(directory / "db.sqlite3"),
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    }
    if postgres_answers(postgres_url, fresh_schema=SCHEMA):
        databases["postgres"] = postgres_settings(postgres_url)
    settings.configure(
        SECRET_KEY="tests-only-not-secret",
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        USE_TZ=True,
        # django_api: the Django reference service, for the black-box API tests in process.
        INSTALLED_APPS=["homing.django", "tests.django.testapp", "django_api"],
        DATABASES=databases,
        ROOT_URLCONF="homing.django.urls",
        MIDDLEWARE=["django.middleware.csrf.CsrfViewMiddleware"],
        HOMING={},
        TASKS={
            "default": {"BACKEND": "homing.django.tasks.HomingTaskBackend"},
        },
        LOGGING_CONFIG=None,
    )
    django.setup()
    for alias in databases:
        call_command("migrate", database=alias, run_syncdb=True, verbosity=0)
    _configured.extend(databases)
    return _configured


@contextmanager
def serving(view: object, path: str = "events") -> Iterator[None]:
    """``ROOT_URLCONF`` serving ``view`` at ``/path`` for the block."""
    from django.test import override_settings
    from django.urls import path as route

    urls = types.ModuleType("homing_test_urls")
    urls.urlpatterns = [route(path, view)]  # type: ignore[attr-defined]
    with override_settings(ROOT_URLCONF=urls):
        yield


#: Django's databases as backends of the contract suites (tests/stores, tests/test_one_commit):
#: ``django-sqlite`` is the ``default`` alias, ``django-postgresql`` the ``postgres`` one.
DJANGO_BACKENDS = ["django-sqlite", pytest.param("django-postgresql", marks=pytest.mark.postgres)]


def django_database(kind: str, postgres_url: str) -> str:
    """The Django alias of ``kind`` (of :data:`DJANGO_BACKENDS`), Django configured, with
    homing's tables and the test app's emptied; skipped (failed under CI) when PostgreSQL does
    not answer. Synchronous: call it through ``sync_to_async`` from async code."""
    from tests.support.required import missing

    aliases = configure(postgres_url)
    alias = "default" if kind == "django-sqlite" else "postgres"
    if alias not in aliases:
        missing(f"PostgreSQL does not answer at {postgres_url}")
    from django.apps import apps
    from django.db import connections

    for model in [*apps.get_app_config("homing").get_models(), *_test_app_models()]:
        model.objects.using(alias).all().delete()
    connections.close_all()
    return alias


def _test_app_models() -> list[type]:
    from django.apps import apps

    return list(apps.get_app_config("testapp").get_models())
