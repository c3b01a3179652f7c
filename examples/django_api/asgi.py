"""``uvicorn django_api.asgi:application`` (``make run-django`` serves it with the broker)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_api.settings")
application = get_asgi_application()
