"""The service's own tables: users, the notifications the handler writes, welcomes the task
writes."""

from __future__ import annotations

from django.db import models


class User(models.Model):  # type: ignore[misc]
    name = models.CharField(max_length=200)
    email = models.CharField(max_length=320)

    class Meta:
        app_label = "django_api"
        db_table = "users"


class Notification(models.Model):  # type: ignore[misc]
    """Stands in for the article's e-mail: proof that the background work ran, once."""

    event_id = models.CharField(max_length=255, unique=True)
    user = models.ForeignKey(User, on_delete=models.CASCADE, db_index=True)
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "django_api"
        db_table = "notifications"


class Welcome(models.Model):  # type: ignore[misc]
    """Written by the ``welcome`` task that ``POST /users`` enqueues."""

    user = models.OneToOneField(User, on_delete=models.CASCADE)
    text = models.TextField()

    class Meta:
        app_label = "django_api"
        db_table = "welcomes"
