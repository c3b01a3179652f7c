from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from homing.auth import (
    FAILED_FETCH_INTERVAL,
    GOOGLE_CERTS_URL,
    GOOGLE_ISSUERS,
    MAX_AUTHORIZATION_LENGTH,
    MIN_CERTS_TTL,
    MIN_REFETCH_INTERVAL,
    OIDCVerifier,
    PushToken,
)
from homing.errors import AuthenticationFailed, ConfigurationError, Forbidden
from homing.settings import Settings
from tests.support.clock import NOW, Clock

AUDIENCE = "https://events.example.com/events"
PUSHER = "pubsub-push@my-project.iam.gserviceaccount.com"
KID = "google-key-1"


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def certificate_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test.googleusercontent.com")])
    start = datetime(2020, 1, 1, tzinfo=UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=36500))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def google_key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64(json.dumps(value).encode())


def rs256(key: rsa.RSAPrivateKey, claims: dict[str, Any], **header: Any) -> str:
    head = b64json({"alg": "RS256", "kid": KID, "typ": "JWT", **header})
    body = b64json(claims)
    signature = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64(signature)}"


def claims(now: float = NOW, **changes: Any) -> dict[str, Any]:
    """Claims as Pub/Sub push sends them; a change to ``None`` removes the claim."""
    base: dict[str, Any] = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "azp": "108474530419230489513",
        "email": PUSHER,
        "email_verified": True,
        "sub": "108474530419230489513",
        "iat": int(now) - 60,
        "exp": int(now) + 3540,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


class CertServer:
    """Google's certificate endpoint, behind ``httpx.MockTransport``."""

    def __init__(self, certs: dict[str, str], cache_control: str | None = "max-age=300") -> None:
        self.certs = certs
        self.cache_control = cache_control
        self.requests = 0
        self.status = 200
        self.body: bytes | None = None
        self.down = False

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        assert str(request.url) == GOOGLE_CERTS_URL
        self.requests += 1
        await asyncio.sleep(0)  # let concurrent verifications interleave
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        headers = {"cache-control": self.cache_control} if self.cache_control else {}
        if self.body is not None:
            return httpx.Response(self.status, content=self.body, headers=headers)
        return httpx.Response(self.status, json=self.certs, headers=headers)


@pytest.fixture
def server(google_key: rsa.RSAPrivateKey) -> CertServer:
    return CertServer({KID: certificate_pem(google_key)})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def client(server: CertServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as client:
        yield client


@pytest.fixture
def verifier(client: httpx.AsyncClient, clock: Clock) -> OIDCVerifier:
    return OIDCVerifier(audience=AUDIENCE, service_accounts=[PUSHER], client=client, clock=clock)


async def refused(
    verifier: OIDCVerifier,
    authorization: str | None,
    error: type[AuthenticationFailed | Forbidden] = AuthenticationFailed,
) -> str:
    """Verify, expect exactly ``error``, check the token is not in it, and return its reason
    (which each caller compares with the one it expects: no ``match`` here)."""
    with pytest.raises(error) as info:
        await verifier.verify(authorization)
    assert type(info.value) is error
    token = (authorization or "").removeprefix("Bearer ")
    if len(token) >= 16:
        assert token not in str(info.value)
        signature = token.rsplit(".", 1)[-1]
        assert not signature or signature not in str(info.value)
    return info.value.detail


NOT_JSON = "the header and payload must be JSON objects in UTF-8"


def bearer(token: str) -> str:
    return f"Bearer {token}"


# -- accepted tokens ---------------------------------------------------------------------------


async def test_a_valid_token_returns_its_claims(
    verifier: OIDCVerifier, google_key: rsa.RSAPrivateKey
) -> None:
    token = await verifier.verify(bearer(rs256(google_key, claims())))

    assert token == PushToken(
        email=PUSHER,
        audience=AUDIENCE,
        issuer="https://accounts.google.com",
        subject="108474530419230489513",
        issued_at=int(NOW) - 60,
        expires_at=int(NOW) + 3540,
    )


@pytest.mark.parametrize("issuer", GOOGLE_ISSUERS)
async def test_both_issuer_spellings_are_accepted(
    verifier: OIDCVerifier, google_key: rsa.RSAPrivateKey, issuer: str
) -> None:
    token = await verifier.verify(bearer(rs256(google_key, claims(iss=issuer))))
    assert token.issuer == issuer


async def test_the_scheme_is_case_insensitive(
    verifier: OIDCVerifier, google_key: rsa.RSAPrivateKey
) -> None:
    token = await verifier.verify("bearer " + rs256(google_key, claims()))
    assert token.email == PUSHER


async def test_expiry_and_issue_time_allow_the_leeway(
    verifier: OIDCVerifier, google_key: rsa.RSAPrivateKey
) -> None:
    just_expired = claims(exp=int(NOW) - 9)
    await verifier.verify(bearer(rs256(google_key, just_expired)))
    slightly_early = claims(iat=int(NOW) + 9)
    await verifier.verify(bearer(rs256(google_key, slightly_early)))


def test_certs_url_is_the_settings_default() -> None:
    assert Settings().oidc_certs_url == GOOGLE_CERTS_URL


# -- the Authorization header and the token's shape --------------------------------------------


@pytest.mark.parametrize("authorization", [None, "", "   "])
async def test_no_header_is_refused(verifier: OIDCVerifier, authorization: str | None) -> None:
    assert await refused(verifier, authorization) == "no Authorization header"


@pytest.mark.parametrize(
    "authorization",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "eyJhbGciOi.e30.c2ln", "Bearer a b"],
)
async def test_a_header_that_is_not_bearer_is_refused(
    verifier: OIDCVerifier, authorization: str
) -> None:
    assert "not 'Bearer <token>'" in await refused(verifier, authorization)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("abc", "1 segments, expected 3"),
        ("a.b", "2 segments, expected 3"),
        ("a.b.c.d", "4 segments, expected 3"),
        ("!!!." + b64json({}) + ".c2ln", "the header is not base64url"),
        ("eyJ+YWxnIjo.e30.c2ln", "the header is not base64url"),
        ("a." + b64json({}) + ".c2ln", "the header is not base64url"),
        (b64(b"{not json") + ".e30.c2ln", NOT_JSON),
        (b64(b"\xff\xfe") + ".e30.c2ln", NOT_JSON),
        (b64json(["RS256"]) + ".e30.c2ln", NOT_JSON),
        (b64json({"alg": "RS256", "kid": KID}) + ".%%%.c2ln", "the payload is not base64url"),
        (b64json({"alg": "RS256", "kid": KID}) + "." + b64(b"{") + ".c2ln", NOT_JSON),
        (b64json({"alg": "RS256", "kid": KID}) + "." + b64json(7) + ".c2ln", NOT_JSON),
        ("eyJhb.e30.c2ln", "the header is not base64url"),
        (b64json({"alg": "RS256", "kid": KID}) + ".e30.c2l*", "the signature is not base64url"),
    ],
)
async def test_a_malformed_token_is_refused(
    verifier: OIDCVerifier, server: CertServer, token: str, reason: str
) -> None:
    detail = await refused(verifier, bearer(token))
    assert detail.startswith("malformed token")
    assert reason in detail
    assert server.requests == 0


# -- algorithm and signature -------------------------------------------------------------------


async def test_alg_none_is_refused(verifier: OIDCVerifier, server: CertServer) -> None:
    token = b64json({"alg": "none", "kid": KID}) + "." + b64json(claims()) + "."
    assert await refused(verifier, bearer(token)) == "token algorithm 'none' is not RS256"
    assert server.requests == 0


async def test_hs256_signed_with_the_public_certificate_is_refused(
    verifier: OIDCVerifier, server: CertServer
) -> None:
    head = b64json({"alg": "HS256", "kid": KID, "typ": "JWT"})
    body = b64json(claims())
    secret = server.certs[KID].encode()
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    token = f"{head}.{body}.{b64(mac)}"

    assert await refused(verifier, bearer(token)) == "token algorithm 'HS256' is not RS256"
    assert server.requests == 0


@pytest.mark.parametrize("header", [{"alg": "RS512"}, {"alg": "rs256"}, {"alg": None}, {}])
async def test_any_other_algorithm_is_refused(
    verifier: OIDCVerifier, google_key: rsa.RSAPrivateKey, header: dict[str, Any]
) -> None:
    head = b64json({"kid": KID, **header})
    body = b64json(claims())
    signature = google_key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    detail = await refused(verifier, bearer(f"{head}.{body}.{b64(signature)}"))
    assert detail == f"token algorithm {header.get('alg')!r} is not RS256"


@pytest.mark.parametrize("kid", [None, "", 7])
async def test_a_token_without_a_key_id_is_refused(
    verifier: OIDCVerifier, google_key: rsa.RSAPrivateKey, kid: object
) -> None:
    token = rs256(google_key, claims(), kid=kid)
    assert await refused(verifier, bearer(token)) == "token header names no key id (kid)"


async def test_a_token_signed_by_another_key_is_refused(
    verifier: OIDCVerifier, other_key: rsa.RSAPrivateKey
) -> None:
    token = rs256(other_key, claims())
    assert await refused(verifier, bearer(token)) == "token signature does not verify"


async def test_a_token_with_changed_claims_is_refused(
    verifier: OIDCVerifier, google_key: rsa.RSAPrivateKey
) -> None:
    head, _, signature = rs256(google_key, claims()).split(".")
    forged = f"{head}.{b64json(claims(email='attacker@evil.iam.gserviceaccount.com'))}.{signature}"
    assert await refused(verifier, bearer(forged)) == "token signature does not verify"


async def test_an_empty_signature_is_refused(
    verifier: OIDCVerifier, google_key: rsa.RSAPrivateKey
) -> None:
    head, body, _ = rs256(google_key, claims()).split(".")
    assert await refused(verifier, bearer(f"{head}.{body}.")) == "token signature does not verify"


# -- claims ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exp": int(NOW) - 11}, "token expired 11 s ago"),
        ({"exp": int(NOW) - 7200, "iat": int(NOW) - 10800}, "token expired 7200 s ago"),
        ({"exp": None}, "token has no numeric exp claim"),
        ({"exp": str(int(NOW) + 60)}, "token has no numeric exp claim"),
        ({"exp": True}, "token has no numeric exp claim"),
        ({"iat": int(NOW) + 3600}, "token issued 3600 s in the future"),
        ({"iat": None}, "token has no numeric iat claim"),
        ({"aud": "https://other.example.com/events"}, "audience 'https://other.example.com"),
        ({"aud": [AUDIENCE]}, f"token audience [{AUDIENCE!r}] is not {AUDIENCE!r}"),
        ({"aud": None}, f"token audience None is not {AUDIENCE!r}"),
        ({"iss": "https://evil.example.com"}, "token issuer 'https://evil.example.com' is not"),
        ({"iss": "http://accounts.google.com"}, "token issuer 'http://accounts.google.com'"),
        ({"iss": None}, "token issuer None is not Google"),
        ({"sub": None}, "token has no sub claim"),
    ],
)
async def test_wrong_claims_are_refused(
    verifier: OIDCVerifier,
    google_key: rsa.RSAPrivateKey,
    changes: dict[str, Any],
    reason: str,
) -> None:
    token = rs256(google_key, claims(**changes))
    assert reason in await refused(verifier, bearer(token))


async def test_non_finite_times_are_refused(
    verifier: OIDCVerifier, google_key: rsa.RSAPrivateKey
) -> None:
    head = b64json({"alg": "RS256", "kid": KID})
    body = b64(json.dumps(claims(exp=float("inf"))).encode())
    signature = google_key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    detail = await refused(verifier, bearer(f"{head}.{body}.{b64(signature)}"))
    assert detail == "token has no numeric exp claim"


async def test_a_token_for_another_audience_is_not_accepted_here(
    client: httpx.AsyncClient, clock: Clock, google_key: rsa.RSAPrivateKey
) -> None:
    other_audience = "https://billing.example.com/events"
    other = OIDCVerifier(
        audience=other_audience, service_accounts=[PUSHER], client=client, clock=clock
    )
    here = OIDCVerifier(audience=AUDIENCE, service_accounts=[PUSHER], client=client, clock=clock)
    token = bearer(rs256(google_key, claims(aud=other_audience)))

    assert (await other.verify(token)).audience == other_audience
    assert f"is not {AUDIENCE!r}" in await refused(here, token)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (
            {"email": "someone@other-project.iam.gserviceaccount.com"},
            "service account 'someone@other-project.iam.gserviceaccount.com' may not push here",
        ),
        ({"email": PUSHER.upper()}, "may not push here"),
        ({"email": None}, "token has no email claim"),
        ({"email": ""}, "token has no email claim"),
        ({"email_verified": False}, f"the email of service account {PUSHER!r} is not verified"),
        ({"email_verified": None}, "is not verified"),
        ({"email_verified": "true"}, "is not verified"),
    ],
)
async def test_a_sender_that_is_not_allowed_is_forbidden(
    verifier: OIDCVerifier,
    google_key: rsa.RSAPrivateKey,
    changes: dict[str, Any],
    reason: str,
) -> None:
    token = rs256(google_key, claims(**changes))
    assert reason in await refused(verifier, bearer(token), Forbidden)


async def test_several_service_accounts_may_be_allowed(
    client: httpx.AsyncClient, clock: Clock, google_key: rsa.RSAPrivateKey
) -> None:
    second = "second-push@my-project.iam.gserviceaccount.com"
    verifier = OIDCVerifier(
        audience=AUDIENCE, service_accounts=[PUSHER, second], client=client, clock=clock
    )
    for email in (PUSHER, second):
        token = await verifier.verify(bearer(rs256(google_key, claims(email=email))))
        assert token.email == email


# -- the certificate cache ---------------------------------------------------------------------


async def test_certs_are_fetched_once_for_many_verifications(
    verifier: OIDCVerifier, server: CertServer, google_key: rsa.RSAPrivateKey
) -> None:
    token = bearer(rs256(google_key, claims()))
    for _ in range(5):
        await verifier.verify(token)
    await asyncio.gather(*(verifier.verify(token) for _ in range(20)))
    assert server.requests == 1


async def test_concurrent_first_verifications_share_one_fetch(
    verifier: OIDCVerifier, server: CertServer, google_key: rsa.RSAPrivateKey
) -> None:
    token = bearer(rs256(google_key, claims()))
    results = await asyncio.gather(*(verifier.verify(token) for _ in range(20)))
    assert {result.email for result in results} == {PUSHER}
    assert server.requests == 1


async def test_certs_are_refetched_after_max_age(
    verifier: OIDCVerifier, server: CertServer, clock: Clock, google_key: rsa.RSAPrivateKey
) -> None:
    server.cache_control = "public, max-age=300, must-revalidate, no-transform"
    await verifier.verify(bearer(rs256(google_key, claims(clock.now))))

    clock.now += 299
    await verifier.verify(bearer(rs256(google_key, claims(clock.now))))
    assert server.requests == 1

    clock.now += 2
    await verifier.verify(bearer(rs256(google_key, claims(clock.now))))
    assert server.requests == 2


async def test_without_max_age_certs_live_for_certs_ttl(
    client: httpx.AsyncClient, server: CertServer, clock: Clock, google_key: rsa.RSAPrivateKey
) -> None:
    server.cache_control = None
    verifier = OIDCVerifier(
        audience=AUDIENCE, service_accounts=[PUSHER], client=client, clock=clock, certs_ttl=120
    )
    await verifier.verify(bearer(rs256(google_key, claims(clock.now))))
    clock.now += 119
    await verifier.verify(bearer(rs256(google_key, claims(clock.now))))
    assert server.requests == 1
    clock.now += 2
    await verifier.verify(bearer(rs256(google_key, claims(clock.now))))
    assert server.requests == 2


async def test_a_rotated_key_is_picked_up_with_one_refetch(
    verifier: OIDCVerifier,
    server: CertServer,
    clock: Clock,
    google_key: rsa.RSAPrivateKey,
    other_key: rsa.RSAPrivateKey,
) -> None:
    await verifier.verify(bearer(rs256(google_key, claims())))
    server.certs["google-key-2"] = certificate_pem(other_key)
    clock.now += MIN_REFETCH_INTERVAL

    rotated = bearer(rs256(other_key, claims(clock.now), kid="google-key-2"))
    assert (await verifier.verify(rotated)).email == PUSHER
    assert (await verifier.verify(rotated)).email == PUSHER
    assert server.requests == 2


async def test_an_unknown_key_id_refetches_once_then_fails(
    verifier: OIDCVerifier, server: CertServer, clock: Clock, google_key: rsa.RSAPrivateKey
) -> None:
    await verifier.verify(bearer(rs256(google_key, claims())))
    clock.now += MIN_REFETCH_INTERVAL
    unknown = bearer(rs256(google_key, claims(clock.now), kid="no-such-key"))

    assert await refused(verifier, unknown) == "no Google certificate has key id 'no-such-key'"
    assert server.requests == 2
    # Within the interval, junk key ids do not reach Google again.
    await asyncio.gather(*(refused(verifier, unknown) for _ in range(10)))
    assert server.requests == 2

    clock.now += MIN_REFETCH_INTERVAL
    assert "no-such-key" in await refused(verifier, unknown)
    assert server.requests == 3


async def test_an_unknown_key_id_on_the_first_fetch_fails_without_a_second(
    verifier: OIDCVerifier, server: CertServer, google_key: rsa.RSAPrivateKey
) -> None:
    unknown = bearer(rs256(google_key, claims(), kid="no-such-key"))
    assert "no Google certificate has key id" in await refused(verifier, unknown)
    assert server.requests == 1


# -- certificate fetch failures ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (500, None, f"{GOOGLE_CERTS_URL} answered 500"),
        (404, b"not found", f"{GOOGLE_CERTS_URL} answered 404"),
        (200, b"<html>", "did not answer JSON"),
        (200, b"[]", "did not answer a JSON object of certificates"),
        (200, b"{}", "did not answer a JSON object of certificates"),
        (200, json.dumps({KID: 7}).encode(), "answered no usable RSA certificate"),
        (200, json.dumps({KID: "junk"}).encode(), "answered no usable RSA certificate"),
    ],
)
async def test_a_failed_fetch_is_an_authentication_failure(
    verifier: OIDCVerifier,
    server: CertServer,
    google_key: rsa.RSAPrivateKey,
    status: int,
    body: bytes | None,
    reason: str,
) -> None:
    server.status, server.body = status, body
    detail = await refused(verifier, bearer(rs256(google_key, claims())))
    assert detail.startswith("could not fetch the token certificates: ")
    assert reason in detail


async def test_an_unreachable_certs_endpoint_is_an_authentication_failure(
    verifier: OIDCVerifier, server: CertServer, clock: Clock, google_key: rsa.RSAPrivateKey
) -> None:
    server.down = True
    token = bearer(rs256(google_key, claims()))
    detail = await refused(verifier, token)
    assert detail == "could not fetch the token certificates: ConnectError: connection refused"

    server.down = False
    clock.now += FAILED_FETCH_INTERVAL
    assert (await verifier.verify(token)).email == PUSHER


@pytest.mark.parametrize(
    "entry",
    [pytest.param("ec", id="an EC certificate"), "junk", 7, None],
)
async def test_an_unusable_certificate_is_skipped_and_logged(
    verifier: OIDCVerifier,
    server: CertServer,
    google_key: rsa.RSAPrivateKey,
    caplog: pytest.LogCaptureFixture,
    entry: object,
) -> None:
    if entry == "ec":
        entry = certificate_pem(ec.generate_private_key(ec.SECP256R1()))
    server.certs["odd-one"] = entry  # type: ignore[assignment]
    assert (await verifier.verify(bearer(rs256(google_key, claims())))).email == PUSHER
    [record] = [r for r in caplog.records if r.name == "homing.auth"]
    assert "skipped the token certificate of key id 'odd-one'" in record.getMessage()


async def test_concurrent_requests_share_a_failed_fetch(
    verifier: OIDCVerifier, server: CertServer, google_key: rsa.RSAPrivateKey
) -> None:
    server.status = 503
    token = bearer(rs256(google_key, claims()))
    details = await asyncio.gather(*(refused(verifier, token) for _ in range(10)))
    assert set(details) == {
        f"could not fetch the token certificates: {GOOGLE_CERTS_URL} answered 503"
    }
    assert server.requests == 1


async def test_stale_certs_are_not_used_when_the_refetch_fails(
    verifier: OIDCVerifier, server: CertServer, clock: Clock, google_key: rsa.RSAPrivateKey
) -> None:
    await verifier.verify(bearer(rs256(google_key, claims())))
    clock.now += 301
    server.status = 500
    detail = await refused(verifier, bearer(rs256(google_key, claims(clock.now))))
    assert detail.startswith("could not fetch the token certificates")


# -- the token stays secret --------------------------------------------------------------------


async def test_the_token_never_appears_in_errors(
    verifier: OIDCVerifier,
    client: httpx.AsyncClient,
    server: CertServer,
    google_key: rsa.RSAPrivateKey,
    other_key: rsa.RSAPrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusals = {
        rs256(other_key, claims()): "token signature does not verify",
        rs256(google_key, claims(aud="https://elsewhere.example.com")): "token audience ",
        rs256(google_key, claims(email="x@y.iam.gserviceaccount.com")): "may not push here",
        rs256(google_key, claims(), kid="unknown"): "no Google certificate has key id",
        rs256(google_key, claims(), alg="HS256"): "token algorithm 'HS256' is not RS256",
    }
    tokens = list(refusals)
    for token, reason in refusals.items():
        with pytest.raises((AuthenticationFailed, Forbidden), match=reason) as info:
            await verifier.verify(bearer(token))
        for part in (token, *token.split(".")):
            assert part not in str(info.value)
            assert part not in repr(info.value)
    server.status = 500
    fresh = OIDCVerifier(audience=AUDIENCE, service_accounts=[PUSHER], client=client)
    with pytest.raises(
        AuthenticationFailed, match="could not fetch the token certificates"
    ) as info:
        await fresh.verify(bearer(tokens[0]))
    assert tokens[0] not in str(info.value)
    assert all(tokens[0] not in record.getMessage() for record in caplog.records)


# -- configuration and lifetime ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("audience", "accounts", "reason"),
    [
        (AUDIENCE, [], "at least one allowed service account"),
        (AUDIENCE, (), "at least one allowed service account"),
        (AUDIENCE, PUSHER, "a list of emails, not one string"),
        ("", [PUSHER], "needs an audience"),
    ],
)
async def test_bad_configuration_is_refused(
    audience: str, accounts: list[str] | str, reason: str
) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        OIDCVerifier(audience=audience, service_accounts=accounts)


async def test_aclose_leaves_a_given_client_open(
    verifier: OIDCVerifier, client: httpx.AsyncClient
) -> None:
    await verifier.aclose()
    assert not client.is_closed


# -- faults found by the differential run --------------------------------------------------------


async def test_junk_key_ids_while_the_endpoint_fails_fetch_at_most_once_per_interval(
    verifier: OIDCVerifier, server: CertServer, clock: Clock, google_key: rsa.RSAPrivateKey
) -> None:
    await verifier.verify(bearer(rs256(google_key, claims())))
    server.status = 503
    clock.now += MIN_REFETCH_INTERVAL
    for n in range(200):  # no key needed: the kid is looked up before the signature
        await refused(verifier, bearer(rs256(google_key, claims(clock.now), kid=f"junk-{n}")))
    assert server.requests == 2


async def test_a_cold_start_with_the_endpoint_down_does_not_fetch_per_request(
    verifier: OIDCVerifier, server: CertServer, clock: Clock, google_key: rsa.RSAPrivateKey
) -> None:
    server.down = True
    token = bearer(rs256(google_key, claims()))
    details = {await refused(verifier, token) for _ in range(50)}
    assert details == {"could not fetch the token certificates: ConnectError: connection refused"}
    assert server.requests == 1
    clock.now += FAILED_FETCH_INTERVAL
    await refused(verifier, token)
    assert server.requests == 2


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda text: text.encode("utf-16"), id="UTF-16 with a byte-order mark"),
        pytest.param(lambda text: text.encode("utf-16-le"), id="UTF-16 without one"),
        pytest.param(lambda text: b"\xef\xbb\xbf" + text.encode(), id="UTF-8 with a BOM"),
        pytest.param(
            lambda text: text.replace("}", ', "x": "\udc80"}').encode("utf-8", "surrogatepass"),
            id="a lone surrogate",
        ),
    ],
)
@pytest.mark.parametrize("segment", ["header", "payload"])
async def test_json_segments_must_be_utf8(
    verifier: OIDCVerifier,
    google_key: rsa.RSAPrivateKey,
    encode: Callable[[str], bytes],
    segment: str,
) -> None:
    header = {"alg": "RS256", "kid": KID, "typ": "JWT"}
    parts = [json.dumps(header), json.dumps(claims())]
    index = 0 if segment == "header" else 1
    raw = [part.encode() for part in parts]
    raw[index] = encode(parts[index])
    signed = f"{b64(raw[0])}.{b64(raw[1])}"
    signature = google_key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    assert await refused(verifier, bearer(f"{signed}.{b64(signature)}")) == (
        "malformed token: " + NOT_JSON
    )


async def test_a_huge_authorization_header_is_refused_before_any_work(
    verifier: OIDCVerifier, server: CertServer
) -> None:
    detail = await refused(verifier, "Bearer " + "a" * 1_000_000)
    assert detail == (
        f"the Authorization header is longer than {MAX_AUTHORIZATION_LENGTH} characters"
    )
    assert server.requests == 0


async def test_a_token_older_than_an_hour_is_refused_whatever_its_exp(
    verifier: OIDCVerifier, google_key: rsa.RSAPrivateKey
) -> None:
    old = claims(iat=int(NOW) - 7200, exp=int(NOW) + 86400)
    detail = await refused(verifier, bearer(rs256(google_key, old)))
    assert detail == "token issued 7200 s ago, more than the 3600 s a push token lives"


async def test_max_age_zero_keeps_the_certificates_for_the_floor(
    verifier: OIDCVerifier, server: CertServer, clock: Clock, google_key: rsa.RSAPrivateKey
) -> None:
    server.cache_control = "max-age=0"
    for _ in range(5):
        await verifier.verify(bearer(rs256(google_key, claims(clock.now))))
    assert server.requests == 1
    clock.now += MIN_CERTS_TTL + 1
    await verifier.verify(bearer(rs256(google_key, claims(clock.now))))
    assert server.requests == 2


def test_google_auth_is_imported_by_the_first_verifier_not_with_the_module() -> None:
    # A service without OIDC never pays for google-auth and cryptography at start-up.
    script = (
        "import sys\n"
        "import homing.auth, homing.outbox\n"
        "before = [m for m in ('google.auth.jwt', 'cryptography.x509') if m in sys.modules]\n"
        "homing.auth.OIDCVerifier(audience='a', service_accounts=['s@x.iam.gserviceaccount.com'])\n"
        "after = [m for m in ('google.auth.jwt', 'cryptography.x509') if m in sys.modules]\n"
        "print(before, after)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[] ['google.auth.jwt', 'cryptography.x509']"
