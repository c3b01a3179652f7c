"""Properties of the front door, over generated input (hypothesis): whatever arrives, reading and
verifying end in a message, or in homing's own refusal — never another exception — and nothing
without a valid signature reaches a handler."""

from __future__ import annotations

import asyncio
import base64
import string

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homing import Homing, KeyRing, MalformedPush, Signer, build_push
from homing.auth import OIDCVerifier
from homing.errors import AuthenticationFailed, Forbidden
from homing.ingress import read_push, recognise
from homing.ingress.wrapped import parse_push
from tests.conftest import OrderPlaced, Recorder

# Hypothesis warns when the global `random` changes while it draws. In a full run a
# google-cloud-pubsub batch thread from an earlier test may still be retrying (with random
# jitter) at that moment: that is not these strategies' doing.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")

KEYS = KeyRing({"k1": "a-secret-of-enough-length"})
EXAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# How each of homing's own refusals of an Authorization header begins (homing.auth).
REFUSED = (
    r"^(no Authorization header$|the Authorization header is |malformed token: |token |"
    r"no Google certificate has key id |could not fetch the token certificates: |"
    r"service account |the email of service account )"
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
attribute_maps = st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=6)
# Messages shaped like a push, with any field possibly wrong.
messages = st.fixed_dictionaries(
    {},
    optional={
        "data": st.one_of(
            st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()), json_values
        ),
        "attributes": st.one_of(attribute_maps, json_values),
        "messageId": st.one_of(st.text(max_size=10), json_values),
        "publishTime": json_values,
        "orderingKey": json_values,
    },
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "message": st.one_of(messages, json_values),
        "subscription": json_values,
        "deliveryAttempt": json_values,
    },
)
bodies = st.one_of(
    st.binary(max_size=256), envelopes.map(orjson.dumps), json_values.map(orjson.dumps)
)
header_names = st.one_of(
    st.sampled_from(
        [
            "content-type",
            "ce-id",
            "ce-type",
            "ce-source",
            "ce-specversion",
            "x-goog-pubsub-message-id",
            "x-goog-pubsub-delivery-attempt",
            "x-goog-ordering-key",
            "homing-signature",
            "homing-attributes",
            "event-type",
            "signature",
        ]
    ),
    st.text(string.ascii_lowercase + "-", min_size=1, max_size=12),
)
header_values = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/cloudevents+json",
            "1.0",
            "google.cloud.pubsub.topic.v1.messagePublished",
            "v1:00",
        ]
    ),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)
header_maps = st.dictionaries(header_names, header_values, max_size=8)


@EXAMPLES
@given(bodies)
def test_a_wrapped_body_parses_or_is_refused_as_malformed(body: bytes) -> None:
    try:
        push = parse_push(body)
    except MalformedPush:
        return
    assert isinstance(push.data, bytes)
    assert push.message_id
    assert all(type(v) is str for v in push.attributes.values())


@EXAMPLES
@given(bodies, header_maps, st.booleans())
def test_any_request_reads_or_is_refused_as_malformed(
    body: bytes, headers: dict[str, str], bare: bool
) -> None:
    try:
        shape = recognise(headers)
        _, push = read_push(shape, body, headers, allow_bare=bare)
    except MalformedPush:
        return
    assert isinstance(push.data, bytes)
    assert push.message_id


@EXAMPLES
@given(st.binary(max_size=64), attribute_maps, st.text(max_size=10))
def test_verification_accepts_only_what_was_signed(
    data: bytes, attributes: dict[str, str], message_id: str
) -> None:
    signer = Signer(KEYS, legacy_secret="an-article-secret-long-enough")
    try:
        signer.verify(data, attributes, message_id=message_id)
    except AuthenticationFailed:
        return
    raise AssertionError("generated attributes carried a valid signature")


@EXAMPLES
@given(
    st.binary(max_size=64),
    st.dictionaries(
        st.text(string.ascii_letters, min_size=1, max_size=8), st.text(max_size=8), max_size=3
    ),
    st.data(),
)
def test_any_change_to_a_signed_message_is_refused(
    data: bytes, extra: dict[str, str], draw: st.DataObject
) -> None:
    signer = Signer(KEYS)
    extra = {k: v for k, v in extra.items() if k != "event-type" and k.lower() not in {"homing"}}
    try:
        attributes = signer.sign(data, "order.placed", attributes=extra)
    except Exception:  # names the signer refuses (reserved, colliding in case, with commas)
        return
    assert signer.verify(data, attributes, message_id="m").event_type == "order.placed"
    name = draw.draw(st.sampled_from(sorted(attributes)))
    changed = dict(attributes)
    changed[name] = attributes[name] + draw.draw(st.text(min_size=1, max_size=4))
    try:
        signer.verify(data, changed, message_id="m")
    except AuthenticationFailed:
        return
    raise AssertionError(f"a changed {name!r} still verified")


def _homing(recorder: Recorder) -> Homing:
    homing = Homing(
        signer=Signer(KEYS, legacy_secret="an-article-secret-long-enough"),
        accept_legacy_without_oidc=True,
    )
    homing.events.register("order.placed", OrderPlaced)
    homing.handler(OrderPlaced)(recorder)
    return homing


@EXAMPLES
@given(bodies, header_maps)
def test_the_endpoint_answers_any_request_and_runs_nothing_unsigned(
    body: bytes, headers: dict[str, str]
) -> None:
    recorder = Recorder()
    homing = _homing(recorder)
    result = asyncio.run(homing.handle_push(body, headers))
    assert result.status in (400, 401), result
    assert recorder.seen == []


@EXAMPLES
@given(header_maps)
def test_a_signed_message_with_any_extra_headers_runs_once_or_is_refused(
    headers: dict[str, str],
) -> None:
    recorder = Recorder()
    homing = _homing(recorder)
    message = homing.sign(OrderPlaced(order_id=1, total_cents=1))
    body = build_push(message.data, message.attributes, message_id="m", subscription="s")
    result = asyncio.run(homing.handle_push(body, {**headers, "content-type": "application/json"}))
    if result.status == 204:
        assert len(recorder.seen) == 1
    else:
        # Headers of another shape: the body is then not what they announce.
        assert result.status in (400, 401)
        assert recorder.seen == []


@EXAMPLES
@given(st.one_of(st.none(), st.text(max_size=300), st.binary(max_size=300).map(bytes.hex)))
def test_any_authorization_header_is_refused_by_homings_own_errors(
    authorization: str | None,
) -> None:
    async def certs(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    async def verify() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(certs)) as client:
            verifier = OIDCVerifier(
                audience="https://a.example/events", service_accounts=["p@x.iam"], client=client
            )
            with pytest.raises((AuthenticationFailed, Forbidden), match=REFUSED):
                await verifier.verify(authorization)

    asyncio.run(verify())
