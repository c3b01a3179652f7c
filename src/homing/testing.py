"""Helpers for your own tests: signed push bodies exactly as Pub/Sub would POST them.

Example::

    body = push_body(homing, UserNameChanged(user_id=1, old_name="a", new_name="b"))
    response = await client.post("/events", content=body)
    assert response.status_code == 204
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from pydantic import BaseModel

from homing.app import Homing
from homing.envelope import build_push

__all__ = ["push_body"]


def push_body(
    homing: Homing,
    event: BaseModel,
    *,
    event_id: str | None = None,
    message_id: str | None = None,
    attributes: Mapping[str, str] | None = None,
    subscription: str = "projects/test/subscriptions/homing-test",
    delivery_attempt: int | None = None,
) -> bytes:
    """``event`` signed by ``homing`` and wrapped in a push envelope."""
    message = homing.sign(event, event_id=event_id, attributes=attributes)
    return build_push(
        message.data,
        message.attributes,
        message_id=message_id or uuid.uuid4().hex,
        subscription=subscription,
        delivery_attempt=delivery_attempt,
    )
