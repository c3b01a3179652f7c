"""The effect the Django tests' handlers write."""

from __future__ import annotations

from django.db import models


class Notification(models.Model):  # type: ignore[misc]
    event_id = models.CharField(max_length=255)
    text = models.TextField()

    class Meta:
        app_label = "testapp"
