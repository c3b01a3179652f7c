"""Pushing an event into a service in-process, and asserting how it was answered."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import orjson
from pydantic import BaseModel

from homing.app import Homing
from homing.errors import ConfigurationError
from homing.outcome import PushResult
from homing.testing._envelopes import DEFAULT_SUBSCRIPTION, Defect, push_body


async def push(
    target: Any,
    event: BaseModel | Mapping[str, Any] | bytes,
    *,
    homing: Homing | None = None,
    path: str = "/events",
    event_type: str | None = None,
    unregistered: bool = False,
    defect: Defect | None = None,
    event_id: str | None = None,
    message_id: str | None = None,
    attributes: Mapping[str, str] | None = None,
    subscription: str = DEFAULT_SUBSCRIPTION,
    delivery_attempt: int | None = None,
    authorization: str | None = None,
) -> PushResult:
    """Push ``event`` into ``target`` as Pub/Sub would, and return how it was answered.

    Args:
        target: a :class:`~homing.Homing` (its push pipeline is called directly) or an ASGI
            app (``path`` is POSTed through the app, its middleware and routing included).
        event: a registered model's instance, the data as a mapping (with ``event_type``), or
            a ready push body (bytes, sent as it is).
        homing: the service that signs; default ``target`` itself, or ``target.state.homing``.
        path: where an ASGI app serves the push endpoint.
        authorization: the ``Authorization`` header (an OIDC token for ``auth="oidc"``).

    ``event_type``, ``unregistered``, ``defect``, ``event_id``, ``message_id``, ``attributes``,
    ``subscription`` and ``delivery_attempt`` are as for :func:`push_body`.

    Returns:
        The answer as a :class:`~homing.PushResult`. Through HTTP, a 204 reads as the outcome
        ``"done"`` (a duplicate is answered 204 too); called on a ``Homing`` it is exact.

    Example::

        result = await push(app, UserNameChanged(user_id=1, old_name="a", new_name="b"))
        assert_handled(result)
    """
    service = homing if homing is not None else _homing_of(target)
    if isinstance(event, bytes):
        body = event
    else:
        body = push_body(
            service,
            event,
            event_type=event_type,
            unregistered=unregistered,
            defect=defect,
            event_id=event_id,
            message_id=message_id,
            attributes=attributes,
            subscription=subscription,
            delivery_attempt=delivery_attempt,
        )
    if isinstance(target, Homing):
        return await target.handle_push(body, authorization=authorization)
    headers = {"content-type": "application/json"}
    if authorization is not None:
        headers["authorization"] = authorization
    transport = httpx.ASGITransport(app=target)
    async with httpx.AsyncClient(transport=transport, base_url="http://homing.test") as client:
        response = await client.post(path, content=body, headers=headers)
    return result_of(response)


def result_of(response: httpx.Response) -> PushResult:
    """The :class:`~homing.PushResult` an HTTP answer from the push endpoint stands for."""
    if response.status_code == 204:
        return PushResult(204, "done")
    try:
        payload = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict) or not isinstance(payload.get("outcome"), str):
        text = response.text[:200]
        return PushResult(response.status_code, "not_a_push_answer", text or None)
    detail = payload.get("detail")
    return PushResult(
        response.status_code, payload["outcome"], detail if isinstance(detail, str) else None
    )


def assert_handled(result: PushResult, outcome: str = "done", *, status: int | None = None) -> None:
    """Assert a push was answered with ``outcome`` (and ``status``, when given).

    The failure message shows the status, the outcome and the reason the service gave.
    """
    if result.outcome != outcome or (status is not None and result.status != status):
        wanted = outcome if status is None else f"{outcome} ({status})"
        got = f"{result.outcome} ({result.status})"
        why = f": {result.detail}" if result.detail else ""
        raise AssertionError(f"the push was answered {got}{why}; expected {wanted}")


def _homing_of(target: Any) -> Homing:
    if isinstance(target, Homing):
        return target
    found = getattr(getattr(target, "state", None), "homing", None)
    if isinstance(found, Homing):
        return found
    raise ConfigurationError(
        f"cannot find the Homing behind {type(target).__name__}: pass homing=..., "
        "or keep it on the app as app.state.homing"
    )
