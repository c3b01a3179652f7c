"""Message signatures: a key ring, homing's default scheme, and the article's legacy format.

The default scheme (``v1``) signs the data, the event type, every other attribute the publisher
set, a publisher-generated event id and a timestamp, with HMAC-SHA256 under a key id taken from
a :class:`KeyRing`. Several keys verify at once, one signs, so keys can be rotated.

The legacy format is the one from the article's Go library: attribute ``signature`` is the hex
HMAC-SHA256 of the raw data under a shared secret, attribute ``event-type`` names the event.
It carries no event id or timestamp of its own; the Pub/Sub message id stands in for the id.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from homing.errors import AuthenticationFailed, ConfigurationError, InvalidEvent

EVENT_TYPE = "event-type"
EVENT_ID = "homing-event-id"
TIMESTAMP = "homing-timestamp"
KEY_ID = "homing-key-id"
SIGNATURE = "homing-signature"
LEGACY_SIGNATURE = "signature"
#: The names of the publisher's own attributes, comma-separated, when it set any: an unwrapped
#: push carries attributes as HTTP headers, among others and in lower case, and this says which
#: headers were signed and restores their names' case.
ATTRIBUTE_NAMES = "homing-attributes"
_SIGNER_OWN = frozenset({EVENT_ID, TIMESTAMP, KEY_ID, SIGNATURE, ATTRIBUTE_NAMES})

#: Attributes Pub/Sub itself adds to a dead-lettered copy; they are never signed.
_ADDED_BY_PUBSUB = "CloudPubSubDeadLetter"
#: google-cloud-pubsub adds ``googclient_traceparent`` (and its kin) after homing signs, when
#: its OpenTelemetry tracing is on; they are never signed, and never trusted beyond that.
_ADDED_BY_CLIENT = "googclient_"
_CLIENT_TRACEPARENT = "googclient_traceparent"
_HOMING_PREFIX = "homing-"
_DEAD_LETTER_COUNT = "CloudPubSubDeadLetterSourceDeliveryCount"
#: Lower case: reserved names are compared without case, since an unwrapped push carries
#: attributes as HTTP headers, whose names have none.
_RESERVED_PREFIXES = ("homing-", "goog", _ADDED_BY_PUBSUB.lower())
_VERSION = "v1"
_VERSION_BYTES = _VERSION.encode()
_KEY_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

#: Pub/Sub's limits on a published message (cloud.google.com/pubsub/quotas), as
#: ``homing.ingress.message`` holds pushes to them (not imported: ingress imports this module).
MAX_DATA_BYTES = 10 * 1000 * 1000
MAX_ATTRIBUTES = 100
MAX_NAME_BYTES = 256
MAX_VALUE_BYTES = 1024

#: Pub/Sub keeps unacknowledged messages for 7 days by default and redelivers them all that
#: time, so a signature must stay valid at least that long. Replays are stopped by event id.
DEFAULT_TOLERANCE = timedelta(days=8)
DEFAULT_FUTURE_SKEW = timedelta(minutes=5)


class KeyRing:
    """Signing keys by id: every key verifies, one key (the first, unless named) signs.

    Example::

        ring = KeyRing.from_string("2026-11:new-secret,2026-10:old-secret")
        ring.signing_key_id  # "2026-11"
    """

    __slots__ = ("_macs", "_secrets", "signing_key_id")

    def __init__(self, keys: Mapping[str, str | bytes], *, signing_key_id: str | None = None):
        if not keys:
            raise ConfigurationError("a key ring needs at least one key")
        self._secrets: dict[str, bytes] = {}
        for number, (key_id, secret) in enumerate(keys.items(), start=1):
            if not _KEY_ID.match(key_id):
                # Not echoed: a pair written the wrong way round puts the secret here.
                raise ConfigurationError(
                    f"the id of signing key #{number} must be 1-64 letters, digits, '.', '_' "
                    "or '-' (the part before ':' in 'kid:secret')"
                )
            raw = secret.encode() if isinstance(secret, str) else bytes(secret)
            if len(raw) < 16:
                # Neither part echoed: written 'secret:kid', the id is the secret.
                raise ConfigurationError(
                    f"the secret of signing key #{number} is shorter than 16 bytes "
                    "(pairs are written 'kid:secret')"
                )
            self._secrets[key_id] = raw
        chosen = signing_key_id if signing_key_id is not None else next(iter(self._secrets))
        if chosen not in self._secrets:
            raise ConfigurationError(f"signing key {chosen!r} is not in the key ring")
        self.signing_key_id = chosen
        self._macs = {key_id: _keyed(secret) for key_id, secret in self._secrets.items()}

    @classmethod
    def from_string(cls, value: str) -> KeyRing:
        """Parse ``kid:secret`` pairs separated by commas; the first pair signs."""
        keys: dict[str, str] = {}
        for number, pair in enumerate(value.split(","), start=1):
            key_id, sep, secret = pair.strip().partition(":")
            if not sep or not key_id or not secret:
                raise ConfigurationError(f"signing key #{number} is not of the form 'kid:secret'")
            if key_id in keys:
                raise ConfigurationError(f"signing key #{number} repeats an earlier key's id")
            keys[key_id] = secret
        return cls(keys)

    @classmethod
    def generate(cls, key_id: str | None = None) -> KeyRing:
        """A ring with one fresh random key (for development and tests)."""
        return cls({key_id or new_key_id(): secrets.token_urlsafe(32)})

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._secrets)

    @property
    def signing_secret(self) -> bytes:
        return self._secrets[self.signing_key_id]

    def secret(self, key_id: str) -> bytes | None:
        return self._secrets.get(key_id)

    def mac(self, key_id: str) -> Callable[[bytes], bytes] | None:
        """HMAC-SHA256 under key ``key_id`` (``None`` when the ring has no such key)."""
        return self._macs.get(key_id)

    def __repr__(self) -> str:
        ids = ", ".join(self._secrets)
        return f"KeyRing(key_ids=[{ids}], signing_key_id={self.signing_key_id!r}, secrets=***)"


def new_key_id() -> str:
    return "k" + secrets.token_hex(4)


def new_key() -> str:
    """A fresh ``kid:secret`` pair, as ``HOMING_SIGNING_KEYS`` takes it."""
    return f"{new_key_id()}:{secrets.token_urlsafe(32)}"


@dataclass(slots=True)
class VerifiedMessage:
    """What a valid signature vouches for (read-only by convention: it is made per push, on
    the hot path, where a frozen dataclass costs several times more to build)."""

    event_type: str
    event_id: str
    scheme: Literal["v1", "legacy", "unsigned"]
    key_id: str | None
    timestamp: int | None
    attributes: Mapping[str, str] = field(repr=False)


#: ``"<length>:<name>"`` by attribute name: names repeat from message to message, so their
#: part of the signed bytes is made once. Only names of messages whose signature held are
#: learnt (:func:`_learn`): a refused push adds nothing, whatever names it carries.
_NAME_PARTS: dict[str, str] = {}
_MAX_NAME_PARTS = 1024


def _canonical(
    data: bytes, attributes: Iterable[tuple[str, str]]
) -> tuple[bytes, list[str] | None]:
    """The signed bytes, and the attribute names that were not in :data:`_NAME_PARTS` (``None``
    when every name was: the common case makes no list)."""
    # Length-prefixed (in UTF-8 bytes), sorted attributes then the data: no two distinct
    # messages share bytes. Built as text and encoded once: the same bytes as encoding each
    # part, in a fraction of the time (this is on every push's path).
    items = sorted(attributes)
    parts: list[str] = []
    unknown: list[str] | None = None
    for name, value in items:
        name_part = _NAME_PARTS.get(name)
        if name_part is None:
            name_part = f"{len(name)}:{name}"
            if unknown is None:
                unknown = []
            unknown.append(name)
        parts += (name_part, str(len(value)), ":", value)
    text = "".join(parts)
    if not text.isascii():  # character counts differ from byte counts: count bytes
        text = "".join([f"{len(k.encode())}:{k}{len(v.encode())}:{v}" for k, v in items])
    return b"%s\n%s\n%s" % (_VERSION_BYTES, text.encode(), data), unknown


def _learn(names: list[str]) -> None:
    """Remember the name parts of a message that was signed here or whose signature held."""
    for name in names:
        if len(_NAME_PARTS) >= _MAX_NAME_PARTS:
            return
        _NAME_PARTS[name] = f"{len(name)}:{name}"


def _check_limits(data: bytes, attributes: Mapping[str, str]) -> None:
    """Refuse a message Pub/Sub would refuse; ``attributes`` lack only the signature."""
    if len(data) > MAX_DATA_BYTES:
        raise InvalidEvent(
            f"the data is {len(data)} bytes, over Pub/Sub's limit of {MAX_DATA_BYTES} bytes"
        )
    count = len(attributes) + 1  # the signature
    if count > MAX_ATTRIBUTES:
        raise InvalidEvent(
            f"the message has {count} attributes (homing's own included), over Pub/Sub's "
            f"limit of {MAX_ATTRIBUTES}"
        )
    for name, value in attributes.items():
        if not name:
            raise InvalidEvent("an attribute name is empty, which Pub/Sub refuses")
        # A character is at most 4 bytes in UTF-8: most text is short enough not to encode.
        if len(name) > MAX_NAME_BYTES // 4 and _utf8_length(name) > MAX_NAME_BYTES:
            raise InvalidEvent(
                f"the attribute name starting {name[:64]!r} is over Pub/Sub's limit of "
                f"{MAX_NAME_BYTES} bytes"
            )
        if len(value) > MAX_VALUE_BYTES // 4 and _utf8_length(value) > MAX_VALUE_BYTES:
            raise InvalidEvent(
                f"the value of attribute {name[:64]!r} is over Pub/Sub's limit of "
                f"{MAX_VALUE_BYTES} bytes"
            )


def _utf8_length(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _keyed(secret: bytes) -> Callable[[bytes], bytes]:
    """HMAC-SHA256 under ``secret``: the standard library's HMAC, keyed once, copied per message.

    Keying hashes the padded key into SHA-256 states once; ``copy()`` starts each message from
    them. Where the standard library built its HMAC on OpenSSL (CPython's usual build), the C
    object inside ``hmac.HMAC`` is copied directly: ``hmac.HMAC.copy()`` is Python code costing
    about a third of a microsecond more per push (``docs/performance.md``).
    """
    keyed = hmac.new(secret, digestmod="sha256")
    state = getattr(keyed, "_hmac", None) or keyed

    def digest(message: bytes) -> bytes:
        mac = state.copy()
        mac.update(message)
        return mac.digest()

    return digest


def _digest(secret: bytes, message: bytes) -> bytes:
    return hmac.digest(secret, message, "sha256")


class Signer:
    """Signs outgoing messages and verifies incoming ones against a :class:`KeyRing`.

    Args:
        keys: the ring; its signing key signs, all its keys verify.
        legacy_secret: when set, messages in the article's format signed with it are accepted.
        tolerance: how old a signature may be; at least Pub/Sub's retention (7 days).
        future_skew: how far a timestamp may lie ahead of this clock.
        clock: seconds since the epoch (a seam for tests).
    """

    def __init__(
        self,
        keys: KeyRing,
        *,
        legacy_secret: str | bytes | None = None,
        tolerance: timedelta = DEFAULT_TOLERANCE,
        future_skew: timedelta = DEFAULT_FUTURE_SKEW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if tolerance < timedelta(days=7):
            raise ConfigurationError(
                "the signature tolerance must be at least 7 days (Pub/Sub's default retention): "
                "Pub/Sub legitimately redelivers old messages; replays are stopped by event id"
            )
        self.keys = keys
        self._legacy = legacy_secret.encode() if isinstance(legacy_secret, str) else legacy_secret
        if self._legacy is not None and len(self._legacy) < 16:
            raise ConfigurationError("the legacy secret is shorter than 16 bytes")
        self._legacy_mac = _keyed(self._legacy) if self._legacy is not None else None
        self._tolerance = tolerance.total_seconds()
        self._skew = future_skew.total_seconds()
        self._clock = clock

    @property
    def accepts_legacy(self) -> bool:
        return self._legacy is not None

    def sign(
        self,
        data: bytes,
        event_type: str,
        *,
        event_id: str | None = None,
        attributes: Mapping[str, str] | None = None,
        context: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """The attributes to publish with ``data``, signature included.

        ``context`` holds homing's own extra attributes (names starting ``homing-``, such as
        the trace context); they are signed with the rest.

        Raises:
            InvalidEvent: an attribute's name or value is not text, or the message exceeds one
                of Pub/Sub's limits (attributes counted with homing's own).
        """
        signed: dict[str, str] = {}
        for key, value in (attributes or {}).items():
            if not isinstance(key, str):
                raise InvalidEvent(f"an attribute name is {type(key).__name__}, not str")
            if not isinstance(value, str):
                raise InvalidEvent(f"attribute {key[:64]!r} is {type(value).__name__}, not str")
            folded = key.lower()
            if folded == EVENT_TYPE or folded.startswith(_RESERVED_PREFIXES):
                raise ConfigurationError(
                    f"attribute {key!r} is reserved (names are compared without case)"
                )
            if "," in key:
                raise ConfigurationError(f"attribute name {key!r} contains a comma")
            signed[key] = value
        if signed:
            if len({key.lower() for key in signed}) != len(signed):
                raise ConfigurationError(
                    "attribute names must differ in more than case: an unwrapped push carries "
                    "them as HTTP headers"
                )
            signed[ATTRIBUTE_NAMES] = ",".join(signed)
        if context:
            for key, value in context.items():
                if not key.startswith(_HOMING_PREFIX) or key in _SIGNER_OWN:
                    raise ConfigurationError(f"context attribute {key!r} is not homing's to add")
                signed[key] = value
        if event_id is not None and not isinstance(event_id, str):
            raise InvalidEvent(f"the event id is {type(event_id).__name__}, not str")
        signed[EVENT_TYPE] = event_type
        signed[EVENT_ID] = event_id or uuid.uuid4().hex
        signed[TIMESTAMP] = str(int(self._clock()))
        signed[KEY_ID] = self.keys.signing_key_id
        _check_limits(data, signed)  # before anything is hashed or learnt
        mac = self.keys._macs[self.keys.signing_key_id]  # the ring always holds its signing key
        canonical, unknown = _canonical(data, signed.items())
        if unknown:
            _learn(unknown)
        signed[SIGNATURE] = f"{_VERSION}:{mac(canonical).hex()}"
        return signed

    def verify(
        self,
        data: bytes,
        attributes: Mapping[str, str],
        *,
        message_id: str,
        check_age: bool = True,
    ) -> VerifiedMessage:
        """Check the signature; raise :class:`AuthenticationFailed` saying why when it fails.

        ``check_age=False`` skips the timestamp window (for messages replayed from trusted
        storage such as the quarantine); the signature itself is always checked.
        """
        # Every push takes this path: it is written for speed (see `make bench`).
        signature = attributes.get(SIGNATURE)
        if signature is None:
            if LEGACY_SIGNATURE in attributes:
                return self._verify_legacy(data, attributes, message_id)
            raise AuthenticationFailed("the message carries no signature")
        version, _, hex_digest = signature.partition(":")
        if version != _VERSION:
            raise AuthenticationFailed(f"unknown signature version {version[:16]!r}")
        key_id = attributes.get(KEY_ID, "")
        mac = self.keys._macs.get(key_id)
        if mac is None:
            raise AuthenticationFailed(f"signed with key {key_id[:64]!r}, which is not in the ring")
        covered = dict(attributes)
        del covered[SIGNATURE]
        if _CLIENT_TRACEPARENT in covered:  # added by google-cloud-pubsub after signing
            covered = {k: v for k, v in covered.items() if not k.startswith(_ADDED_BY_CLIENT)}
        if _DEAD_LETTER_COUNT in covered:  # a dead-lettered copy: drop what Pub/Sub added
            covered = {k: v for k, v in covered.items() if not k.startswith(_ADDED_BY_PUBSUB)}
        given = _hex_digest(hex_digest)
        canonical, unknown = _canonical(data, covered.items())
        if not hmac.compare_digest(mac(canonical), given):
            raise AuthenticationFailed("the signature does not match the message")
        if unknown:
            _learn(unknown)
        # Only checked once the signature holds, so these fields are the publisher's own.
        event_type = covered.get(EVENT_TYPE)
        event_id = covered.get(EVENT_ID)
        stamp = covered.get(TIMESTAMP, "")
        if not event_type or not event_id or not stamp.isdecimal():
            raise AuthenticationFailed("the signed message lacks its event type, id or timestamp")
        timestamp = int(stamp)
        if check_age:
            now = self._clock()
            if timestamp < now - self._tolerance:
                raise AuthenticationFailed("the signature has expired")
            if timestamp > now + self._skew:
                raise AuthenticationFailed("the signature's timestamp lies in the future")
        return VerifiedMessage(event_type, event_id, "v1", key_id, timestamp, covered)

    def _verify_legacy(
        self, data: bytes, attributes: Mapping[str, str], message_id: str
    ) -> VerifiedMessage:
        if self._legacy_mac is None:
            raise AuthenticationFailed(
                "the message is in the legacy (article) format, which is not accepted here; "
                "set HOMING_LEGACY_SECRET to accept it"
            )
        given = _hex_digest(attributes[LEGACY_SIGNATURE])
        if not hmac.compare_digest(self._legacy_mac(data), given):
            raise AuthenticationFailed("the signature does not match the message")
        event_type = attributes.get(EVENT_TYPE)
        if not event_type:
            raise AuthenticationFailed("the legacy message has no event-type attribute")
        if not message_id:
            raise AuthenticationFailed("the legacy message has no message id to stand as event id")
        covered = dict(attributes)
        del covered[LEGACY_SIGNATURE]
        return VerifiedMessage(event_type, message_id, "legacy", None, None, covered)


def legacy_signature(secret: str | bytes, data: bytes) -> str:
    """The article's signature: hex HMAC-SHA256 of the raw data."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return _digest(raw, data).hex()


#: A SHA-256 digest in hexadecimal.
_HEX_DIGEST_LENGTH = 64


def _hex_digest(text: str) -> bytes:
    """The digest a signature attribute spells: exactly 64 hexadecimal digits.

    ``bytes.fromhex`` alone skips whitespace, which would let a changed attribute verify.
    """
    try:
        digest = bytes.fromhex(text) if len(text) == _HEX_DIGEST_LENGTH else b""
    except ValueError:  # a character that is not a hexadecimal digit (nor whitespace)
        digest = b""
    # 64 characters give 32 bytes only when every one of them is a digit: whitespace, which
    # fromhex skips, leaves fewer.
    if len(digest) != _HEX_DIGEST_LENGTH // 2:
        raise AuthenticationFailed("the signature is not 64 hexadecimal digits")
    return digest
