"""Stores for handled event ids (dedupe) and quarantined messages: in memory or SQL."""

from homing.stores.base import (
    Claim,
    DedupeStore,
    QuarantinedMessage,
    QuarantineStore,
    Transaction,
)
from homing.stores.memory import MemoryDedupeStore, MemoryQuarantineStore

__all__ = [
    "Claim",
    "DedupeStore",
    "MemoryDedupeStore",
    "MemoryQuarantineStore",
    "QuarantineStore",
    "QuarantinedMessage",
    "Transaction",
]
