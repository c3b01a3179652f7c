"""The ``@task`` functions of the Django task-backend tests (tasks live at module level)."""

from __future__ import annotations

from typing import Any

from homing import Retry
from tests.django.tasks_api import TaskContext, task

attempts_seen: list[int] = []


@task
def add(a: int, b: int) -> int:
    return a + b


@task
async def add_later(a: int, b: int) -> int:
    return a + b


@task
def fails(reason: str) -> None:
    raise ValueError(reason)


@task(takes_context=True)
def flaky(context: TaskContext, succeed_on: int) -> dict[str, Any]:
    attempts_seen.append(context.attempt)
    if context.attempt < succeed_on:
        raise Retry(f"attempt {context.attempt} of {succeed_on}")
    return {"attempt": context.attempt}
