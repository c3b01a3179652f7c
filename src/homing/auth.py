"""Verification of the OIDC token Pub/Sub push attaches to each request.

A push subscription with ``pushConfig.oidcToken`` sends ``Authorization: Bearer <JWT>``: an
RS256 token signed by Google, naming the push service account. :class:`OIDCVerifier` checks, in
this order, and refuses with :class:`~homing.errors.AuthenticationFailed` (401) unless:

1. the header is at most :data:`MAX_AUTHORIZATION_LENGTH` characters of ``Bearer <token>`` and
   the token is three base64url segments, whose header and payload google-auth reads as JSON
   objects in UTF-8 (RFC 7515 §5.2);
2. the token header says ``alg: RS256`` (``none``, ``HS256`` and the rest are refused before any
   key is looked up, which closes the algorithm-confusion hole) and names a ``kid``;
3. the signature verifies (google-auth's RSA verifier) under Google's certificate for that
   ``kid``;
4. ``iss`` is Google, ``aud`` is this service's audience, ``exp`` has not passed, ``iat`` is
   present, not in the future and at most ``max_token_age`` ago (a token whose ``exp`` lies far
   ahead still ages out: Google's push tokens live an hour), ``sub`` is present;

and then refuses with :class:`~homing.errors.Forbidden` (403) unless ``email`` is one of the
allowed push service accounts and ``email_verified`` is true.

Every step matters: a valid signature alone accepts any Google-signed token (anyone can mint one
for their own service account), and a matching audience alone accepts a forged token. Checking
only one of them is a known bug class.

Parsing and the signature check are google-auth's (``google.auth.jwt``, ``google.auth.crypt``);
the rules above are homing's, on top: google-auth's own ``verify_oauth2_token`` checks neither the
sender nor ``email_verified``, fetches the certificates on every call, and accepts other
algorithms. ``tests/test_auth_differential.py`` runs both over a matrix of forged and malformed
tokens.

Google's certificates are cached for the ``max-age`` their response gives (at least
:data:`MIN_CERTS_TTL`); entries that are not RSA certificates are skipped and logged. Every
fetch attempt counts: after one, a token naming an unknown ``kid`` (key rotation, or junk)
fetches again only after :data:`MIN_REFETCH_INTERVAL`, and after a failed one nothing fetches
for :data:`FAILED_FETCH_INTERVAL` — requests meanwhile get the failure — so neither junk
tokens nor a cold start with Google's endpoint down make a fetch per request. The token itself
never appears in an error message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import time
from base64 import urlsafe_b64decode
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx

from homing._google import GOOGLE_CERTS_URL as GOOGLE_CERTS_URL  # (re-exported)
from homing.errors import AuthenticationFailed, ConfigurationError, Forbidden

if TYPE_CHECKING:
    from google.auth.crypt import RSAVerifier


class _Google(NamedTuple):
    """google-auth's JWT parsing and RSA verifier, and cryptography's X.509."""

    jwt: Any
    error: type[Exception]
    x509: Any
    rsa_public_key: type
    rsa_verifier: type


@functools.cache
def _google() -> _Google:
    """Imported when the first :class:`OIDCVerifier` is made, not with this module: a tenth of
    a second of start-up that a service without OIDC never pays (``make bench``'s time to
    ready)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from google.auth import exceptions, jwt
    from google.auth.crypt import RSAVerifier

    return _Google(jwt, exceptions.GoogleAuthError, x509, RSAPublicKey, RSAVerifier)


GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")

logger = logging.getLogger("homing.auth")

#: Seconds after any fetch attempt before an unknown ``kid`` may fetch again, so junk tokens
#: cannot make every request hit Google.
MIN_REFETCH_INTERVAL = 30.0
#: Seconds after a failed fetch before any request may fetch again.
FAILED_FETCH_INTERVAL = 5.0
#: The least time certificates are kept, whatever ``max-age`` says (``max-age=0`` included).
MIN_CERTS_TTL = 60.0
#: A push token is about 1 KB; longer headers are refused before any other work.
MAX_AUTHORIZATION_LENGTH = 8192
#: Google's push tokens live an hour.
DEFAULT_MAX_TOKEN_AGE = 3600.0

_BASE64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_SEGMENTS = ("header", "payload", "signature")
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
        max_token_age: seconds after ``iat`` past which a token is refused, whatever its
            ``exp`` says.

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
        max_token_age: float = DEFAULT_MAX_TOKEN_AGE,
    ) -> None:
        if not audience:
            raise ConfigurationError("OIDC verification needs an audience")
        if isinstance(service_accounts, str):
            raise ConfigurationError("service_accounts must be a list of emails, not one string")
        if not service_accounts:
            raise ConfigurationError("OIDC verification needs at least one allowed service account")
        self._google = _google()
        self.audience = audience
        self.service_accounts = frozenset(service_accounts)
        self.certs_url = certs_url
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=_FETCH_TIMEOUT)
        self._clock = clock
        self._leeway = leeway
        self._certs_ttl = certs_ttl
        self._max_token_age = max_token_age
        self._lock = asyncio.Lock()
        self._keys: dict[str, RSAVerifier] = {}
        self._expires_at: float | None = None
        self._attempted_at: float | None = None
        self._last_failure: str | None = None

    async def verify(self, authorization: str | None) -> PushToken:
        """Check the raw ``Authorization`` header value and return the token's claims.

        Raises:
            AuthenticationFailed: no token, a malformed or badly signed one, or wrong claims.
            Forbidden: a valid token from a service account that is not allowed.
        """
        if authorization is not None and len(authorization) > MAX_AUTHORIZATION_LENGTH:
            raise AuthenticationFailed(
                f"the Authorization header is longer than {MAX_AUTHORIZATION_LENGTH} characters"
            )
        token = _bearer_token(authorization)
        segments = token.split(".")
        if len(segments) != 3:
            raise AuthenticationFailed(f"malformed token: {len(segments)} segments, expected 3")
        for segment, name in zip(segments, _SEGMENTS, strict=True):
            # google-auth's base64 decoding skips characters outside the alphabet: refuse them.
            if not _BASE64URL.match(segment) or len(segment) % 4 == 1:
                raise AuthenticationFailed(f"malformed token: the {name} is not base64url")
        try:
            # Parsed only: the signature is checked below, once the key is known.
            jwt = self._google.jwt
            header = jwt.decode_header(token)
            claims = jwt.decode(token, verify=False)
        except (self._google.error, ValueError, TypeError, RecursionError):
            # The library's message quotes the token: say what is wrong without it.
            raise AuthenticationFailed(
                "malformed token: the header and payload must be JSON objects in UTF-8"
            ) from None
        algorithm = header.get("alg")
        if algorithm != "RS256":
            raise AuthenticationFailed(f"token algorithm {_show(algorithm)} is not RS256")
        key_id = header.get("kid")
        if not isinstance(key_id, str) or not key_id:
            raise AuthenticationFailed("token header names no key id (kid)")

        key = await self._key(key_id)
        signed, _, signature = token.rpartition(".")
        if not key.verify(signed.encode("ascii"), _base64url(signature)):
            raise AuthenticationFailed("token signature does not verify")
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
        if now - issued_at > self._max_token_age + self._leeway:
            raise AuthenticationFailed(
                f"token issued {int(now - issued_at)} s ago, more than the "
                f"{int(self._max_token_age)} s a push token lives"
            )
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

    async def _key(self, key_id: str) -> RSAVerifier:
        if self._is_fresh() and key_id in self._keys:
            return self._keys[key_id]
        async with self._lock:
            # Decided under the lock, so requests that waited see the attempt made meanwhile.
            if self._may_fetch(key_id):
                await self._fetch()
            elif self._last_failure is not None:
                raise AuthenticationFailed(self._last_failure)
        key = self._keys.get(key_id) if self._is_fresh() else None
        if key is None:
            raise AuthenticationFailed(f"no Google certificate has key id {_show(key_id)}")
        return key

    def _may_fetch(self, key_id: str) -> bool:
        if self._attempted_at is None:
            return True
        since = self._clock() - self._attempted_at
        if self._last_failure is not None:
            return since >= FAILED_FETCH_INTERVAL
        if not self._is_fresh():
            return True
        return key_id not in self._keys and since >= MIN_REFETCH_INTERVAL

    def _is_fresh(self) -> bool:
        return self._expires_at is not None and self._clock() < self._expires_at

    async def _fetch(self) -> None:
        self._attempted_at = self._clock()
        try:
            keys, max_age = await self._download()
        except AuthenticationFailed as exc:
            self._last_failure = exc.detail
            raise
        now = self._clock()
        ttl = max_age if max_age is not None else self._certs_ttl
        self._keys = keys
        self._expires_at = now + max(ttl, MIN_CERTS_TTL)
        self._last_failure = None

    async def _download(self) -> tuple[dict[str, RSAVerifier], float | None]:
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
        keys: dict[str, RSAVerifier] = {}
        for key_id, pem in body.items():
            try:
                keys[key_id] = _rsa_verifier(pem)
            except ValueError as exc:
                # One bad entry must not make every token fail: the others still verify.
                logger.warning(
                    "skipped the token certificate of key id %s from %s: %s",
                    _show(key_id),
                    self.certs_url,
                    exc,
                )
        if not keys:
            raise failed(f"{self.certs_url} answered no usable RSA certificate")
        match = _MAX_AGE.search(response.headers.get("cache-control", ""))
        return keys, float(match.group(1)) if match else None


def _rsa_verifier(pem: object) -> RSAVerifier:
    if not isinstance(pem, str):
        raise ValueError("it is not a string")
    google = _google()
    try:
        public_key = google.x509.load_pem_x509_certificate(pem.encode()).public_key()
    except ValueError:
        raise ValueError("it is not a PEM certificate") from None
    if not isinstance(public_key, google.rsa_public_key):
        raise ValueError(f"its key is {type(public_key).__name__}, not RSA")
    verifier: RSAVerifier = google.rsa_verifier(public_key)
    return verifier


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


def _base64url(segment: str) -> bytes:
    return urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _timestamp(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthenticationFailed(f"token has no numeric {name} claim")
    return int(value)


def _show(value: object) -> str:
    """``repr`` of a value taken from a token, cut short so logs stay readable."""
    shown = repr(value)
    return shown if len(shown) <= 100 else shown[:97] + "..."
