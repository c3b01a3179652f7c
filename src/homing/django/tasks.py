"""A ``django.tasks`` backend: each task enqueued is a signed homing event, run by push.

::

    TASKS = {"default": {"BACKEND": "homing.django.tasks.HomingTaskBackend"}}

    @task
    def send_welcome(user_id: int) -> None: ...

    send_welcome.enqueue(user_id=7)        # inside atomic(): published when it commits

``enqueue`` validates the arguments by Django's JSON rules (a value that is not JSON raises
Django's own ``TypeError`` or ``ValueError`` before anything is written), writes the task's
row in ``homing_task_results`` and stages its event in the outbox, in the caller's transaction
when there is one (:mod:`homing.django.outbox`): a task is enqueued exactly when the change
that asked for it commits. Pub/Sub pushes the event back to the service's push view, which
verifies it and runs the task: READY -> RUNNING -> SUCCESSFUL or FAILED, with the errors, the
attempts and the worker ids in the row, read back by ``get_result``. A task that raises
:class:`homing.Retry` goes back to READY and is redelivered; any other exception fails it, as
Django's own backends do.

A task with ``run_after`` (``supports_defer``) is a delayed homing event of its own type,
:data:`DEFERRED_TASK_EVENT`, bound to the transport named by ``OPTIONS["DEFER_TRANSPORT"]``
(default ``"tasks"``: ``Homing(transports={"tasks": CloudTasksPublisher(...)})``), and
published with ``at=run_after``: Cloud Tasks pushes it to the same view no earlier than then.
Where the service has no transport that can delay (Pub/Sub alone), such a task is refused at
``using(run_after=...)`` and at enqueue with Django's ``InvalidTask``, naming what is missing;
never run early. A local default publisher (memory) stands in for a missing transport, as for
any delayed event.

Not supported: priorities (neither Pub/Sub nor Cloud Tasks has them), and queues other than
those named in ``QUEUES``. Works on Django 6's ``django.tasks`` and, before it, on the
``django-tasks`` backport.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core import checks
from django.db import connections
from django.utils.module_loading import import_string
from pydantic import BaseModel, Field

import homing.django.config as config
from homing.app import Homing
from homing.dispatch import Delivery, Retry
from homing.django.outbox import publish
from homing.errors import ConfigurationError, HomingError

if TYPE_CHECKING:
    from django_tasks import TaskContext, TaskResult, TaskResultStatus
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskError
    from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist
    from django_tasks.utils import normalize_json
else:
    try:  # Django 6
        from django.tasks import TaskContext, TaskResult, TaskResultStatus
        from django.tasks.backends.base import BaseTaskBackend
        from django.tasks.base import Task, TaskError
        from django.tasks.exceptions import InvalidTask as InvalidTaskError
        from django.tasks.exceptions import TaskResultDoesNotExist
        from django.utils.json import normalize_json
    except ImportError:  # Django 5.2 with the django-tasks backport
        from django_tasks import TaskContext, TaskResult, TaskResultStatus
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import Task, TaskError
        from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist
        from django_tasks.utils import normalize_json

__all__ = [
    "DEFERRED_TASK_EVENT",
    "TASK_EVENT",
    "DeferredTaskMessage",
    "HomingTaskBackend",
    "TaskMessage",
    "install",
]

#: The event type that carries a task.
TASK_EVENT = "django.task"
#: The event type that carries a task with ``run_after``, on a transport that can delay.
DEFERRED_TASK_EVENT = "django.task.deferred"
#: The transport of deferred tasks unless ``OPTIONS["DEFER_TRANSPORT"]`` names another.
DEFER_TRANSPORT = "tasks"


class TaskMessage(BaseModel):
    """The event that carries one enqueued task (its arguments already JSON)."""

    task_id: str
    backend: str
    task_path: str
    queue_name: str
    arguments: list[Any] = Field(default_factory=list)
    keyword_arguments: dict[str, Any] = Field(default_factory=dict)


class DeferredTaskMessage(TaskMessage):
    """The event that carries a task enqueued with ``run_after`` (delivered no earlier)."""


def install(homing: Homing, *, defer_transport: str | None = None) -> None:
    """Register the task events and their handler on ``homing`` (once; done when the service
    is loaded from ``settings.HOMING["APP"]`` and ``TASKS`` names this backend).

    Args:
        defer_transport: the transport of deferred tasks (default: the ``DEFER_TRANSPORT``
            option of the ``TASKS`` backends that are homing's, else ``"tasks"``).
    """
    if TASK_EVENT in homing.handlers:
        return
    homing.events.register(TASK_EVENT, TaskMessage)
    homing.handler(TaskMessage)(_run_task)
    homing.event(DEFERRED_TASK_EVENT, transport=defer_transport or _defer_transport())(
        DeferredTaskMessage
    )
    homing.handler(DeferredTaskMessage)(_run_task)


def _defer_transport() -> str:
    from django.conf import settings

    chosen = {
        str((options.get("OPTIONS") or {}).get("DEFER_TRANSPORT", DEFER_TRANSPORT))
        for options in (getattr(settings, "TASKS", None) or {}).values()
        if str(options.get("BACKEND", "")).startswith("homing.django.tasks.")
    }
    if len(chosen) > 1:
        raise ConfigurationError(
            "homing's task backends name different DEFER_TRANSPORT options "
            f"({', '.join(sorted(chosen))}): one service routes deferred tasks one way"
        )
    return chosen.pop() if chosen else DEFER_TRANSPORT


async def _run_task(message: TaskMessage, delivery: Delivery) -> None:
    backend = _backend(message.backend)
    await backend.run(message, delivery)


def _backend(alias: str) -> HomingTaskBackend:
    try:
        from django.tasks import task_backends
    except ImportError:
        from django_tasks import task_backends

    backend = task_backends[alias]
    if not isinstance(backend, HomingTaskBackend):
        raise ConfigurationError(f"task backend {alias!r} is not homing's HomingTaskBackend")
    return backend


class HomingTaskBackend(BaseTaskBackend):
    """Tasks as signed homing events, delivered by Pub/Sub push (or homing's local broker).

    ``OPTIONS``: ``"DATABASE"``, the ``DATABASES`` alias of the results table (default:
    ``settings.HOMING["DATABASE"]``); ``"DEFER_TRANSPORT"``, the service's transport that
    carries tasks with ``run_after`` (default ``"tasks"``, Cloud Tasks).
    """

    supports_defer = True  # run_after: a delayed event on the service's Cloud Tasks transport
    supports_async_task = True
    supports_get_result = True
    supports_priority = False

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.using: str | None = self.options.get("DATABASE")
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"

    def _database(self) -> str:
        return self.using or config.database()

    def validate_task(self, task: Task[Any, Any]) -> None:
        if task.priority != 0:
            raise InvalidTaskError(
                "homing's task backend cannot honour a priority (Pub/Sub delivers in no "
                f"priority order); task {task.name!r} asks for {task.priority}"
            )
        super().validate_task(task)  # a naive run_after is Django's error
        if task.run_after is not None:
            self._check_defer(task.name, task.run_after)

    def _check_defer(self, name: str, run_after: datetime) -> datetime:
        """When a deferred task is to be delivered; refused unless a transport can delay."""
        when = max(run_after, datetime.now(UTC))  # past: delivered at once
        transport = str(self.options.get("DEFER_TRANSPORT", DEFER_TRANSPORT))
        try:
            homing = config.service()
            install(homing)
            transport = homing.transports.transport_of(DEFERRED_TASK_EVENT)
            homing.transports.check_delay(when, DEFERRED_TASK_EVENT)
        except HomingError as exc:
            raise InvalidTaskError(
                f"task {name!r} cannot be deferred (run_after): {exc}. A deferred task is a "
                "delayed event on the service's Cloud Tasks transport: "
                f"Homing(transports={{{transport!r}: CloudTasksPublisher(...)}})"
            ) from None
        return when

    def enqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> TaskResult[Any]:
        from homing.django.models import TaskRecord

        self.validate_task(task)
        when = None if task.run_after is None else self._check_defer(task.name, task.run_after)
        now = datetime.now(UTC)
        result: TaskResult[Any] = TaskResult(  # Django's JSON rules: raises for other values
            task=task,
            id=uuid.uuid4().hex,
            status=cast(TaskResultStatus, TaskResultStatus.READY),
            enqueued_at=now,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=list(args),
            kwargs=dict(kwargs),
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        using = self._database()
        homing = config.service()
        install(homing)
        TaskRecord.objects.using(using).create(
            id=result.id,
            backend=self.alias,
            task_path=task.module_path,
            queue_name=task.queue_name,
            priority=task.priority,
            takes_context=task.takes_context,
            args=result.args,
            kwargs=result.kwargs,
            status=TaskResultStatus.READY,
            enqueued_at=now,
            run_after=task.run_after,
        )
        kind = TaskMessage if when is None else DeferredTaskMessage
        message = kind(
            task_id=result.id,
            backend=self.alias,
            task_path=task.module_path,
            queue_name=task.queue_name,
            arguments=result.args,
            keyword_arguments=result.kwargs,
        )
        publish(message, event_id=result.id, at=when, homing=homing, using=using)
        return result

    def get_result(self, result_id: str) -> TaskResult[Any]:
        from homing.django.models import TaskRecord

        record = TaskRecord.objects.using(self._database()).filter(id=result_id).first()
        if record is None or record.backend != self.alias:
            raise TaskResultDoesNotExist(result_id)
        return self._result(record)

    def _result(self, record: Any) -> TaskResult[Any]:
        task = _task(record.task_path).using(queue_name=record.queue_name, backend=self.alias)
        if record.run_after is not None:  # as enqueued: not checked against today's clock
            object.__setattr__(task, "run_after", record.run_after)
        result: TaskResult[Any] = TaskResult(
            task=task,
            id=record.id,
            status=TaskResultStatus(record.status),
            enqueued_at=record.enqueued_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            last_attempted_at=record.last_attempted_at,
            args=record.args,
            kwargs=record.kwargs,
            backend=record.backend,
            errors=[
                TaskError(
                    exception_class_path=error["exception_class_path"],
                    traceback=error["traceback"],
                )
                for error in record.errors
            ],
            worker_ids=list(record.worker_ids),
        )
        if record.status == TaskResultStatus.SUCCESSFUL:
            object.__setattr__(result, "_return_value", record.return_value)
        return result

    def check(self, **kwargs: Any) -> Iterable[checks.CheckMessage]:
        from django.apps import apps

        if not apps.is_installed("homing.django"):
            yield checks.Error(
                "homing's task backend needs the homing.django app (its tables)",
                hint='INSTALLED_APPS += ["homing.django"]',
                id="homing.E101",
            )
            return
        try:
            using = self._database()
            config.service()
        except HomingError as exc:
            yield checks.Error(str(exc), id="homing.E102")
            return
        if using not in connections:
            yield checks.Error(f"database {using!r} is not in DATABASES", id="homing.E103")

    # -- the push side ----------------------------------------------------------------------

    async def run(self, message: TaskMessage, delivery: Delivery) -> None:
        """Run the task ``message`` carries and record how it went."""
        async with ThreadSensitiveContext():  # a thread (and connection) of its own
            await sync_to_async(self._run, thread_sensitive=True)(message)

    def _run(self, message: TaskMessage) -> None:
        from homing.django.models import TaskRecord

        using = self._database()
        try:
            records = TaskRecord.objects.using(using)
            record = records.filter(id=message.task_id).first()
            if record is None:  # enqueued by a transaction that committed, so it is there
                raise ConfigurationError(f"task {message.task_id!r} has no row in {using!r}")
            if record.status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED):
                return  # finished already (a redelivery whose done mark was lost)
            now = datetime.now(UTC)
            record.status = TaskResultStatus.RUNNING
            record.started_at = record.started_at or now
            record.last_attempted_at = now
            record.worker_ids = [*record.worker_ids, self.worker_id]
            record.save(update_fields=["status", "started_at", "last_attempted_at", "worker_ids"])
            result = self._result(record)
            task = result.task
            try:
                if task.takes_context:
                    value = task.call(
                        TaskContext(task_result=result), *result.args, **result.kwargs
                    )
                else:
                    value = task.call(*result.args, **result.kwargs)
                record.return_value = normalize_json(value)
            except Retry as exc:  # redelivered: READY again, this attempt's error kept
                record.status = TaskResultStatus.READY
                record.errors = [*record.errors, _error(exc)]
                record.save(update_fields=["status", "errors"])
                raise
            except Exception as exc:
                record.status = TaskResultStatus.FAILED
                record.errors = [*record.errors, _error(exc)]
                record.finished_at = datetime.now(UTC)
                record.save(update_fields=["status", "errors", "finished_at"])
                return
            record.status = TaskResultStatus.SUCCESSFUL
            record.finished_at = datetime.now(UTC)
            record.save(update_fields=["status", "finished_at", "return_value"])
        finally:
            connections.close_all()  # the thread ends with the task


def _task(path: str) -> Task[Any, Any]:
    try:
        found = import_string(path)
    except ImportError as exc:
        raise ConfigurationError(f"task {path!r} cannot be imported: {exc}") from None
    if not isinstance(found, Task):
        raise ConfigurationError(f"{path!r} is not a task (decorate it with @task)")
    return found


def _error(exc: BaseException) -> dict[str, str]:
    import traceback

    return {
        "exception_class_path": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "traceback": "".join(traceback.format_exception(exc)),
    }
