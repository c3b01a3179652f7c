"""The hand-written Django view `make bench` sets the Django reference service beside.

What a careful engineer writes in Django for the reference service's handler, on the same
server (uvicorn, Django's ASGI handler), the same settings and the same database: parse the
push, check the article's HMAC over the data, and write the notification in one ``atomic()``
block with ``INSERT ... ON CONFLICT (event_id) DO NOTHING`` (the unique key deduplicates).

It is a settings module and its URL configuration at once:
``DJANGO_SETTINGS_MODULE=bench.django_hand``, ``uvicorn bench.django_hand:application``.
"""

from __future__ import annotations

import os
from typing import Any

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.urls import path

from bench.apps import _checked, _text
from django_api.settings import DATABASES as DATABASES
from django_api.settings import SECRET_KEY as SECRET_KEY

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.django_hand")

DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
ROOT_URLCONF = "bench.django_hand"
INSTALLED_APPS = ["django_api"]  # its models and migrations: the reference service's tables
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]  # as django_api's
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"


def events(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponse(status=405)
    checked = _checked(request.body)
    if checked is None:
        return HttpResponse(status=401)
    message_id, event = checked
    from django_api.models import Notification

    with transaction.atomic():
        Notification.objects.bulk_create(
            [Notification(event_id=message_id, user_id=event["user_id"], text=_text(event))],
            ignore_conflicts=True,
        )
    return HttpResponse(status=204)


def root(request: HttpRequest) -> HttpResponse:
    return HttpResponse(status=404)


urlpatterns: list[Any] = [path("events", events), path("", root)]


def __getattr__(name: str) -> Any:
    # ``application`` is made on first use: a settings module must not build the handler
    # (which reads the settings) while it is being imported as the settings.
    if name == "application":
        from django.core.asgi import get_asgi_application

        return get_asgi_application()
    raise AttributeError(name)
