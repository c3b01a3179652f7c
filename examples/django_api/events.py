"""The service's events and their handler, on ``homing.django``'s stores."""

from __future__ import annotations

from pydantic import BaseModel

from homing import Delivery, Homing
from homing.django import build


class UserNameChanged(BaseModel):
    """Published by ``POST /change-name``; type name ``user.name.changed``."""

    user_id: int
    old_name: str
    new_name: str


def create() -> Homing:
    """The service's Homing (``settings.HOMING["APP"]``)."""
    # A development key (said so) when HOMING_SIGNING_KEYS is unset and the publisher is local.
    homing = build()
    homing.events.register("user.name.changed", UserNameChanged)

    # Its only effect is a row in Django's database: homing commits it with the event's
    # "handled" mark in one atomic() block. One notification per event, whatever happens. A
    # plain def, as Django code is: the block is opened, the handler run and the commit made
    # in one call on one of the store's threads.
    @homing.handler(UserNameChanged, effects="database")
    def notify_user(event: UserNameChanged, delivery: Delivery) -> None:
        from django_api.models import Notification

        Notification.objects.create(
            event_id=delivery.event_id,
            user_id=event.user_id,
            text=f"Your name was changed from {event.old_name!r} to {event.new_name!r}.",
        )

    return homing
