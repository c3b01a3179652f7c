"""homing's OIDC verifier against google-auth's ``verify_oauth2_token``, token by token.

Over a matrix of valid, forged and malformed tokens, homing accepts exactly the tokens google-auth
accepts, less those that break one of homing's own rules (named per case: the sender, a verified
e-mail, ``sub``, RS256 with a ``kid``, strict base64url, finite times, the token's age). Both run
on the real clock against the same certificates; google-auth's are served through its own
transport seam (a ``google.auth.transport.Request``), homing's through ``httpx.MockTransport``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from google.auth import transport
from google.oauth2 import id_token

from homing.auth import OIDCVerifier
from homing.errors import AuthenticationFailed, Forbidden
from tests.test_auth import AUDIENCE, KID, PUSHER, certificate_pem, new_rsa_key

LEEWAY = 10


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: object) -> str:
    return b64(json.dumps(value).encode())


@dataclass(frozen=True)
class Keys:
    google: rsa.RSAPrivateKey
    other: rsa.RSAPrivateKey
    certs: dict[str, str]


@pytest.fixture(scope="module")
def keys() -> Keys:
    google, other = new_rsa_key(), new_rsa_key()
    return Keys(
        google, other, {KID: certificate_pem(google), "google-key-2": certificate_pem(other)}
    )


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "azp": "108474530419230489513",
        "email": PUSHER,
        "email_verified": True,
        "sub": "108474530419230489513",
        "iat": now - 60,
        "exp": now + 3540,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: rsa.RSAPrivateKey, signed: str) -> str:
    return b64(key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256()))


def token(
    keys: Keys,
    payload: dict[str, Any] | None = None,
    *,
    header: dict[str, Any] | None = None,
    raw_header: bytes | None = None,
    raw_payload: bytes | None = None,
    key: str = "google",
) -> str:
    head = (
        b64(raw_header)
        if raw_header is not None
        else segment(header if header is not None else {"alg": "RS256", "kid": KID, "typ": "JWT"})
    )
    body = b64(raw_payload) if raw_payload is not None else segment(payload or claims())
    signed = f"{head}.{body}"
    return f"{signed}.{sign(keys.google if key == 'google' else keys.other, signed)}"


def tamper(text: str, make: Callable[[list[str]], None]) -> str:
    parts = text.split(".")
    make(parts)
    return ".".join(parts)


def _flip_last(parts: list[str]) -> None:
    parts[2] = parts[2][:-2] + ("A" if parts[2][-2] != "A" else "B") + parts[2][-1]


def _hs256(keys: Keys) -> str:
    head = segment({"alg": "HS256", "kid": KID, "typ": "JWT"})
    body = segment(claims())
    mac = hmac.new(keys.certs[KID].encode(), f"{head}.{body}".encode(), hashlib.sha256)
    return f"{head}.{body}.{b64(mac.digest())}"


# (case id, token maker, the homing rule that refuses it beyond google-auth's, if any)
Case = tuple[str, Callable[[Keys], str], str | None]

CASES: list[Case] = [
    ("valid", lambda k: token(k), None),
    ("valid, short issuer", lambda k: token(k, claims(iss="accounts.google.com")), None),
    (
        "valid, extra header fields",
        lambda k: token(k, header={"alg": "RS256", "kid": KID, "x": 1}),
        None,
    ),
    (
        "valid, rotated key",
        lambda k: token(k, header={"alg": "RS256", "kid": "google-key-2"}, key="other"),
        None,
    ),
    # claims
    ("other issuer", lambda k: token(k, claims(iss="https://evil.example.com")), None),
    ("no issuer", lambda k: token(k, claims(iss=None)), None),
    ("other audience", lambda k: token(k, claims(aud="https://elsewhere.example.com")), None),
    ("no audience", lambda k: token(k, claims(aud=None)), None),
    ("audience list", lambda k: token(k, claims(aud=[AUDIENCE])), None),
    ("expired", lambda k: token(k, claims(exp=int(time.time()) - 120)), None),
    ("no exp", lambda k: token(k, claims(exp=None)), None),
    ("issued in the future", lambda k: token(k, claims(iat=int(time.time()) + 600)), None),
    ("no iat", lambda k: token(k, claims(iat=None)), None),
    ("exp as text", lambda k: token(k, claims(exp="9999999999")), None),
    (
        "exp NaN",
        lambda k: token(k, raw_payload=json.dumps(claims(exp=float("nan"))).encode()),
        "finite times",
    ),
    (
        "iat -Infinity",
        lambda k: token(k, raw_payload=json.dumps(claims(iat=float("-inf"))).encode()),
        "finite times",
    ),
    (
        "issued two hours ago, exp ahead",
        lambda k: token(k, claims(iat=int(time.time()) - 7200)),
        "token age",
    ),
    (
        "another sender",
        lambda k: token(k, claims(email="attacker@evil.iam.gserviceaccount.com")),
        "sender",
    ),
    ("no email", lambda k: token(k, claims(email=None)), "sender"),
    ("email not verified", lambda k: token(k, claims(email_verified=False)), "verified e-mail"),
    (
        "email_verified as text",
        lambda k: token(k, claims(email_verified="true")),
        "verified e-mail",
    ),
    ("no sub", lambda k: token(k, claims(sub=None)), "sub"),
    # header and algorithm
    (
        "alg none",
        lambda k: segment({"alg": "none", "kid": KID}) + "." + segment(claims()) + ".",
        None,
    ),
    ("alg HS256 keyed with the certificate", _hs256, None),
    ("alg RS512", lambda k: token(k, header={"alg": "RS512", "kid": KID}), None),
    ("alg ES256", lambda k: token(k, header={"alg": "ES256", "kid": KID}), None),
    ("alg rs256", lambda k: token(k, header={"alg": "rs256", "kid": KID}), None),
    ("no alg", lambda k: token(k, header={"kid": KID}), None),
    ("unknown kid", lambda k: token(k, header={"alg": "RS256", "kid": "no-such-key"}), None),
    ("kid as a number", lambda k: token(k, header={"alg": "RS256", "kid": 7}), None),
    ("no kid", lambda k: token(k, header={"alg": "RS256"}), "RS256 with a kid"),
    ("header is an array", lambda k: token(k, raw_header=b'["RS256"]'), None),
    # signature
    ("signed by another key", lambda k: token(k, key="other"), None),
    (
        "claims changed after signing",
        lambda k: tamper(token(k), lambda p: p.__setitem__(1, segment(claims(email="x@y.z")))),
        None,
    ),
    ("signature bit flipped", lambda k: tamper(token(k), _flip_last), None),
    ("empty signature", lambda k: tamper(token(k), lambda p: p.__setitem__(2, "")), None),
    (
        "truncated signature",
        lambda k: tamper(token(k), lambda p: p.__setitem__(2, p[2][:100])),
        None,
    ),
    (
        "signature with stray characters",
        lambda k: tamper(token(k), lambda p: p.__setitem__(2, p[2][:10] + "!!!!" + p[2][10:])),
        "strict base64url",
    ),
    (
        "signature padded",
        lambda k: tamper(token(k), lambda p: p.__setitem__(2, p[2] + "=" * (-len(p[2]) % 4))),
        "strict base64url",
    ),
    # structure and encoding
    ("two segments", lambda k: token(k).rsplit(".", 1)[0], None),
    ("four segments", lambda k: token(k) + ".e30", None),
    ("empty", lambda k: "..", None),
    ("header not JSON", lambda k: token(k, raw_header=b"{not json"), None),
    ("payload not JSON", lambda k: token(k, raw_payload=b"{"), None),
    ("payload an array", lambda k: token(k, raw_payload=b"[1]"), None),
    ("payload UTF-16", lambda k: token(k, raw_payload=json.dumps(claims()).encode("utf-16")), None),
    (
        "payload with a BOM",
        lambda k: token(k, raw_payload=b"\xef\xbb\xbf" + json.dumps(claims()).encode()),
        None,
    ),
    (
        "payload with a lone surrogate",
        lambda k: token(
            k,
            raw_payload=json.dumps(claims())
            .replace("}", ', "x": "\udc80"}')
            .encode("utf-8", "surrogatepass"),
        ),
        None,
    ),
    (
        "header UTF-16",
        lambda k: token(k, raw_header=json.dumps({"alg": "RS256", "kid": KID}).encode("utf-16-le")),
        None,
    ),
    (
        "payload deeply nested",
        lambda k: token(k, raw_payload=b'{"a":' * 3000 + b"1" + b"}" * 3000),
        None,
    ),
]


class GoogleRequest(transport.Request):
    """google-auth's transport seam, answering with the certificates."""

    def __init__(self, certs: dict[str, str]) -> None:
        self.certs = certs

    def __call__(
        self,
        url: Any,
        method: Any = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: Any = None,
        **kwargs: Any,
    ) -> Any:
        return _Response(json.dumps(self.certs).encode())


class _Response(transport.Response):
    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def status(self) -> int:
        return 200

    @property
    def headers(self) -> dict[str, str]:
        return {"content-type": "application/json"}

    @property
    def data(self) -> bytes:
        return self._data


@pytest.fixture
async def verifier(keys: Keys) -> AsyncIterator[OIDCVerifier]:
    async def certs(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=keys.certs, headers={"cache-control": "max-age=300"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(certs)) as client:
        yield OIDCVerifier(
            audience=AUDIENCE, service_accounts=[PUSHER], client=client, leeway=LEEWAY
        )


def google_accepts(keys: Keys, jwt: str) -> bool:
    try:
        id_token.verify_oauth2_token(  # type: ignore[no-untyped-call]
            jwt, GoogleRequest(keys.certs), audience=AUDIENCE, clock_skew_in_seconds=LEEWAY
        )
    except Exception:  # anything it raises is a refusal (it raises several kinds)
        return False
    return True


async def homing_accepts(verifier: OIDCVerifier, jwt: str) -> bool:
    try:
        await verifier.verify(f"Bearer {jwt}")
    except (AuthenticationFailed, Forbidden):
        return False
    return True


def test_the_matrix_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "make", "homing_rule"), CASES, ids=[c[0] for c in CASES])
async def test_homing_decides_as_google_auth_plus_its_own_rules(
    verifier: OIDCVerifier,
    keys: Keys,
    name: str,
    make: Callable[[Keys], str],
    homing_rule: str | None,
) -> None:
    jwt = make(keys)
    google = google_accepts(keys, jwt)
    homing = await homing_accepts(verifier, jwt)
    assert homing == (google and homing_rule is None), (name, google, homing)
    if homing_rule is not None:
        # The case is in the matrix because google-auth lets it through.
        assert google, f"google-auth refuses {name!r} by itself"
