"""homing: signed, reliable background events for Cloud Run, delivered by Pub/Sub push.

Example::

    homing = Homing(signer=Signer(KeyRing.from_string("k1:a-long-secret...")),
                    publisher=LoopbackPublisher("http://127.0.0.1:8080/events"))

    @homing.event("user.name.changed")
    class UserNameChanged(BaseModel):
        user_id: int

    @homing.handler(UserNameChanged)
    async def notify(event: UserNameChanged) -> None: ...

    app = FastAPI(lifespan=homing.lifespan)
    app.include_router(push_router(homing))   # POST /events (homing.fastapi)
"""

from homing._version import __version__
from homing.app import Homing
from homing.dispatch import Delivery, Drop, Retry
from homing.errors import (
    AuthenticationFailed,
    ConfigurationError,
    EventRegistrationError,
    HomingError,
    InvalidDelay,
    InvalidEvent,
    MalformedPush,
    PayloadTooLarge,
    PublishFailed,
    PushRejected,
    StoreBusy,
    StoreError,
)
from homing.events import EventRegistry
from homing.hooks import Hook, PublishContext, PushContext
from homing.ingress import PushMessage
from homing.ingress.wrapped import build_push, parse_push
from homing.outcome import PushResult
from homing.publishers import LoopbackPublisher, MemoryPublisher, OutgoingMessage, Publisher
from homing.settings import Settings
from homing.signing import KeyRing, Signer, VerifiedMessage
from homing.stores import (
    Claim,
    DedupeStore,
    MemoryDedupeStore,
    MemoryQuarantineStore,
    QuarantinedMessage,
    QuarantineStore,
)

__all__ = [
    "AuthenticationFailed",
    "Claim",
    "ConfigurationError",
    "DedupeStore",
    "Delivery",
    "Drop",
    "EventRegistrationError",
    "EventRegistry",
    "Homing",
    "HomingError",
    "Hook",
    "InvalidDelay",
    "InvalidEvent",
    "KeyRing",
    "LoopbackPublisher",
    "MalformedPush",
    "MemoryDedupeStore",
    "MemoryPublisher",
    "MemoryQuarantineStore",
    "OutgoingMessage",
    "PayloadTooLarge",
    "PublishContext",
    "PublishFailed",
    "Publisher",
    "PushContext",
    "PushMessage",
    "PushRejected",
    "PushResult",
    "QuarantineStore",
    "QuarantinedMessage",
    "Retry",
    "Settings",
    "Signer",
    "StoreBusy",
    "StoreError",
    "VerifiedMessage",
    "__version__",
    "build_push",
    "parse_push",
]
