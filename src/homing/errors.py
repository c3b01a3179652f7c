"""Every error homing raises derives from :class:`HomingError`.

::

    HomingError
    ├── ConfigurationError        settings or keys that cannot work
    ├── EventRegistrationError    an event type or model registered twice, or not at all
    ├── InvalidEvent              an event that cannot be published as given
    │   └── InvalidDelay          a delay that is negative, too long, or on a transport
    │                             that cannot delay
    ├── PublishFailed             a publisher could not hand an event to its broker
    ├── StoreError                a store's database refused, dropped or failed an operation
    └── PushRejected              a push request that must not run a handler
        ├── MalformedPush         the request is not a push envelope (400)
        ├── PayloadTooLarge       the body is over the configured limit (413)
        ├── AuthenticationFailed  missing, wrong or stale signature or token (401)
        └── Forbidden             a valid token from a sender that is not allowed (403)

Errors carry what a person needs to act (event type, event id, key id), never a secret.
"""

from __future__ import annotations


class HomingError(Exception):
    """Raised for every error that homing itself reports."""


class ConfigurationError(HomingError):
    """Raised when settings, keys or wiring cannot work as given."""


class EventRegistrationError(HomingError):
    """Raised when an event type or model is registered twice, or used unregistered."""


class InvalidEvent(HomingError):
    """Raised when an event is invalid, does not serialise, or exceeds Pub/Sub's limits."""


class InvalidDelay(InvalidEvent):
    """Raised when a publish's delay is negative, too long for its transport, or asked of a
    transport that cannot delay (Pub/Sub)."""


class PublishFailed(HomingError):
    """Raised when a publisher could not hand an event to its broker."""

    def __init__(self, message: str, *, event_type: str, event_id: str) -> None:
        super().__init__(f"{message} (event type {event_type!r}, event id {event_id!r})")
        self.event_type = event_type
        self.event_id = event_id


class StoreError(HomingError):
    """Raised when a store's database refused a connection, dropped it, or failed a statement.

    Driver and connection errors (SQLAlchemy's, the driver's own, ``OSError``) are turned into
    this one error where they enter a store, with the original as ``__cause__``.
    """


class StoreBusy(StoreError):
    """Raised when every connection in a store's pool is in use and none came free in time
    (``create_engine(pool_timeout=...)``): the database is up, this process is saturated.

    A push that meets it is answered 503 with ``Retry-After`` at once, rather than waiting
    past its deadline for a connection.
    """


class PushRejected(HomingError):
    """Raised when a push request must be refused before any handler runs."""

    status_code = 400
    code = "rejected"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class MalformedPush(PushRejected):
    """Raised when a request body is not a valid Pub/Sub push envelope."""

    status_code = 400
    code = "malformed"


class PayloadTooLarge(PushRejected):
    """Raised when a request body is larger than the configured limit."""

    status_code = 413
    code = "too_large"


class AuthenticationFailed(PushRejected):
    """Raised when a push carries no valid signature (or token)."""

    status_code = 401
    code = "unauthenticated"


class Forbidden(PushRejected):
    """Raised when a push is authenticated but its sender is not allowed."""

    status_code = 403
    code = "forbidden"
