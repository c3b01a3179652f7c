from __future__ import annotations

import base64

import orjson
import pytest

from homing import MalformedPush, build_push, parse_push


def _body(**message: object) -> bytes:
    return orjson.dumps({"message": message, "subscription": "projects/p/subscriptions/s"})


def test_parses_camel_case_fields() -> None:
    push = parse_push(
        orjson.dumps(
            {
                "message": {
                    "data": base64.b64encode(b"hello").decode(),
                    "attributes": {"a": "1"},
                    "messageId": "123",
                    "publishTime": "2026-11-27T10:00:00Z",
                    "orderingKey": "k",
                },
                "subscription": "projects/p/subscriptions/s",
                "deliveryAttempt": 3,
            }
        )
    )
    assert push.data == b"hello"
    assert push.attributes == {"a": "1"}
    assert push.message_id == "123"
    assert push.publish_time == "2026-11-27T10:00:00Z"
    assert push.ordering_key == "k"
    assert push.subscription == "projects/p/subscriptions/s"
    assert push.delivery_attempt == 3


def test_parses_snake_case_fields() -> None:
    push = parse_push(_body(data="", message_id="9", publish_time="t", ordering_key="o"))
    assert (push.message_id, push.publish_time, push.ordering_key) == ("9", "t", "o")
    assert push.data == b""
    assert push.attributes == {}
    assert push.delivery_attempt is None


def test_build_push_round_trips() -> None:
    body = build_push(
        b"\x00\xffbinary",
        {"k": "v"},
        message_id="m",
        subscription="s",
        ordering_key="ok",
        delivery_attempt=2,
    )
    decoded = orjson.loads(body)
    assert decoded["message"]["messageId"] == decoded["message"]["message_id"] == "m"
    assert decoded["message"]["publishTime"].endswith("Z")
    push = parse_push(body)
    assert push.data == b"\x00\xffbinary"
    assert push.attributes == {"k": "v"}
    assert push.ordering_key == "ok"
    assert push.delivery_attempt == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b'{"message": {"data": "\xc3\x28"}}', "not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, "not valid JSON"),
        (b'{"a": ' * 3000 + b"1" + b"}" * 3000, "not valid JSON"),
        (b"[]", "JSON object"),
        (b"{}", "no 'message' object"),
        (b'{"message": "x"}', "no 'message' object"),
        (_body(data=5, messageId="1"), "base64 string"),
        (_body(data="@@@not base64", messageId="1"), "not valid base64"),
        (_body(data="abc", messageId="1"), "not valid base64"),
        (_body(data="", attributes=[], messageId="1"), "attributes must be an object"),
        (_body(data="", attributes={"a": 1}, messageId="1"), "values must be strings"),
        (_body(data="", attributes={str(i): "v" for i in range(101)}, messageId="1"), "100"),
        (_body(data=""), "no messageId"),
        (_body(data="", messageId=5), "must be a string"),
        (_body(data="", messageId="1", publishTime=1), "must be a string"),
        (orjson.dumps({"message": {"messageId": "1"}, "subscription": 3}), "subscription"),
        (orjson.dumps({"message": {"messageId": "1"}, "deliveryAttempt": "2"}), "deliveryAttempt"),
        (orjson.dumps({"message": {"messageId": "1"}, "deliveryAttempt": 0}), "deliveryAttempt"),
        (orjson.dumps({"message": {"messageId": "1"}, "deliveryAttempt": True}), "deliveryAttempt"),
    ],
)
def test_malformed_bodies_are_refused_with_the_reason(body: bytes, message: str) -> None:
    with pytest.raises(MalformedPush, match=message):
        parse_push(body)
