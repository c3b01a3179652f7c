"""``python -m django_api COMMAND``: Django's ``manage.py`` for the reference service."""

from __future__ import annotations

import os
import sys

from django.core.management import execute_from_command_line

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_api.settings")
execute_from_command_line(["django_api", *sys.argv[1:]])
