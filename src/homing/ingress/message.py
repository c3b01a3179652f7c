"""The one message every request shape is turned into."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


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
