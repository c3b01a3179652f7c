"""Push tokens: what the broker signs passes homing's production verifier and google-auth's."""

from __future__ import annotations

import asyncio

import google.auth.transport.requests
import httpx
import pytest
import requests
from google.oauth2 import id_token
from google.pubsub_v1 import types as pubsub

from homing.auth import OIDCVerifier
from homing.broker import Broker
from homing.broker.oidc import TokenIssuer, new_private_key
from homing.broker.web import create_app
from homing.errors import AuthenticationFailed, Forbidden
from tests.broker.conftest import ENDPOINT, Receiver, subscription

ACCOUNT = "push@homing-local.iam.gserviceaccount.com"


def _verifier(broker: Broker, audience: str = ENDPOINT) -> OIDCVerifier:
    web = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(broker)))
    return OIDCVerifier(
        audience=audience,
        service_accounts=[ACCOUNT],
        certs_url="http://127.0.0.1:8086/certs",
        client=web,
    )


async def test_each_push_carries_a_token_the_production_verifier_accepts(
    broker: Broker, topic: str, receiver: Receiver
) -> None:
    await broker.create_subscription(
        subscription(oidc_token=pubsub.PushConfig.OidcToken(service_account_email=ACCOUNT))
    )
    await broker.publish(topic, [(b"x", {}, ""), (b"y", {}, "")])
    requests_ = await receiver.wait_for(2)
    verifier = _verifier(broker)
    try:
        for request in requests_:
            token = await verifier.verify(request.headers["authorization"])
            assert token.email == ACCOUNT
            assert token.audience == ENDPOINT  # the audience defaults to the endpoint
            assert token.issuer == "https://accounts.google.com"
    finally:
        await verifier._client.aclose()


async def test_a_signed_token_is_reused_for_the_next_pushes(
    broker: Broker, topic: str, receiver: Receiver
) -> None:
    await broker.create_subscription(
        subscription(oidc_token=pubsub.PushConfig.OidcToken(service_account_email=ACCOUNT))
    )
    await broker.publish(topic, [(b"x", {}, ""), (b"y", {}, ""), (b"z", {}, "")])
    requests_ = await receiver.wait_for(3)
    assert len({request.headers["authorization"] for request in requests_}) == 1


async def test_the_configured_audience_is_used_and_others_refuse_it(
    broker: Broker, topic: str, receiver: Receiver
) -> None:
    await broker.create_subscription(
        subscription(
            oidc_token=pubsub.PushConfig.OidcToken(
                service_account_email=ACCOUNT, audience="https://svc.example/events"
            )
        )
    )
    await broker.publish(topic, [(b"x", {}, "")])
    [request] = await receiver.wait_for(1)
    header = request.headers["authorization"]
    right, wrong = _verifier(broker, "https://svc.example/events"), _verifier(broker)
    try:
        assert (await right.verify(header)).audience == "https://svc.example/events"
        with pytest.raises(AuthenticationFailed, match="audience"):
            await wrong.verify(header)
    finally:
        await right._client.aclose()
        await wrong._client.aclose()


async def test_another_brokers_key_does_not_verify(broker: Broker) -> None:
    stranger = TokenIssuer(new_private_key())
    verifier = _verifier(broker)
    try:
        with pytest.raises(AuthenticationFailed, match="no Google certificate has key id"):
            await verifier.verify("Bearer " + stranger.token(ACCOUNT, ENDPOINT))
        with pytest.raises(Forbidden, match=r"service account 'x@y\.z' may not push here"):
            await verifier.verify("Bearer " + broker.issuer.token("x@y.z", ENDPOINT))
    finally:
        await verifier._client.aclose()


async def test_the_key_survives_a_restart(tmp_path: object, broker: Broker) -> None:
    before = broker.issuer.certs()
    again = Broker(broker.path)
    await broker.aclose()
    async with again:
        assert again.issuer.certs() == before


async def test_google_auth_verifies_the_served_token_and_certs() -> None:
    """A differential check: google-auth's own verifier fetches the served certs, accepts it."""
    from homing.broker.server import serving

    served = Broker()
    async with serving(served, port=0, http_port=0) as addresses:
        token = served.issuer.token(ACCOUNT, ENDPOINT)
        claims = await asyncio.to_thread(
            id_token.verify_token,
            token,
            google.auth.transport.requests.Request(requests.Session()),
            audience=ENDPOINT,
            certs_url=addresses.certs_url,
        )
    assert claims["email"] == ACCOUNT
    assert claims["email_verified"] is True
    assert claims["iss"] == "https://accounts.google.com"
    assert claims["exp"] - claims["iat"] == 3600
