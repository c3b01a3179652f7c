"""Named points of the publish and push pipelines, for telemetry and the like to attach to.

A :class:`Hook` overrides the methods it needs; the others do nothing. ``Homing(hooks=[...])``
calls them in order, at these points::

    publish:  before_sign -> (sign) -> (publisher) -> after_publish
    push:     on_push_received -> (shape, authenticate) -> on_authenticated
              -> (dedupe, decode, handler) -> on_push_handled

``on_push_received`` and ``on_push_handled`` are called once for every push, refused ones
included; ``on_authenticated`` only for a push whose credentials held. Hooks run on every push:
they must be quick, and must not raise (an exception from a hook is logged and ignored, never
allowed to fail a push or a publish).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from homing.ingress import PushMessage
    from homing.outcome import PushResult
    from homing.publishers.base import OutgoingMessage
    from homing.signing import VerifiedMessage


class Hook:
    """Base class: one no-op method per point of the pipeline (dramatiq's middleware shape)."""

    def before_sign(self, event_type: str) -> Mapping[str, str] | None:
        """Attributes homing adds to an event it is signing (names start with ``homing-``).

        They are signed with the rest. Used to carry the publishing request's trace context.
        """
        return None

    def after_publish(
        self, message: OutgoingMessage, seconds: float, error: BaseException | None
    ) -> None:
        """A publish finished: accepted by the broker (``error is None``) or failed."""

    def on_push_received(self) -> None:
        """A push request arrived; nothing about it is known or trusted yet."""

    def on_authenticated(self, push: PushMessage, verified: VerifiedMessage) -> None:
        """The push's credentials held: ``verified`` says what its signature vouches for."""

    def on_push_handled(self, result: PushResult) -> None:
        """The push's answer is final (called once per push, after ``on_push_received``)."""
