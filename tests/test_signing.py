from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta
from pathlib import Path

import pytest

from homing import AuthenticationFailed, ConfigurationError, InvalidEvent, KeyRing, Signer
from homing.signing import (
    EVENT_ID,
    EVENT_TYPE,
    KEY_ID,
    SIGNATURE,
    TIMESTAMP,
    legacy_signature,
    new_key,
)
from tests.support.clock import NOW, Clock

DATA = b'{"user_id":1}'
NOT_MATCHING = "the signature does not match the message"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def signer(keys: KeyRing, clock: Clock) -> Signer:
    return Signer(keys, clock=clock)


def test_sign_then_verify(signer: Signer) -> None:
    attributes = signer.sign(DATA, "user.name.changed", attributes={"tenant": "acme"})
    verified = signer.verify(DATA, attributes, message_id="m1")
    assert verified.event_type == "user.name.changed"
    assert verified.event_id == attributes[EVENT_ID]
    assert verified.key_id == "k-new"
    assert verified.scheme == "v1"
    assert verified.timestamp == int(NOW)
    assert verified.attributes["tenant"] == "acme"
    assert SIGNATURE not in verified.attributes


def test_every_publish_gets_its_own_event_id(signer: Signer) -> None:
    first = signer.sign(DATA, "a.b")[EVENT_ID]
    second = signer.sign(DATA, "a.b")[EVENT_ID]
    assert first != second


def test_a_given_event_id_is_kept(signer: Signer) -> None:
    assert signer.sign(DATA, "a.b", event_id="fixed")[EVENT_ID] == "fixed"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (EVENT_TYPE, "user.deleted"),
        (EVENT_ID, "other-id"),
        (TIMESTAMP, str(int(NOW) - 1)),
        ("tenant", "evil"),
    ],
)
def test_altering_any_signed_attribute_fails(signer: Signer, key: str, value: str) -> None:
    attributes = signer.sign(DATA, "user.name.changed", attributes={"tenant": "acme"})
    attributes[key] = value
    with pytest.raises(AuthenticationFailed, match="does not match"):
        signer.verify(DATA, attributes, message_id="m1")


def test_adding_or_removing_an_attribute_fails(signer: Signer) -> None:
    attributes = signer.sign(DATA, "a.b", attributes={"tenant": "acme"})
    added = {**attributes, "extra": "x"}
    with pytest.raises(AuthenticationFailed, match="does not match"):
        signer.verify(DATA, added, message_id="m1")
    removed = {k: v for k, v in attributes.items() if k != "tenant"}
    with pytest.raises(AuthenticationFailed, match="does not match"):
        signer.verify(DATA, removed, message_id="m1")


def test_altering_the_data_fails(signer: Signer) -> None:
    attributes = signer.sign(DATA, "a.b")
    with pytest.raises(AuthenticationFailed, match="does not match"):
        signer.verify(b'{"user_id":2}', attributes, message_id="m1")


def test_attribute_boundaries_cannot_be_shifted(signer: Signer) -> None:
    # "ab"="c" and "a"="bc" must not sign the same bytes.
    attributes = signer.sign(DATA, "a.b", attributes={"ab": "c"})
    shifted = {k: v for k, v in attributes.items() if k != "ab"} | {"a": "bc"}
    with pytest.raises(AuthenticationFailed, match=NOT_MATCHING):
        signer.verify(DATA, shifted, message_id="m1")


def test_dead_letter_attributes_added_by_pubsub_do_not_break_the_signature(signer: Signer) -> None:
    attributes = signer.sign(DATA, "a.b")
    attributes["CloudPubSubDeadLetterSourceDeliveryCount"] = "5"
    verified = signer.verify(DATA, attributes, message_id="m2")
    assert "CloudPubSubDeadLetterSourceDeliveryCount" not in verified.attributes


def test_rotation_old_keys_verify_new_key_signs(keys: KeyRing, clock: Clock) -> None:
    old_only = Signer(KeyRing({"k-old": "an-older-secret-still-valid"}), clock=clock)
    signed_with_old = old_only.sign(DATA, "a.b")
    rotated = Signer(keys, clock=clock)
    assert rotated.verify(DATA, signed_with_old, message_id="m").key_id == "k-old"
    assert rotated.sign(DATA, "a.b")[KEY_ID] == "k-new"


def test_a_key_removed_from_the_ring_no_longer_verifies(signer: Signer, clock: Clock) -> None:
    attributes = signer.sign(DATA, "a.b")
    without_new = Signer(KeyRing({"k-old": "an-older-secret-still-valid"}), clock=clock)
    with pytest.raises(AuthenticationFailed, match="not in the ring"):
        without_new.verify(DATA, attributes, message_id="m")


def test_a_signature_made_with_another_secret_under_the_same_id_fails(
    signer: Signer, clock: Clock
) -> None:
    forger = Signer(KeyRing({"k-new": "attacker-guessed-secret"}), clock=clock)
    with pytest.raises(AuthenticationFailed, match="does not match"):
        signer.verify(DATA, forger.sign(DATA, "a.b"), message_id="m")


def test_missing_signature(signer: Signer) -> None:
    with pytest.raises(AuthenticationFailed, match="no signature"):
        signer.verify(DATA, {EVENT_TYPE: "a.b"}, message_id="m")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("v2:abcd", "unknown signature version 'v2'"),
        ("v1:not-hex", "the signature is not 64 hexadecimal digits"),
        ("v1:", "the signature is not 64 hexadecimal digits"),
        ("v1:" + "ab" * 31 + "\r\n", "the signature is not 64 hexadecimal digits"),
        ("nonsense", "unknown signature version 'nonsense'"),
    ],
)
def test_malformed_signatures(signer: Signer, value: str, reason: str) -> None:
    attributes = signer.sign(DATA, "a.b")
    attributes[SIGNATURE] = value
    with pytest.raises(AuthenticationFailed, match=reason):
        signer.verify(DATA, attributes, message_id="m")


@pytest.mark.parametrize("padding", ["\r", " ", "\n", "\t"])
def test_whitespace_after_a_valid_signature_is_a_change(signer: Signer, padding: str) -> None:
    """bytes.fromhex skips whitespace: the signature's text is held to its exact form, so an
    attribute changed in any way is refused (found by the property test below)."""
    attributes = signer.sign(DATA, "a.b")
    attributes[SIGNATURE] += padding
    with pytest.raises(AuthenticationFailed, match="not 64 hexadecimal digits"):
        signer.verify(DATA, attributes, message_id="m")


def test_signatures_stay_valid_for_pubsubs_seven_day_retention(
    signer: Signer, clock: Clock
) -> None:
    attributes = signer.sign(DATA, "a.b")
    clock.now += timedelta(days=7, hours=23).total_seconds()
    assert signer.verify(DATA, attributes, message_id="m").event_type == "a.b"
    clock.now += timedelta(days=1).total_seconds()
    with pytest.raises(AuthenticationFailed, match="expired"):
        signer.verify(DATA, attributes, message_id="m")


def test_a_timestamp_far_in_the_future_fails(signer: Signer, clock: Clock) -> None:
    clock.now += 3600
    attributes = signer.sign(DATA, "a.b")
    clock.now -= 3600
    with pytest.raises(AuthenticationFailed, match="future"):
        signer.verify(DATA, attributes, message_id="m")


def test_tolerance_below_retention_is_refused(keys: KeyRing) -> None:
    with pytest.raises(ConfigurationError, match="at least 7 days"):
        Signer(keys, tolerance=timedelta(minutes=5))


def test_reserved_attributes_cannot_be_set_by_the_publisher(signer: Signer) -> None:
    for key in (
        EVENT_TYPE,
        SIGNATURE,
        "homing-anything",
        "googthing",
        "CloudPubSubDeadLetterX",
        # Compared without case: as headers of an unwrapped push these are the same names.
        "Event-Type",
        "HOMING-Signature",
        "Goog-thing",
        "cloudpubsubdeadletterx",
    ):
        with pytest.raises(ConfigurationError, match="reserved"):
            signer.sign(DATA, "a.b", attributes={key: "x"})


def test_legacy_format_from_the_article(keys: KeyRing, clock: Clock) -> None:
    signer = Signer(keys, legacy_secret="the-shared-secret", clock=clock)
    signature = hmac.new(b"the-shared-secret", DATA, hashlib.sha256).hexdigest()
    assert legacy_signature("the-shared-secret", DATA) == signature
    attributes = {"event-type": "user.name.changed", "signature": signature}
    verified = signer.verify(DATA, attributes, message_id="pubsub-42")
    assert verified.scheme == "legacy"
    assert verified.event_id == "pubsub-42"
    assert verified.event_type == "user.name.changed"
    with pytest.raises(AuthenticationFailed, match="does not match"):
        signer.verify(b"{}", attributes, message_id="pubsub-42")


def test_legacy_format_is_refused_unless_configured(signer: Signer) -> None:
    signature = legacy_signature("the-shared-secret", DATA)
    with pytest.raises(AuthenticationFailed, match="HOMING_LEGACY_SECRET"):
        signer.verify(DATA, {"event-type": "a.b", "signature": signature}, message_id="m")


def test_legacy_message_without_event_type_fails(keys: KeyRing) -> None:
    signer = Signer(keys, legacy_secret="the-shared-secret")
    attributes = {"signature": legacy_signature("the-shared-secret", DATA)}
    with pytest.raises(AuthenticationFailed, match="event-type"):
        signer.verify(DATA, attributes, message_id="m")


def test_key_ring_from_string_first_key_signs() -> None:
    ring = KeyRing.from_string("a:0123456789abcdef, b:fedcba9876543210")
    assert ring.key_ids == ("a", "b")
    assert ring.signing_key_id == "a"
    assert ring.secret("b") == b"fedcba9876543210"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nocolon", "not of the form"),
        (":secretsecretsecret", "not of the form"),
        ("a:0123456789abcdef,a:0123456789abcdef", "#2 repeats an earlier key's id"),
        ("a:short", "shorter than 16 bytes"),
        ("bad id:0123456789abcdef", "the id of signing key #1"),
    ],
)
def test_key_ring_from_string_errors(value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        KeyRing.from_string(value)


@pytest.mark.parametrize(
    "value",
    [
        # Written the wrong way round: the secret stands where the id should.
        "Zq3-secret-value-that-looks-like-an-id_0123:k1",
        "Zq3 secret value with spaces 0123456789:k1",
        "ok:0123456789abcdef,Zq3-secret-value-that-looks-like-an-id_0123:k1",
    ],
)
def test_key_ring_errors_never_echo_a_secret(value: str) -> None:
    with pytest.raises(ConfigurationError, match="signing key #") as caught:
        KeyRing.from_string(value)
    assert "secret-value" not in str(caught.value)
    assert "secret value" not in str(caught.value)


def test_legacy_secrets_need_16_bytes(keys: KeyRing) -> None:
    with pytest.raises(ConfigurationError, match="legacy secret is shorter than 16 bytes"):
        Signer(keys, legacy_secret="short")


def test_key_ring_repr_hides_secrets(keys: KeyRing) -> None:
    text = repr(keys)
    assert "k-new" in text
    assert "a-secret-of-enough-length" not in text
    assert "older-secret" not in text


def test_new_key_parses_back() -> None:
    ring = KeyRing.from_string(new_key())
    assert len(ring.signing_secret) >= 32
    assert new_key() != new_key()


def test_the_documented_test_vector() -> None:
    # docs/signing.md gives these bytes to publishers in other languages.
    signer = Signer(KeyRing({"k1": "an-example-secret-0123"}), clock=lambda: 1_800_000_000.0)
    attributes = signer.sign(b'{"user_id":1}', "user.name.changed", event_id="e-1")
    expected = "v1:12ef2e2298fe460052aca4deadba7dac1810fd5d7b1c05771d2f90cd0cff53b4"
    assert attributes[SIGNATURE] == expected
    assert expected in (Path(__file__).parents[1] / "docs" / "signing.md").read_text()


def test_lengths_are_counted_in_utf8_bytes() -> None:
    from homing.signing import _canonical

    assert _canonical(b"d", [("k", "é"), ("a", "b")])[0] == "v1\n1:a1:b1:k2:é\nd".encode()


def test_non_ascii_attributes_sign_and_verify(signer: Signer) -> None:
    attributes = signer.sign(DATA, "a.b", attributes={"name": "Zoë 🎉"})
    assert signer.verify(DATA, attributes, message_id="m").attributes["name"] == "Zoë 🎉"
    attributes["name"] = "Zoe 🎉"
    with pytest.raises(AuthenticationFailed, match=NOT_MATCHING):
        signer.verify(DATA, attributes, message_id="m")


def test_a_key_rings_mac_is_hmac_sha256_of_its_secret() -> None:
    # A differential test against RFC 2104 as the standard library computes it afresh.
    # Secrets shorter than, exactly and longer than SHA-256's 64-byte block.
    ring = KeyRing({"a": "0123456789abcdef", "b": "x" * 64, "c": "y" * 100})
    for key_id in ("a", "b", "c"):
        mac = ring.mac(key_id)
        assert mac is not None
        secret = ring.secret(key_id)
        assert secret is not None
        # The prepared state is copied per call: repeated and interleaved calls don't mix.
        for message in (b"", b"one", b"two" * 1000, b"one"):
            assert mac(message) == hmac.new(secret, message, hashlib.sha256).digest()
    assert ring.mac("missing") is None


def test_unauthenticated_attribute_names_do_not_grow_memory(signer: Signer) -> None:
    from homing.signing import _MAX_NAME_PARTS, _NAME_PARTS

    attributes = signer.sign(DATA, "a.b")
    for n in range(2 * _MAX_NAME_PARTS):
        forged = {**attributes, f"name-{n}": "x"}
        with pytest.raises(AuthenticationFailed, match=NOT_MATCHING):
            signer.verify(DATA, forged, message_id="m")
    assert len(_NAME_PARTS) <= _MAX_NAME_PARTS
    assert not any(name.startswith("name-") for name in _NAME_PARTS)  # refused: not learnt
    assert signer.verify(DATA, attributes, message_id="m").event_type == "a.b"


def test_only_names_of_verified_messages_are_learnt(signer: Signer) -> None:
    from homing.signing import _NAME_PARTS

    attributes = signer.sign(DATA, "a.b", attributes={"learnt-on-signing": "1"})
    assert "learnt-on-signing" in _NAME_PARTS
    forged = {**attributes, "never-verified": "x"}
    with pytest.raises(AuthenticationFailed, match=NOT_MATCHING):
        signer.verify(DATA, forged, message_id="m")
    assert "never-verified" not in _NAME_PARTS


# -- refused at sign time: what Pub/Sub would refuse, or what is not text ------------------------


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"tenant": 42}, r"attribute 'tenant' is int, not str"),
        ({"tenant": b"acme"}, r"attribute 'tenant' is bytes, not str"),
        ({"tenant": None}, r"attribute 'tenant' is NoneType, not str"),
        ({7: "acme"}, r"an attribute name is int, not str"),
    ],
)
def test_attributes_that_are_not_text_are_refused(
    signer: Signer, attributes: dict[object, object], message: str
) -> None:
    with pytest.raises(InvalidEvent, match=message) as caught:
        signer.sign(DATA, "a.b", attributes=attributes)  # type: ignore[arg-type]
    assert "acme" not in str(caught.value)


def test_an_event_id_that_is_not_text_is_refused(signer: Signer) -> None:
    with pytest.raises(InvalidEvent, match="the event id is int, not str"):
        signer.sign(DATA, "a.b", event_id=12345)  # type: ignore[arg-type]


def test_data_over_ten_megabytes_is_refused(signer: Signer) -> None:
    signer.sign(b"x" * 10_000_000, "a.b")
    with pytest.raises(InvalidEvent, match="10000001 bytes, over Pub/Sub's limit of 10000000"):
        signer.sign(b"x" * 10_000_001, "a.b")


def test_attributes_are_counted_with_homings_own(signer: Signer) -> None:
    # homing adds the attribute-names list, type, id, timestamp, key id and signature: 6.
    signed = signer.sign(DATA, "a.b", attributes={f"a{i}": "v" for i in range(94)})
    assert len(signed) == 100
    with pytest.raises(InvalidEvent, match=r"101 attributes \(homing's own included\), over"):
        signer.sign(DATA, "a.b", attributes={f"a{i}": "v" for i in range(95)})


def test_an_attribute_value_over_1024_bytes_is_refused_naming_it(signer: Signer) -> None:
    signer.sign(DATA, "a.b", attributes={"note": "é" * 512})  # 1,024 bytes
    with pytest.raises(
        InvalidEvent, match="attribute 'note' is over Pub/Sub's limit of 1024"
    ) as caught:
        signer.sign(DATA, "a.b", attributes={"note": "é" * 512 + "Z"})
    assert "éZ" not in str(caught.value)


def test_a_long_attribute_name_is_refused_naming_only_its_start(signer: Signer) -> None:
    signer.sign(DATA, "a.b", attributes={"n" * 256: "v"})
    with pytest.raises(InvalidEvent, match="over Pub/Sub's limit of 256 bytes") as caught:
        signer.sign(DATA, "a.b", attributes={"n" * 257: "v"})
    assert repr("n" * 64) in str(caught.value)
    assert "n" * 65 not in str(caught.value)


def test_an_event_id_over_1024_bytes_is_refused(signer: Signer) -> None:
    with pytest.raises(InvalidEvent, match="attribute 'homing-event-id' is over"):
        signer.sign(DATA, "a.b", event_id="e" * 1025)


def test_an_empty_attribute_name_is_refused(signer: Signer) -> None:
    with pytest.raises(InvalidEvent, match="attribute name is empty"):
        signer.sign(DATA, "a.b", attributes={"": "v"})
