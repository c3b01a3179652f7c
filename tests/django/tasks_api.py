"""Django's task API where homing's backend finds it: ``django.tasks`` on Django 6, else the
``django-tasks`` backport (Django 5.2), so the tests' tasks are the backend's kind of task."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from django_tasks import (
        TaskContext,
        TaskResultStatus,
        default_task_backend,
        task,
        task_backends,
    )
    from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist
else:
    try:  # Django 6
        from django.tasks import (
            TaskContext,
            TaskResultStatus,
            default_task_backend,
            task,
            task_backends,
        )
        from django.tasks.exceptions import InvalidTask as InvalidTaskError
        from django.tasks.exceptions import TaskResultDoesNotExist
    except ImportError:  # Django 5.2 with the django-tasks backport
        from django_tasks import (
            TaskContext,
            TaskResultStatus,
            default_task_backend,
            task,
            task_backends,
        )
        from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist

__all__ = [
    "InvalidTaskError",
    "TaskContext",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "default_task_backend",
    "task",
    "task_backends",
]
