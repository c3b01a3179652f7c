"""The Pub/Sub gRPC API (``google.pubsub.v1.Publisher`` and ``Subscriber``) over a broker.

google-cloud-pubsub talks gRPC to ``PUBSUB_EMULATOR_HOST``; these handlers answer it with the
client's own message classes (``google.pubsub_v1.types``), so the client works unchanged.
Refused calls get the status codes Pub/Sub gives: INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS;
methods the broker does not offer (snapshots, seek, streaming pull, schemas) get UNIMPLEMENTED.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.pubsub_v1 import types as pubsub

from homing.broker.broker import Broker
from homing.broker.errors import BrokerError, InvalidArgument
from homing.broker.model import subscription_name

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _unary(handler: Handler, request_type: Any, response_type: Any) -> grpc.RpcMethodHandler:
    @functools.wraps(handler)
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(request, context)
        except BrokerError as exc:
            await context.abort(grpc.StatusCode[exc.status], str(exc))

    # Each is a protobuf class (SerializeToString/FromString) or a proto-plus one.
    serialize = getattr(response_type, "SerializeToString", None) or response_type.serialize
    deserialize = getattr(request_type, "FromString", None) or request_type.deserialize
    return grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=deserialize, response_serializer=serialize
    )


async def _unimplemented(request: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(
        grpc.StatusCode.UNIMPLEMENTED, "the homing local broker does not offer this method"
    )


class PubSubService:
    """The two services' handlers, bound to one broker."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """Generic handlers to add to a ``grpc.aio`` server."""
        p = pubsub
        publisher = {
            "CreateTopic": _unary(self.create_topic, p.Topic, p.Topic),
            "UpdateTopic": _unary(self.update_topic, p.UpdateTopicRequest, p.Topic),
            # The hot path reads the raw protobuf messages, without proto-plus wrappers.
            "Publish": _unary(self.publish, p.PublishRequest.pb(), p.PublishResponse.pb()),
            "GetTopic": _unary(self.get_topic, p.GetTopicRequest, p.Topic),
            "ListTopics": _unary(self.list_topics, p.ListTopicsRequest, p.ListTopicsResponse),
            "ListTopicSubscriptions": _unary(
                self.list_topic_subscriptions,
                p.ListTopicSubscriptionsRequest,
                p.ListTopicSubscriptionsResponse,
            ),
            "ListTopicSnapshots": _unary(
                self.list_topic_snapshots,
                p.ListTopicSnapshotsRequest,
                p.ListTopicSnapshotsResponse,
            ),
            "DeleteTopic": _unary(self.delete_topic, p.DeleteTopicRequest, empty_pb2.Empty),
            "DetachSubscription": _unary(
                _unimplemented, p.DetachSubscriptionRequest, p.DetachSubscriptionResponse
            ),
        }
        subscriber = {
            "CreateSubscription": _unary(self.create_subscription, p.Subscription, p.Subscription),
            "GetSubscription": _unary(
                self.get_subscription, p.GetSubscriptionRequest, p.Subscription
            ),
            "UpdateSubscription": _unary(
                self.update_subscription, p.UpdateSubscriptionRequest, p.Subscription
            ),
            "ListSubscriptions": _unary(
                self.list_subscriptions, p.ListSubscriptionsRequest, p.ListSubscriptionsResponse
            ),
            "DeleteSubscription": _unary(
                self.delete_subscription, p.DeleteSubscriptionRequest, empty_pb2.Empty
            ),
            "ModifyPushConfig": _unary(
                self.modify_push_config, p.ModifyPushConfigRequest, empty_pb2.Empty
            ),
            "Pull": _unary(self.pull, p.PullRequest, p.PullResponse),
            "Acknowledge": _unary(self.acknowledge, p.AcknowledgeRequest, empty_pb2.Empty),
            "ModifyAckDeadline": _unary(
                self.modify_ack_deadline, p.ModifyAckDeadlineRequest, empty_pb2.Empty
            ),
            "Seek": _unary(_unimplemented, p.SeekRequest, p.SeekResponse),
        }
        return [
            grpc.method_handlers_generic_handler("google.pubsub.v1.Publisher", publisher),
            grpc.method_handlers_generic_handler("google.pubsub.v1.Subscriber", subscriber),
        ]

    # Publisher ----------------------------------------------------------------------------

    async def create_topic(self, request: pubsub.Topic, _: Any) -> pubsub.Topic:
        return await self.broker.create_topic(request)

    async def update_topic(self, request: pubsub.UpdateTopicRequest, _: Any) -> pubsub.Topic:
        return await self.broker.update_topic(request.topic, list(request.update_mask.paths))

    async def get_topic(self, request: pubsub.GetTopicRequest, _: Any) -> pubsub.Topic:
        return self.broker.get_topic(request.topic)

    async def list_topics(
        self, request: pubsub.ListTopicsRequest, _: Any
    ) -> pubsub.ListTopicsResponse:
        return pubsub.ListTopicsResponse(topics=self.broker.list_topics(request.project))

    async def list_topic_subscriptions(
        self, request: pubsub.ListTopicSubscriptionsRequest, _: Any
    ) -> pubsub.ListTopicSubscriptionsResponse:
        names = self.broker.list_topic_subscriptions(request.topic)
        return pubsub.ListTopicSubscriptionsResponse(subscriptions=names)

    async def list_topic_snapshots(
        self, request: pubsub.ListTopicSnapshotsRequest, _: Any
    ) -> pubsub.ListTopicSnapshotsResponse:
        self.broker.get_topic(request.topic)
        return pubsub.ListTopicSnapshotsResponse()

    async def delete_topic(self, request: pubsub.DeleteTopicRequest, _: Any) -> empty_pb2.Empty:
        await self.broker.delete_topic(request.topic)
        return empty_pb2.Empty()

    async def publish(self, request: Any, _: Any) -> Any:
        """``request`` and the answer are raw protobuf messages (``PublishRequest.pb()``)."""
        messages = [
            (message.data, dict(message.attributes), message.ordering_key)
            for message in request.messages
        ]
        ids = await self.broker.publish(request.topic, messages)
        return pubsub.PublishResponse.pb()(message_ids=ids)

    # Subscriber ---------------------------------------------------------------------------

    async def create_subscription(
        self, request: pubsub.Subscription, _: Any
    ) -> pubsub.Subscription:
        return await self.broker.create_subscription(request)

    async def get_subscription(
        self, request: pubsub.GetSubscriptionRequest, _: Any
    ) -> pubsub.Subscription:
        return self.broker.get_subscription(request.subscription)

    async def update_subscription(
        self, request: pubsub.UpdateSubscriptionRequest, _: Any
    ) -> pubsub.Subscription:
        return await self.broker.update_subscription(
            request.subscription, list(request.update_mask.paths)
        )

    async def list_subscriptions(
        self, request: pubsub.ListSubscriptionsRequest, _: Any
    ) -> pubsub.ListSubscriptionsResponse:
        found = self.broker.list_subscriptions(request.project)
        return pubsub.ListSubscriptionsResponse(subscriptions=found)

    async def delete_subscription(
        self, request: pubsub.DeleteSubscriptionRequest, _: Any
    ) -> empty_pb2.Empty:
        await self.broker.delete_subscription(request.subscription)
        return empty_pb2.Empty()

    async def modify_push_config(
        self, request: pubsub.ModifyPushConfigRequest, _: Any
    ) -> empty_pb2.Empty:
        await self.broker.modify_push_config(request.subscription, request.push_config)
        return empty_pb2.Empty()

    async def pull(self, request: pubsub.PullRequest, _: Any) -> pubsub.PullResponse:
        worker = self.broker.worker(request.subscription)
        if worker.delivery.endpoint:
            raise InvalidArgument(f"{request.subscription} is a push subscription")
        if request.max_messages <= 0:
            raise InvalidArgument("max_messages must be positive")
        leased = worker.pull(min(request.max_messages, 1000))
        return pubsub.PullResponse(
            received_messages=[
                pubsub.ReceivedMessage(
                    ack_id=ack_id,
                    message=pubsub.PubsubMessage(
                        data=pending.message.data,
                        attributes=pending.message.attributes,
                        message_id=pending.message.message_id,
                        publish_time=_timestamp(pending.message.publish_time),
                        ordering_key=pending.message.ordering_key,
                    ),
                    delivery_attempt=(
                        pending.attempts + 1 if worker.delivery.dead_letter_topic else 0
                    ),
                )
                for ack_id, pending in leased
            ]
        )

    async def acknowledge(self, request: pubsub.AcknowledgeRequest, _: Any) -> empty_pb2.Empty:
        subscription_name(request.subscription)
        self.broker.worker(request.subscription).acknowledge(list(request.ack_ids))
        return empty_pb2.Empty()

    async def modify_ack_deadline(
        self, request: pubsub.ModifyAckDeadlineRequest, _: Any
    ) -> empty_pb2.Empty:
        if not 0 <= request.ack_deadline_seconds <= 600:
            raise InvalidArgument("ack_deadline_seconds must be between 0 and 600")
        worker = self.broker.worker(request.subscription)
        worker.modify_deadline(list(request.ack_ids), request.ack_deadline_seconds)
        return empty_pb2.Empty()


def _timestamp(seconds: float) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC)
