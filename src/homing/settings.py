"""Settings, read once at the edge (app factory or CLI) and passed down.

``Settings.from_env()`` reads ``HOMING_*`` variables; an unknown ``HOMING_*`` variable is an
error (a typo must not silently fall back to a default). Secrets never appear in ``repr``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Literal, Self, cast, get_args

from homing.app import DEFAULT_MAX_BODY_SIZE, AuthMode, UnknownEvents
from homing.errors import ConfigurationError
from homing.signing import KeyRing

PublisherKind = Literal["loopback", "memory"]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """homing's settings; each field is read from ``HOMING_<FIELD NAME IN CAPITALS>``.

    Attributes:
        signing_keys: ``kid:secret`` pairs, comma-separated; the first signs, all verify.
        legacy_secret: accept the article's format (``signature`` attribute) signed with this.
        auth: ``hmac``, or ``none`` (development only; warns at start-up).
        publisher: ``loopback`` (POST back to this service) or ``memory``.
        loopback_url: where the loopback publisher delivers; default this service's /events.
        max_body_size: push bodies larger than this many bytes are refused with 413.
        unknown_events: ``quarantine`` or ``retry`` an event type this service doesn't know.
    """

    signing_keys: KeyRing | None = None
    legacy_secret: str | None = field(default=None, repr=False)
    auth: AuthMode = "hmac"
    publisher: PublisherKind = "loopback"
    loopback_url: str | None = None
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    unknown_events: UnknownEvents = "quarantine"

    def __repr__(self) -> str:
        shown = {f.name: repr(getattr(self, f.name)) for f in fields(self)}
        if self.legacy_secret is not None:
            shown["legacy_secret"] = "***"  # noqa: S105 - a mask, not a password
        return "Settings(" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, prefix: str = "HOMING_") -> Self:
        """Build settings from ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        known = {f.name.upper(): f.name for f in fields(cls)}
        unknown = sorted(k for k in env if k.startswith(prefix) and k[len(prefix) :] not in known)
        if unknown:
            raise ConfigurationError(
                f"unknown setting(s) {', '.join(unknown)}; known: "
                + ", ".join(prefix + name for name in known)
            )
        values: dict[str, object] = {}
        for upper, name in known.items():
            raw = env.get(prefix + upper)
            if raw is None or raw == "":
                continue
            values[name] = _parse(name, prefix + upper, raw)
        return cls(**values)  # type: ignore[arg-type]


_CHOICES: dict[str, tuple[str, ...]] = {
    "auth": get_args(AuthMode),
    "publisher": get_args(PublisherKind),
    "unknown_events": get_args(UnknownEvents),
}


def _parse(name: str, variable: str, raw: str) -> object:
    if name == "signing_keys":
        try:
            return KeyRing.from_string(raw)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{variable}: {exc}") from None
    if name == "max_body_size":
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigurationError(f"{variable} must be a positive number of bytes")
        return int(raw)
    choices = _CHOICES.get(name)
    if choices is not None and raw not in choices:
        raise ConfigurationError(f"{variable} must be one of {', '.join(choices)}, not {raw!r}")
    return cast(object, raw)
