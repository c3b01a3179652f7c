"""The local push broker: Pub/Sub push semantics on one machine, durable in SQLite.

``homing broker`` serves it to google-cloud-pubsub (``PUBSUB_EMULATOR_HOST``); ``homing dev``
runs an app with it. See docs/broker.md. Needs the ``broker`` extra (google-cloud-pubsub and
grpcio, uvicorn).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homing.broker.errors import AlreadyExists, BrokerError, InvalidArgument, NotFound

if TYPE_CHECKING:
    from homing.broker.broker import Broker

__all__ = ["AlreadyExists", "Broker", "BrokerError", "InvalidArgument", "NotFound"]


def __getattr__(name: str) -> Any:
    # The broker imports google-cloud-pubsub's types and grpc: only when it is used, so the
    # `homing` command starts fast.
    if name == "Broker":
        from homing.broker.broker import Broker

        return Broker
    raise AttributeError(f"module 'homing.broker' has no attribute {name!r}")
