"""The local push broker: Pub/Sub push semantics on one machine, durable in SQLite.

``homing broker`` serves it to google-cloud-pubsub (``PUBSUB_EMULATOR_HOST``); ``homing dev``
runs an app with it. See docs/broker.md.
"""

from homing.broker.broker import Broker
from homing.broker.errors import AlreadyExists, BrokerError, InvalidArgument, NotFound

__all__ = ["AlreadyExists", "Broker", "BrokerError", "InvalidArgument", "NotFound"]
