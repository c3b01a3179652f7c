"""A ``django.tasks`` task, run by push through homing's task backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django_api.models import User, Welcome

if TYPE_CHECKING:
    from django_tasks import task
else:
    try:
        from django.tasks import task  # Django 6
    except ImportError:  # Django 5.2 with the django-tasks backport
        from django_tasks import task


@task
def welcome(user_id: int) -> str:
    """Greet a new user (once: the row is keyed by the user)."""
    user = User.objects.get(id=user_id)
    Welcome.objects.get_or_create(user=user, defaults={"text": f"Welcome, {user.name}!"})
    return f"welcomed {user_id}"
