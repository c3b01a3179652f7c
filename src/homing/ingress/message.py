"""The one message every request shape is turned into."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from homing.errors import MalformedPush

#: Pub/Sub's own bounds on a message's attributes: every shape is held to them when it is read,
#: before anything looks at the attributes further (nothing is cached or hashed before).
MAX_ATTRIBUTES = 100
MAX_NAME_BYTES = 256
MAX_VALUE_BYTES = 1024
#: A character takes at most four bytes in UTF-8: text this short is within the bounds.
SHORT_NAME = MAX_NAME_BYTES // 4
SHORT_VALUE = MAX_VALUE_BYTES // 4


@dataclass(frozen=True, slots=True)
class TaskAttempt:
    """What Cloud Tasks says about one attempt of a task (its ``X-CloudTasks-*`` headers)."""

    queue: str
    task: str
    retry_count: int
    execution_count: int
    eta: float | None = None
    previous_response: int | None = None
    retry_reason: str | None = None

    @property
    def attempt(self) -> int:
        """This attempt's number, from 1."""
        return self.retry_count + 1


@dataclass(slots=True)
class PushMessage:
    """One pushed Pub/Sub message (read-only by convention: one is made per push, on the hot
    path, where a frozen dataclass costs several times more to build)."""

    data: bytes = field(repr=False)
    attributes: Mapping[str, str]
    message_id: str
    publish_time: str | None = None
    ordering_key: str | None = None
    subscription: str | None = None
    delivery_attempt: int | None = None
    #: A Cloud Tasks request's attempt (its ``X-CloudTasks-*`` headers).
    task: TaskAttempt | None = None


def check_attribute(name: str, value: str) -> None:
    """Refuse an attribute longer than Pub/Sub allows (callers skip it for short text)."""
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise MalformedPush(f"an attribute name is longer than {MAX_NAME_BYTES} bytes")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES:
        raise MalformedPush(f"attribute {name[:64]!r} is longer than {MAX_VALUE_BYTES} bytes")
