"""Publishers: hand a signed event to a broker. Pass the one you want to :class:`homing.Homing`."""

from homing.publishers.base import OutgoingMessage, Publisher
from homing.publishers.loopback import LoopbackPublisher
from homing.publishers.memory import MemoryPublisher

__all__ = ["LoopbackPublisher", "MemoryPublisher", "OutgoingMessage", "Publisher"]
