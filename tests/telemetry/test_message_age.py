"""``message_age``: Pub/Sub's publish time read by its own quick path, held to
:meth:`datetime.fromisoformat` (a differential test: the library decides what a time is)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from homing.telemetry.hook import message_age

NOW = 1_800_000_000.5


def _library(publish_time: str) -> float | None:
    try:
        return NOW - datetime.fromisoformat(publish_time).timestamp()
    except ValueError:
        return None


def _agree(publish_time: str) -> None:
    ours, theirs = message_age(publish_time, NOW), _library(publish_time)
    if theirs is None:
        assert ours is None, publish_time
    else:
        # fromisoformat keeps microseconds; the quick path keeps every digit Pub/Sub wrote.
        assert ours is not None, publish_time
        assert math.isclose(ours, theirs, abs_tol=2e-6), publish_time


_TIMES = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@given(_TIMES, st.integers(0, 9), st.integers(0, 999_999_999))
def test_pubsubs_own_form_agrees_with_fromisoformat(
    when: datetime, digits: int, nanos: int
) -> None:
    fraction = f".{nanos:09d}"[: digits + 1] if digits else ""
    _agree(when.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z")


@given(_TIMES, st.text(max_size=12), st.text(max_size=4))
def test_anything_else_agrees_with_fromisoformat(when: datetime, middle: str, end: str) -> None:
    _agree(when.strftime("%Y-%m-%dT%H:%M:%S") + middle + end)
    _agree(when.isoformat())
    _agree(when.strftime("%Y-%m-%dT%H:%M") + end + "Z")


def test_a_busy_second_is_read_once_and_a_new_second_anew() -> None:
    assert message_age("2026-12-03T20:28:37.25Z", NOW) == _library("2026-12-03T20:28:37.25Z")
    assert message_age("2026-12-03T20:28:37.5Z", NOW) == _library("2026-12-03T20:28:37.5Z")
    assert message_age("2026-12-03T20:28:38Z", NOW) == _library("2026-12-03T20:28:38Z")
    # Forms that only look like Pub/Sub's are the library's to judge.
    for odd in (
        "2026-12-03T20:28Z",
        "2026-12-03T20:28:3xZ",
        "2026-12-03T20:28:37.Z",
        "2026-12-03T20:28:37.²Z",
        "2026-12-03T20:28:60Z",
        "",
        "Z",
        "garbage",
    ):
        _agree(odd)
    assert message_age(None, NOW) is None
