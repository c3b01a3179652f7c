"""The broker's errors, one per gRPC status Pub/Sub answers an invalid call with.

::

    HomingError
    └── BrokerError          an API call the local broker refuses
        ├── InvalidArgument  a bad resource name, a limit exceeded (INVALID_ARGUMENT)
        ├── NotFound         an unknown topic, subscription or message (NOT_FOUND)
        └── AlreadyExists    a topic or subscription that exists already (ALREADY_EXISTS)
"""

from __future__ import annotations

from homing.errors import HomingError


class BrokerError(HomingError):
    """Raised when the local broker refuses an API call; ``status`` is the gRPC code's name."""

    status = "INTERNAL"


class InvalidArgument(BrokerError):
    """Raised for a bad resource name, a malformed message or a limit exceeded."""

    status = "INVALID_ARGUMENT"


class NotFound(BrokerError):
    """Raised when a topic, subscription or dead-lettered message does not exist."""

    status = "NOT_FOUND"


class AlreadyExists(BrokerError):
    """Raised when creating a topic or subscription that exists already."""

    status = "ALREADY_EXISTS"
