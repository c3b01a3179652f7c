"""The push endpoint with Google's push OIDC token (auth="oidc" and "both")."""

from __future__ import annotations

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette

from homing import ConfigurationError, Homing, KeyRing, Signer, build_push
from homing.auth import OIDCVerifier
from homing.starlette import push_route
from homing.testing import push_body
from tests.conftest import OrderPlaced, Recorder
from tests.support.clock import NOW
from tests.test_auth import (
    claims,
    rs256,
)

ORDER = OrderPlaced(order_id=1, total_cents=2)


def _app(keys: KeyRing, verifier: OIDCVerifier, recorder: Recorder, auth: str) -> Homing:
    homing = Homing(signer=Signer(keys), oidc=verifier, auth=auth)  # type: ignore[arg-type]
    homing.events.register("order.placed", OrderPlaced)
    homing.handler(OrderPlaced)(recorder)
    return homing


async def _post(homing: Homing, body: bytes, token: str | None) -> httpx.Response:
    app = Starlette(routes=[push_route(homing, "/events")])
    headers = {"authorization": f"Bearer {token}"} if token else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.post("/events", content=body, headers=headers)


async def test_both_accepts_a_valid_token_and_signature(
    keys: KeyRing, verifier: OIDCVerifier, recorder: Recorder, google_key: rsa.RSAPrivateKey
) -> None:
    homing = _app(keys, verifier, recorder, "both")
    response = await _post(homing, push_body(homing, ORDER), rs256(google_key, claims()))
    assert response.status_code == 204
    assert len(recorder.seen) == 1


@pytest.mark.parametrize(
    ("token_claims", "status", "reason"),
    [
        (None, 401, "Authorization"),
        (claims(aud="https://elsewhere.example.com/events"), 401, "audience"),
        (claims(email="intruder@evil.iam.gserviceaccount.com"), 403, "may not push here"),
        (claims(email_verified=False), 403, "email"),
        (claims(exp=int(NOW) - 3600), 401, "expired"),
    ],
)
async def test_both_refuses_a_bad_token_even_with_a_good_signature(
    keys: KeyRing,
    verifier: OIDCVerifier,
    recorder: Recorder,
    google_key: rsa.RSAPrivateKey,
    token_claims: dict[str, object] | None,
    status: int,
    reason: str,
) -> None:
    homing = _app(keys, verifier, recorder, "both")
    token = rs256(google_key, token_claims) if token_claims is not None else None
    response = await _post(homing, push_body(homing, ORDER, event_id="e-1"), token)
    assert response.status_code == status
    assert reason.lower() in response.json()["detail"].lower()
    assert recorder.seen == []
    assert token is None or token not in response.text


async def test_both_refuses_a_good_token_with_a_bad_signature(
    keys: KeyRing, verifier: OIDCVerifier, recorder: Recorder, google_key: rsa.RSAPrivateKey
) -> None:
    homing = _app(keys, verifier, recorder, "both")
    data = orjson.dumps(ORDER.model_dump())
    forged = build_push(data, {"event-type": "order.placed"}, message_id="m", subscription="s")
    response = await _post(homing, forged, rs256(google_key, claims()))
    assert response.status_code == 401
    assert recorder.seen == []


async def test_oidc_alone_trusts_the_token(
    keys: KeyRing, verifier: OIDCVerifier, recorder: Recorder, google_key: rsa.RSAPrivateKey
) -> None:
    homing = _app(keys, verifier, recorder, "oidc")
    data = orjson.dumps(ORDER.model_dump())
    unsigned = build_push(data, {"event-type": "order.placed"}, message_id="m7", subscription="s")
    assert (await _post(homing, unsigned, None)).status_code == 401
    assert (await _post(homing, unsigned, rs256(google_key, claims()))).status_code == 204
    [(_, delivery)] = recorder.seen
    assert (delivery.scheme, delivery.event_id) == ("unsigned", "m7")


def test_modes_need_their_verifiers(keys: KeyRing) -> None:
    with pytest.raises(ConfigurationError, match="OIDC verifier"):
        Homing(signer=Signer(keys), auth="both")
    with pytest.raises(ConfigurationError, match="needs a signer"):
        Homing(signer=None, auth="hmac")
    with pytest.raises(ConfigurationError, match="auth must be"):
        Homing(signer=Signer(keys), auth="sometimes")  # type: ignore[arg-type]
