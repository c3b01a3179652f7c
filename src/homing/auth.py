"""Verification of the OIDC token Pub/Sub push attaches to each request.

A push subscription with ``pushConfig.oidcToken`` sends ``Authorization: Bearer <JWT>``: an
RS256 token signed by Google, naming the push service account. :class:`OIDCVerifier` checks, in
this order, and refuses with :class:`~homing.errors.AuthenticationFailed` (401) unless:

1. the header is ``Bearer <token>`` and the token is three base64url JSON segments;
2. the token header says ``alg: RS256`` (``none``, ``HS256`` and the rest are refused before any
   key is looked up, which closes the algorithm-confusion hole) and names a ``kid``;
3. the signature verifies under Google's certificate for that ``kid``;
4. ``iss`` is Google, ``aud`` is this service's audience, ``exp`` has not passed and ``iat``
   is present and not in the future (both with a small leeway), ``sub`` is present;

and then refuses with :class:`~homing.errors.Forbidden` (403) unless ``email`` is one of the
allowed push service accounts and ``email_verified`` is true.

Every step matters: a valid signature alone accepts any Google-signed token (anyone can mint one
for their own service account), and a matching audience alone accepts a forged token. Checking
only one of them is a known bug class.

Google's certificates are cached for the ``max-age`` their response gives and re-fetched, at most
once per :data:`MIN_REFETCH_INTERVAL`, when a token names an unknown ``kid`` (key rotation).
The token itself never appears in an error message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from homing.errors import AuthenticationFailed, ConfigurationError, Forbidden

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")

#: Seconds between two fetches caused by an unknown ``kid``, so junk tokens cannot make every
#: request hit Google.
MIN_REFETCH_INTERVAL = 30.0

_BASE64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)
_FETCH_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class PushToken:
    """The verified claims of a push request's OIDC token."""

    email: str
    audience: str
    issuer: str
    subject: str
    issued_at: int
    expires_at: int


class OIDCVerifier:
    """Verifies the ``Authorization`` header of a Pub/Sub push against Google's certificates.

    Args:
        audience: the audience the push subscription puts in its tokens (by default Pub/Sub
            uses the push endpoint URL).
        service_accounts: the push service account emails to accept; at least one.
        certs_url: where the ``kid`` -> PEM certificate map is fetched.
        client: the HTTP client to fetch with; one is created (and closed by :meth:`aclose`)
            when not given.
        clock: returns the current time in seconds since the epoch.
        leeway: seconds of clock skew allowed on ``exp`` and ``iat``.
        certs_ttl: seconds to keep the certificates when the response gives no ``max-age``.

    Example::

        verifier = OIDCVerifier(
            audience="https://events.example.com/events",
            service_accounts=["pubsub-push@my-project.iam.gserviceaccount.com"],
        )
        token = await verifier.verify(request.headers.get("authorization"))
    """

    def __init__(
        self,
        *,
        audience: str,
        service_accounts: Sequence[str],
        certs_url: str = GOOGLE_CERTS_URL,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        leeway: float = 10.0,
        certs_ttl: float = 3600.0,
    ) -> None:
        if not audience:
            raise ConfigurationError("OIDC verification needs an audience")
        if isinstance(service_accounts, str):
            raise ConfigurationError("service_accounts must be a list of emails, not one string")
        if not service_accounts:
            raise ConfigurationError("OIDC verification needs at least one allowed service account")
        self.audience = audience
        self.service_accounts = frozenset(service_accounts)
        self.certs_url = certs_url
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=_FETCH_TIMEOUT)
        self._clock = clock
        self._leeway = leeway
        self._certs_ttl = certs_ttl
        self._lock = asyncio.Lock()
        self._keys: dict[str, RSAPublicKey] = {}
        self._expires_at: float | None = None
        self._fetched_at: float | None = None
        self._attempts = 0
        self._last_failure: str | None = None

    async def verify(self, authorization: str | None) -> PushToken:
        """Check the raw ``Authorization`` header value and return the token's claims.

        Raises:
            AuthenticationFailed: no token, a malformed or badly signed one, or wrong claims.
            Forbidden: a valid token from a service account that is not allowed.
        """
        token = _bearer_token(authorization)
        segments = token.split(".")
        if len(segments) != 3:
            raise AuthenticationFailed(f"malformed token: {len(segments)} segments, expected 3")
        header = _json_segment(segments[0], "header")
        algorithm = header.get("alg")
        if algorithm != "RS256":
            raise AuthenticationFailed(f"token algorithm {_show(algorithm)} is not RS256")
        key_id = header.get("kid")
        if not isinstance(key_id, str) or not key_id:
            raise AuthenticationFailed("token header names no key id (kid)")
        claims = _json_segment(segments[1], "payload")
        signature = _decode_segment(segments[2], "signature")

        key = await self._key(key_id)
        signed = f"{segments[0]}.{segments[1]}".encode("ascii")
        try:
            key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise AuthenticationFailed("token signature does not verify") from None
        return self._check_claims(claims)

    async def aclose(self) -> None:
        """Close the HTTP client, if this verifier created it."""
        if self._owns_client:
            await self._client.aclose()

    def _check_claims(self, claims: Mapping[str, Any]) -> PushToken:
        issuer = claims.get("iss")
        if issuer not in GOOGLE_ISSUERS:
            raise AuthenticationFailed(f"token issuer {_show(issuer)} is not Google")
        audience = claims.get("aud")
        if audience != self.audience:
            raise AuthenticationFailed(
                f"token audience {_show(audience)} is not {_show(self.audience)}"
            )
        now = self._clock()
        expires_at = _timestamp(claims, "exp")
        if now > expires_at + self._leeway:
            raise AuthenticationFailed(f"token expired {int(now - expires_at)} s ago")
        issued_at = _timestamp(claims, "iat")
        if issued_at > now + self._leeway:
            raise AuthenticationFailed(f"token issued {int(issued_at - now)} s in the future")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise AuthenticationFailed("token has no sub claim")

        email = claims.get("email")
        if not isinstance(email, str) or not email:
            raise Forbidden("token has no email claim")
        if email not in self.service_accounts:
            raise Forbidden(f"service account {_show(email)} may not push here")
        if claims.get("email_verified") is not True:
            raise Forbidden(f"the email of service account {_show(email)} is not verified")
        return PushToken(
            email=email,
            audience=audience,
            issuer=issuer,
            subject=subject,
            issued_at=issued_at,
            expires_at=expires_at,
        )

    async def _key(self, key_id: str) -> RSAPublicKey:
        if self._is_fresh() and key_id in self._keys:
            return self._keys[key_id]
        attempts_seen = self._attempts
        async with self._lock:
            if self._attempts != attempts_seen and self._last_failure is not None:
                # Another request fetched while this one waited, and failed: share its answer
                # rather than queueing one more fetch behind each waiting request.
                raise AuthenticationFailed(self._last_failure)
            if not self._is_fresh() or (
                key_id not in self._keys
                and self._fetched_at is not None
                and self._clock() - self._fetched_at >= MIN_REFETCH_INTERVAL
            ):
                await self._fetch()
        key = self._keys.get(key_id)
        if key is None:
            raise AuthenticationFailed(f"no Google certificate has key id {_show(key_id)}")
        return key

    def _is_fresh(self) -> bool:
        return self._expires_at is not None and self._clock() < self._expires_at

    async def _fetch(self) -> None:
        try:
            keys, max_age = await self._download()
        except AuthenticationFailed as exc:
            self._last_failure = exc.detail
            raise
        finally:
            self._attempts += 1
        now = self._clock()
        self._keys = keys
        self._fetched_at = now
        self._expires_at = now + (max_age if max_age is not None else self._certs_ttl)
        self._last_failure = None

    async def _download(self) -> tuple[dict[str, RSAPublicKey], float | None]:
        def failed(reason: str) -> AuthenticationFailed:
            return AuthenticationFailed(f"could not fetch the token certificates: {reason}")

        try:
            response = await self._client.get(self.certs_url)
        except httpx.HTTPError as exc:
            raise failed(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise failed(f"{self.certs_url} answered {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise failed(f"{self.certs_url} did not answer JSON") from exc
        if not isinstance(body, dict) or not body:
            raise failed(f"{self.certs_url} did not answer a JSON object of certificates")
        keys: dict[str, RSAPublicKey] = {}
        for key_id, pem in body.items():
            if not isinstance(pem, str):
                raise failed(f"the certificate of key id {_show(key_id)} is not a string")
            try:
                public_key = x509.load_pem_x509_certificate(pem.encode()).public_key()
            except ValueError as exc:
                raise failed(f"the certificate of key id {_show(key_id)} does not load") from exc
            if not isinstance(public_key, RSAPublicKey):
                raise failed(f"the certificate of key id {_show(key_id)} is not an RSA key")
            keys[key_id] = public_key
        match = _MAX_AGE.search(response.headers.get("cache-control", ""))
        return keys, float(match.group(1)) if match else None


def _bearer_token(authorization: str | None) -> str:
    if authorization is None or not authorization.strip():
        raise AuthenticationFailed("no Authorization header")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthenticationFailed("the Authorization header is not 'Bearer <token>'")
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise AuthenticationFailed("the Authorization header is not 'Bearer <token>'")
    return token


def _decode_segment(segment: str, name: str) -> bytes:
    if not _BASE64URL.match(segment):
        raise AuthenticationFailed(f"malformed token: the {name} is not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise AuthenticationFailed(f"malformed token: the {name} is not base64url") from None


def _json_segment(segment: str, name: str) -> dict[str, Any]:
    raw = _decode_segment(segment, name)
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise AuthenticationFailed(f"malformed token: the {name} is not JSON") from None
    if not isinstance(value, dict):
        raise AuthenticationFailed(f"malformed token: the {name} is not a JSON object")
    return value


def _timestamp(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthenticationFailed(f"token has no numeric {name} claim")
    return int(value)


def _show(value: object) -> str:
    """``repr`` of a value taken from a token, cut short so logs stay readable."""
    shown = repr(value)
    return shown if len(shown) <= 100 else shown[:97] + "..."
