"""Push bodies exactly as Pub/Sub would POST them: correctly signed, or broken on purpose."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal, get_args

import orjson
from pydantic import BaseModel

from homing.app import Homing
from homing.errors import ConfigurationError, EventRegistrationError
from homing.events import encode_event
from homing.ingress.wrapped import build_push
from homing.signing import EVENT_ID, EVENT_TYPE, KEY_ID, SIGNATURE, TIMESTAMP, KeyRing, Signer

#: The ways :func:`push_body` can break a body on purpose, each refused by the endpoint:
#: ``unsigned`` (no signature, 401), ``wrong_key`` (signed with a key outside the ring, 401),
#: ``tampered`` (data changed after signing, 401), ``expired`` (signed longer ago than the
#: tolerance, 401), ``malformed`` (not a push envelope, 400).
Defect = Literal["unsigned", "wrong_key", "tampered", "expired", "malformed"]

DEFECTS: tuple[str, ...] = get_args(Defect)

DEFAULT_SUBSCRIPTION = "projects/test/subscriptions/homing-test"

_ONE_DAY = 86_400.0
_EIGHT_DAYS = 8 * _ONE_DAY


def push_body(
    homing: Homing,
    event: BaseModel | Mapping[str, Any],
    *,
    event_type: str | None = None,
    unregistered: bool = False,
    defect: Defect | None = None,
    event_id: str | None = None,
    message_id: str | None = None,
    attributes: Mapping[str, str] | None = None,
    subscription: str = DEFAULT_SUBSCRIPTION,
    delivery_attempt: int | None = None,
) -> bytes:
    """``event`` signed by ``homing`` and wrapped in a push envelope.

    Args:
        homing: the service; its signer signs (an OIDC-only service gets an unsigned body).
        event: an instance of a registered model, or the event's data as a mapping (then
            ``event_type`` is required).
        event_type: the type name; defaults to the one the model is registered under.
        unregistered: allow a type the service does not know (to test how it answers one);
            without it, an unregistered model or type name raises
            :class:`~homing.errors.EventRegistrationError`.
        defect: break the body on purpose (see :data:`Defect`).

    ``event_id``, ``message_id``, ``attributes``, ``subscription`` and ``delivery_attempt``
    are as the publisher and Pub/Sub would set them; the ids are fresh by default.

    Example::

        body = push_body(homing, UserNameChanged(user_id=1, old_name="a", new_name="b"))
        response = await client.post("/events", content=body)
        assert response.status_code == 204
    """
    if defect is not None and defect not in DEFECTS:
        raise ConfigurationError(f"defect must be one of {', '.join(DEFECTS)}, not {defect!r}")
    type_name, data = _type_and_data(homing, event, event_type, unregistered)
    if defect == "malformed":
        return b'{"message": {"data": "not base64!", "attributes": 7}'
    signer = homing.signer
    if defect == "expired" and signer is not None:
        # A day older than this signer accepts (its tolerance is homing's own, read in-package).
        tolerance: float = getattr(signer, "_tolerance", _EIGHT_DAYS)
        signed_at = time.time() - tolerance - _ONE_DAY
        signer = Signer(signer.keys, clock=lambda: signed_at)
    elif defect == "wrong_key":
        signer = Signer(KeyRing.generate("not-in-the-ring"))
    if signer is None or defect == "unsigned":
        signed = {**(attributes or {}), EVENT_TYPE: type_name, EVENT_ID: event_id or _fresh()}
    else:
        signed = signer.sign(data, type_name, event_id=event_id, attributes=attributes)
    if defect == "unsigned":
        for name in (SIGNATURE, KEY_ID, TIMESTAMP):
            signed.pop(name, None)
    if defect == "tampered":
        data = data[:-1] + b', "tampered": true}' if data.endswith(b"}") else data + b" "
    return build_push(
        data,
        signed,
        message_id=message_id or _fresh(),
        subscription=subscription,
        delivery_attempt=delivery_attempt,
    )


def _type_and_data(
    homing: Homing,
    event: BaseModel | Mapping[str, Any],
    event_type: str | None,
    unregistered: bool,
) -> tuple[str, bytes]:
    hint = "pass unregistered=True to push an event type the service does not know"
    if isinstance(event, BaseModel):
        data = encode_event(event)
        model = type(event)
        registered = next((n for n in homing.events if homing.events.model(n) is model), None)
        if event_type is None:
            if registered is None:
                if unregistered:
                    raise EventRegistrationError(
                        f"{model.__qualname__} is not registered: name its event_type"
                    )
                raise EventRegistrationError(
                    f"{model.__qualname__} is not a registered event of this service; "
                    f"register it with @homing.event('type.name'), or {hint} (with event_type)"
                )
            return registered, data
    else:
        if event_type is None:
            raise EventRegistrationError("event data given as a mapping needs its event_type")
        data = orjson.dumps(dict(event))
    if event_type not in homing.events and not unregistered:
        raise EventRegistrationError(
            f"event type {event_type!r} is not registered with this service; {hint}"
        )
    return event_type, data


def _fresh() -> str:
    return uuid.uuid4().hex
