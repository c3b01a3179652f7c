"""homing's tables as Django models, created by this app's migrations (``manage.py migrate``).

The table and column names are those of :mod:`homing.stores.sql.schema`, so the SQLAlchemy
stores and the outbox's drain work on a database Django set up, and the other way round.
"""

from __future__ import annotations

from django.db import models


class HandledEvent(models.Model):  # type: ignore[misc]
    """An event id claimed (with a lease) or handled (``done``)."""

    event_id = models.CharField(max_length=255, primary_key=True)
    state = models.CharField(max_length=16)
    lease_until = models.FloatField()

    class Meta:
        db_table = "homing_handled_events"


class QuarantineEntry(models.Model):  # type: ignore[misc]
    """A push acknowledged without being handled, kept for a person."""

    id = models.CharField(max_length=255, primary_key=True)
    reason = models.TextField()
    body = models.BinaryField()
    received_at = models.DateTimeField(db_index=True)
    event_type = models.CharField(max_length=255, null=True)
    event_id = models.CharField(max_length=255, null=True)

    class Meta:
        db_table = "homing_quarantine"
        verbose_name_plural = "quarantine entries"


class OutboxEntry(models.Model):  # type: ignore[misc]
    """A signed event staged in the transaction of the change that caused it."""

    event_id = models.CharField(max_length=255, primary_key=True)
    event_type = models.CharField(max_length=255)
    data = models.BinaryField()
    attributes = models.TextField()  # a JSON object of the signed attributes
    ordering_key = models.CharField(max_length=1024, null=True)
    created_at = models.DateTimeField(db_index=True)
    attempts = models.IntegerField(default=0)
    last_error = models.TextField(null=True)
    deliver_at = models.DateTimeField(null=True)  # a delayed event's time (UTC); NULL: at once

    class Meta:
        db_table = "homing_outbox"
        verbose_name_plural = "outbox entries"


class TaskRecord(models.Model):  # type: ignore[misc]
    """One ``django.tasks`` task enqueued through homing's backend, and how it went.

    Its id is the id of the homing event that carries it.
    """

    id = models.CharField(max_length=255, primary_key=True)
    backend = models.CharField(max_length=255)
    task_path = models.CharField(max_length=255)
    queue_name = models.CharField(max_length=255)
    priority = models.IntegerField(default=0)
    takes_context = models.BooleanField(default=False)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    status = models.CharField(max_length=16, db_index=True)
    enqueued_at = models.DateTimeField()
    run_after = models.DateTimeField(null=True)  # a deferred task's earliest time
    started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)
    last_attempted_at = models.DateTimeField(null=True)
    errors = models.JSONField(default=list)  # [{"exception_class_path", "traceback"}]
    worker_ids = models.JSONField(default=list)
    return_value = models.JSONField(null=True)

    class Meta:
        db_table = "homing_task_results"
