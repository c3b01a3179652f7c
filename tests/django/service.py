"""The service the Django tests name in ``settings.HOMING["APP"]``: built from the settings."""

from __future__ import annotations

from pydantic import BaseModel

from homing import Homing, KeyRing, OutgoingMessage, Publisher, Signer
from homing.django import build
from homing.publishers.cloudtasks import CloudTasksPublisher

#: The Cloud Tasks queue of :func:`with_cloud_tasks`.
TASKS_QUEUE = "projects/homing-local/locations/here/queues/django-tasks"


class Ping(BaseModel):
    n: int


def create() -> Homing:
    homing = build()
    homing.events.register("test.ping", Ping)

    @homing.handler(Ping)
    async def pong(event: Ping) -> None:
        return None

    return homing


class PubSubOnly(Publisher):
    """A production-like publisher that cannot delay, as Pub/Sub (what it sends is kept)."""

    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []

    async def _send(self, message: OutgoingMessage) -> str:
        self.sent.append(message)
        return str(len(self.sent))


def pubsub_only() -> Homing:
    """A service with no transport that can delay: deferred tasks are refused. (A production
    publisher: the signing keys must be given, as a deployment gives them.)"""
    return build(publisher=PubSubOnly(), signer=Signer(KeyRing.generate()))


def with_cloud_tasks() -> Homing:
    """Tasks with run_after go to Cloud Tasks (``CLOUD_TASKS_EMULATOR_HOST``: the local
    broker), pushed back to the view at ``http://testserver/events``."""
    tasks = CloudTasksPublisher(TASKS_QUEUE, url="http://testserver/events", service_account=None)
    return build(transports={"tasks": tasks})
