"""The Cloud Tasks request: a task's POST, with its ``X-CloudTasks-*`` headers.

homing's :class:`~homing.publishers.cloudtasks.CloudTasksPublisher` gives each task the wrapped
JSON envelope of a Pub/Sub push as its body, so the message is read as a wrapped push; the
headers Cloud Tasks adds on each attempt say which queue and task it is and how many attempts
came before (Google's "Cloud Tasks HTTP target" documentation):

===================================  =====================================================
``X-CloudTasks-QueueName``           the queue's id
``X-CloudTasks-TaskName``            the task's id (or a generated one)
``X-CloudTasks-TaskRetryCount``      attempts before this one, 5xx that never reached the
                                     handler included
``X-CloudTasks-TaskExecutionCount``  responses the handler gave before this attempt
``X-CloudTasks-TaskETA``             the schedule time, in seconds since the epoch
``X-CloudTasks-TaskPreviousResponse`` the HTTP status of the previous attempt (retries only)
``X-CloudTasks-TaskRetryReason``     why it was retried (retries only)
===================================  =====================================================

Anyone can send these headers. They are believed only when the request's OIDC token verified
(the pipeline drops them otherwise, like Pub/Sub's dead-letter attributes), so a forged retry
count can neither make an attempt the last one nor hide that it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from homing.errors import MalformedPush
from homing.ingress.message import PushMessage, TaskAttempt
from homing.ingress.wrapped import parse_push

PREFIX = "x-cloudtasks-"
QUEUE_NAME = "x-cloudtasks-queuename"
TASK_NAME = "x-cloudtasks-taskname"
RETRY_COUNT = "x-cloudtasks-taskretrycount"
EXECUTION_COUNT = "x-cloudtasks-taskexecutioncount"
ETA = "x-cloudtasks-tasketa"
PREVIOUS_RESPONSE = "x-cloudtasks-taskpreviousresponse"
RETRY_REASON = "x-cloudtasks-taskretryreason"

#: Longer header values than Cloud Tasks sends (a queue id is at most 100 characters, a task id
#: 500) are refused.
_MAX_VALUE = 1024


def is_cloudtasks(headers: Mapping[str, str]) -> bool:
    """Whether the request carries Cloud Tasks' headers."""
    return any(name.startswith(PREFIX) for name in headers)


def parse_cloudtasks(body: bytes, headers: Mapping[str, str]) -> PushMessage:
    """A Cloud Tasks request: the wrapped envelope in the body, the attempt in the headers.

    Raises :class:`MalformedPush` saying what is wrong.
    """
    push = parse_push(body)
    attempt = task_attempt(headers)
    return replace(push, task=attempt, delivery_attempt=attempt.attempt)


def task_attempt(headers: Mapping[str, str]) -> TaskAttempt:
    """Read the ``X-CloudTasks-*`` headers (lower-case names)."""
    for name, value in headers.items():
        if name.startswith(PREFIX) and len(value) > _MAX_VALUE:
            raise MalformedPush(f"header {name} is longer than {_MAX_VALUE} characters")
    queue, task = headers.get(QUEUE_NAME), headers.get(TASK_NAME)
    if not queue or not task:
        raise MalformedPush(f"a Cloud Tasks request needs {QUEUE_NAME} and {TASK_NAME} headers")
    eta = headers.get(ETA)
    previous = headers.get(PREVIOUS_RESPONSE)
    return TaskAttempt(
        queue=queue,
        task=task,
        retry_count=_count(headers, RETRY_COUNT),
        execution_count=_count(headers, EXECUTION_COUNT),
        eta=None if eta is None else _seconds(eta),
        previous_response=None if previous is None else _status(previous),
        retry_reason=headers.get(RETRY_REASON),
    )


def untrusted(push: PushMessage) -> PushMessage:
    """``push`` without what only Cloud Tasks may say (for a request whose token did not
    verify): no attempt, no queue."""
    if push.task is None:
        return push
    return replace(push, task=None, delivery_attempt=None)


def _count(headers: Mapping[str, str], name: str) -> int:
    value = headers.get(name, "0")
    if not value.isdecimal() or len(value) > 9:
        raise MalformedPush(f"{name} must be a non-negative integer")
    return int(value)


def _status(value: str) -> int:
    if not value.isdecimal() or len(value) != 3:
        raise MalformedPush(f"{PREVIOUS_RESPONSE} must be an HTTP status")
    return int(value)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise MalformedPush(f"{ETA} must be seconds since the epoch") from None
    if not 0 <= seconds < 1e11:
        raise MalformedPush(f"{ETA} must be seconds since the epoch")
    return seconds
