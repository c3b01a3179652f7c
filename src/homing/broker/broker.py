"""The local push broker: Pub/Sub's topics and push subscriptions on one machine, durably.

Example::

    async with Broker("broker.sqlite3") as broker:
        await broker.create_topic(pubsub.Topic(name="projects/local/topics/events"))
        await broker.create_subscription(pubsub.Subscription(
            name="projects/local/subscriptions/events-push",
            topic="projects/local/topics/events",
            push_config=pubsub.PushConfig(push_endpoint="http://127.0.0.1:8080/events"),
        ))
        await broker.publish("projects/local/topics/events", [(b"{}", {"k": "v"}, "")])

Resources are the Pub/Sub API's own types (``google.pubsub_v1.types``); the gRPC service in
:mod:`homing.broker.grpc` serves them to google-cloud-pubsub unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from google.pubsub_v1 import types as pubsub

from homing.broker.delivery import SlowStart, SubscriptionWorker
from homing.broker.errors import AlreadyExists, InvalidArgument, NotFound
from homing.broker.model import (
    Delivery,
    check_messages,
    check_subscription,
    project_name,
    project_of,
    subscription_name,
    topic_name,
)
from homing.broker.oidc import TokenIssuer, make_certificate, new_private_key
from homing.broker.storage import Pending, Storage, now
from homing.broker.tasks import CloudTasks
from homing.broker.transport import HttpxPusher, Pusher, SocketPusher

logger = logging.getLogger("homing.broker")

DELETED_TOPIC = "_deleted-topic_"
_DEAD_LETTER_PREFIX = "CloudPubSubDeadLetterSource"
# Subscription fields update_subscription may change (the rest are fixed at creation).
_UPDATABLE = frozenset(
    {
        "ack_deadline_seconds",
        "push_config",
        "retry_policy",
        "dead_letter_policy",
        "labels",
        "expiration_policy",
        "message_retention_duration",
        "retain_acked_messages",
        "filter",
        "detached",
        "enable_exactly_once_delivery",
    }
)

Message = tuple[bytes, Mapping[str, str], str]
"""One message to publish: data, attributes, ordering key (``""`` for none)."""


class Broker:
    """Topics, push subscriptions and their deliveries, stored in one SQLite file.

    Args:
        path: the SQLite file (created if missing); ``":memory:"`` forgets everything on exit.
        client: an httpx client for the pushes to go through (a seam for tests); without
            one, pushes go through :class:`~homing.broker.transport.SocketPusher`.
        push_timeout: overrides every subscription's ack deadline as the push timeout
            (for tests that cannot wait 10 s; production's minimum deadline is 10 s).
        initial_window, max_window: the slow-start window of pushes in flight per subscription.
    """

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        client: httpx.AsyncClient | None = None,
        push_timeout: float | None = None,
        initial_window: int = 4,
        max_window: int = 1000,
    ) -> None:
        self.path = str(path)
        self.push_timeout = push_timeout
        self._initial_window = initial_window
        self._max_window = max_window
        self._pusher: Pusher = HttpxPusher(client) if client is not None else SocketPusher()
        self._own_pusher = client is None
        self._storage: Storage | None = None
        self._issuer: TokenIssuer | None = None
        #: The Cloud Tasks queues and tasks (:mod:`homing.broker.tasks`), once started.
        self.cloud_tasks: CloudTasks | None = None
        self._topics: dict[str, pubsub.Topic] = {}
        self._subscriptions: dict[str, pubsub.Subscription] = {}
        self._workers: dict[str, SubscriptionWorker] = {}
        self._lock = asyncio.Lock()
        self.published = 0

    # Life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the storage, load what it holds and start pushing what is owed."""
        if self._storage is not None:
            return
        storage = Storage(self.path)
        self._storage = storage
        key = await storage.run(Storage.meta("oidc-private-key", new_private_key))
        certificate = await storage.run(
            Storage.meta("oidc-certificate", lambda: make_certificate(key))
        )
        self._issuer = TokenIssuer(key, certificate)
        self.cloud_tasks = CloudTasks(
            storage, self._pusher, self._issuer, request_timeout=self.push_timeout
        )
        await self.cloud_tasks.start()
        topics, subscriptions, pending = await storage.run(Storage.load())
        for raw in topics:
            topic = pubsub.Topic.deserialize(raw)
            self._topics[topic.name] = topic
        for raw in subscriptions:
            subscription = pubsub.Subscription.deserialize(raw)
            self._subscriptions[subscription.name] = subscription
            self._workers[subscription.name] = self._worker(subscription)
        for item in pending:
            worker = self._workers.get(item.subscription)
            if worker is not None:
                worker.add(item)
        for worker in self._workers.values():
            worker.start()
        owed = sum(1 for item in pending if not item.dead)
        if owed:
            logger.info("broker: %d deliveries owed from %s", owed, self.path)

    async def aclose(self) -> None:
        """Stop pushing and close the storage; what was not acknowledged stays owed."""
        for worker in self._workers.values():
            await worker.stop()
        if self.cloud_tasks is not None:
            await self.cloud_tasks.aclose()
        if self._storage is not None:
            await asyncio.to_thread(self._storage.close)
            self._storage = None
        if self._own_pusher:
            await self._pusher.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            raise RuntimeError("the broker is not started: use `async with Broker(...)`")
        return self._storage

    @property
    def issuer(self) -> TokenIssuer:
        """Signs the push tokens; its :meth:`~TokenIssuer.certs` are served at ``/certs``."""
        if self._issuer is None:
            raise RuntimeError("the broker is not started: use `async with Broker(...)`")
        return self._issuer

    def _worker(self, subscription: pubsub.Subscription) -> SubscriptionWorker:
        return SubscriptionWorker(
            Delivery.of(subscription),
            storage=self.storage,
            pusher=self._pusher,
            issuer=self.issuer,
            dead_letter=self._dead_letter,
            push_timeout=self.push_timeout,
            window=SlowStart(self._initial_window, self._max_window),
        )

    # Topics -------------------------------------------------------------------------------

    async def create_topic(self, topic: pubsub.Topic) -> pubsub.Topic:
        """Create ``topic``; :class:`AlreadyExists` if it exists."""
        topic_name(topic.name)
        async with self._lock:
            if topic.name in self._topics:
                raise AlreadyExists(f"Topic already exists: {topic.name}")
            stored = pubsub.Topic(topic)
            await self.storage.run(
                Storage.put("topics", stored.name, pubsub.Topic.serialize(stored))
            )
            self._topics[stored.name] = stored
        return stored

    def get_topic(self, name: str) -> pubsub.Topic:
        """The topic called ``name``; :class:`NotFound` if there is none."""
        topic_name(name)
        try:
            return self._topics[name]
        except KeyError:
            raise NotFound(f"Topic not found: {name}") from None

    async def update_topic(self, topic: pubsub.Topic, paths: Sequence[str]) -> pubsub.Topic:
        """Copy the fields named in ``paths`` (``labels`` and the like) onto the stored topic."""
        existing = self.get_topic(topic.name)
        if not paths:
            raise InvalidArgument("The update_mask in the UpdateTopicRequest must be set")
        updated = pubsub.Topic(existing)
        for path in paths:
            field = path.split(".")[0]
            if field == "name":
                raise InvalidArgument("A topic's name cannot be updated")
            setattr(updated, field, getattr(topic, field))
        async with self._lock:
            await self.storage.run(
                Storage.put("topics", updated.name, pubsub.Topic.serialize(updated))
            )
            self._topics[updated.name] = updated
        return updated

    def list_topics(self, project: str) -> list[pubsub.Topic]:
        """The topics of ``projects/P``, by name."""
        project_name(project)
        return [
            topic
            for name, topic in sorted(self._topics.items())
            if f"projects/{project_of(name)}" == project
        ]

    def list_topic_subscriptions(self, topic: str) -> list[str]:
        """Names of the subscriptions attached to ``topic``."""
        self.get_topic(topic)
        return sorted(name for name, s in self._subscriptions.items() if s.topic == topic)

    async def delete_topic(self, name: str) -> None:
        """Delete the topic; its subscriptions stay, attached to ``_deleted-topic_``."""
        self.get_topic(name)
        async with self._lock:
            await self.storage.run(Storage.delete_topic(name))
            del self._topics[name]
            for subscription in list(self._subscriptions.values()):
                if subscription.topic == name:
                    detached = pubsub.Subscription(subscription)
                    detached.topic = DELETED_TOPIC
                    await self.storage.run(
                        Storage.put(
                            "subscriptions",
                            detached.name,
                            pubsub.Subscription.serialize(detached),
                            DELETED_TOPIC,
                        )
                    )
                    self._subscriptions[detached.name] = detached

    # Subscriptions ------------------------------------------------------------------------

    async def create_subscription(self, subscription: pubsub.Subscription) -> pubsub.Subscription:
        """Create a subscription; :class:`NotFound` for an unknown topic."""
        check_subscription(subscription)
        stored = pubsub.Subscription(subscription)
        if not stored.ack_deadline_seconds:
            stored.ack_deadline_seconds = 10
        async with self._lock:
            if stored.name in self._subscriptions:
                raise AlreadyExists(f"Subscription already exists: {stored.name}")
            if stored.topic not in self._topics:
                raise NotFound(f"Topic not found: {stored.topic}")
            await self.storage.run(
                Storage.put(
                    "subscriptions",
                    stored.name,
                    pubsub.Subscription.serialize(stored),
                    stored.topic,
                )
            )
            self._subscriptions[stored.name] = stored
            worker = self._worker(stored)
            self._workers[stored.name] = worker
            worker.start()
        return stored

    def get_subscription(self, name: str) -> pubsub.Subscription:
        """The subscription called ``name``; :class:`NotFound` if there is none."""
        subscription_name(name)
        try:
            return self._subscriptions[name]
        except KeyError:
            raise NotFound(f"Subscription does not exist: {name}") from None

    def list_subscriptions(self, project: str) -> list[pubsub.Subscription]:
        """The subscriptions of ``projects/P``, by name."""
        project_name(project)
        return [
            subscription
            for name, subscription in sorted(self._subscriptions.items())
            if f"projects/{project_of(name)}" == project
        ]

    async def update_subscription(
        self, subscription: pubsub.Subscription, paths: Sequence[str]
    ) -> pubsub.Subscription:
        """Copy the fields named in ``paths`` onto the stored subscription."""
        existing = self.get_subscription(subscription.name)
        if not paths:
            raise InvalidArgument("The update_mask in the UpdateSubscriptionRequest must be set")
        updated = pubsub.Subscription(existing)
        for path in paths:
            field = path.split(".")[0]
            if field not in _UPDATABLE:
                raise InvalidArgument(f"Invalid update_mask provided: {path} cannot be updated")
            if field in subscription:
                setattr(updated, field, getattr(subscription, field))
            else:
                delattr(updated, field)
        if not updated.ack_deadline_seconds:
            updated.ack_deadline_seconds = 10
        check_subscription(updated)
        async with self._lock:
            await self.storage.run(
                Storage.put(
                    "subscriptions",
                    updated.name,
                    pubsub.Subscription.serialize(updated),
                    updated.topic,
                )
            )
            self._subscriptions[updated.name] = updated
            await self._replace_worker(updated)
        return updated

    async def modify_push_config(self, name: str, push_config: pubsub.PushConfig) -> None:
        """Replace a subscription's push config (an empty one makes it a pull subscription)."""
        subscription = pubsub.Subscription(self.get_subscription(name))
        subscription.push_config = push_config
        await self.update_subscription(subscription, ["push_config"])

    async def _replace_worker(self, subscription: pubsub.Subscription) -> None:
        old = self._workers[subscription.name]
        await old.stop()
        worker = self._worker(subscription)
        worker.window = old.window
        for item in [*old.in_flight.values(), *old.waiting(), *old.dead.values()]:
            worker.add(item)
        self._workers[subscription.name] = worker
        worker.start()

    async def delete_subscription(self, name: str) -> None:
        """Delete the subscription and what it still owes."""
        self.get_subscription(name)
        async with self._lock:
            worker = self._workers.pop(name)
            await worker.stop()
            await self.storage.run(Storage.delete_subscription(name))
            del self._subscriptions[name]

    # Publishing ---------------------------------------------------------------------------

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[str]:
        """Store ``messages`` durably and return their ids; each subscription gets a copy.

        Returns only once the messages are committed to the file, so an acknowledged publish
        survives a kill -9 of the broker.
        """
        self.get_topic(topic)
        batch = [(bytes(data), dict(attributes), key or "") for data, attributes, key in messages]
        check_messages(batch)
        return await self._store(topic, batch)

    async def _store(self, topic: str, batch: list[tuple[bytes, dict[str, str], str]]) -> list[str]:
        names = [name for name, s in self._subscriptions.items() if s.topic == topic]
        stored = await self.storage.run(Storage.publish(topic, batch, names, now()))
        self.published += len(stored)
        for name in names:
            worker = self._workers.get(name)
            if worker is None:  # deleted while the publish committed
                continue
            for message in stored:
                worker.add(Pending(name, message, due=message.publish_time))
        return [message.message_id for message in stored]

    async def _dead_letter(self, worker: SubscriptionWorker, pending: Pending) -> None:
        delivery = worker.delivery
        topic = delivery.dead_letter_topic
        assert topic is not None
        message = pending.message
        attributes = {
            key: value
            for key, value in message.attributes.items()
            if not key.startswith(_DEAD_LETTER_PREFIX)
        }
        attributes |= {
            "CloudPubSubDeadLetterSourceDeliveryCount": str(pending.attempts),
            "CloudPubSubDeadLetterSourceSubscription": delivery.name.rsplit("/", 1)[-1],
            "CloudPubSubDeadLetterSourceSubscriptionProject": project_of(delivery.name),
            "CloudPubSubDeadLetterSourceTopicPublishTime": datetime.fromtimestamp(
                message.publish_time, UTC
            )
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
        }
        pending.dead = True
        worker.dead[message.seq] = pending
        if topic in self._topics:
            copies = await self._store(topic, [(message.data, attributes, message.ordering_key)])
            logger.warning(
                "message %s of %s dead-lettered to %s as %s after %d attempts (last: %s)",
                message.message_id,
                delivery.name,
                topic,
                copies[0],
                pending.attempts,
                pending.last_error,
            )
        else:
            logger.error(
                "message %s of %s is dead after %d attempts, but its dead-letter topic %s "
                "does not exist: it is kept for replay only",
                message.message_id,
                delivery.name,
                pending.attempts,
                topic,
            )
        self.storage.later(Storage.nack(pending))

    # Operations ---------------------------------------------------------------------------

    def worker(self, subscription: str) -> SubscriptionWorker:
        """The delivery state of one subscription (the web page reads it)."""
        self.get_subscription(subscription)
        return self._workers[subscription]

    async def replay(self, subscription: str, message_id: str) -> None:
        """Deliver a dead-lettered message of ``subscription`` again, attempts counted anew."""
        worker = self.worker(subscription)
        seq = int(message_id) if message_id.isdigit() else -1
        pending = worker.dead.pop(seq, None)
        if pending is None:
            raise NotFound(f"{subscription} has no dead-lettered message {message_id!r}")
        pending.dead = False
        pending.attempts = 0
        pending.due = now()
        await self.storage.run(Storage.nack(pending))
        worker.add(pending)

    def describe(self) -> dict[str, Any]:
        """A summary of every topic and subscription (the REST view's ``/v1/broker``)."""
        return {
            "topics": sorted(self._topics),
            "published": self.published,
            "subscriptions": [
                {
                    "name": name,
                    "topic": worker.delivery.topic,
                    "endpoint": worker.delivery.endpoint,
                    "window": worker.window.allowed,
                    "in_flight": len(worker.in_flight),
                    "backlog": worker.backlog,
                    "acked": worker.acked,
                    "nacked": worker.nacked,
                    "dead_lettered": len(worker.dead),
                    "last_failure": worker.last_failure,
                }
                for name, worker in sorted(self._workers.items())
            ],
        }
