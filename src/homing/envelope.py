"""The wrapped push envelope, under its original import path.

The request shapes live in :mod:`homing.ingress`; this module keeps ``homing.envelope`` imports
working for code written before them.
"""

from homing.ingress.message import PushMessage
from homing.ingress.wrapped import ACK_STATUSES, build_push, parse_push

__all__ = ["ACK_STATUSES", "PushMessage", "build_push", "parse_push"]
