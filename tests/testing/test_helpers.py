"""homing.testing's helpers against a real service: push, push_body, the recording publisher."""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel
from starlette.applications import Starlette

from homing import EventRegistrationError, Homing
from homing.starlette import push_route
from homing.testing import (
    DEFECTS,
    RecordingPublisher,
    assert_handled,
    assert_published,
    push,
    push_body,
)
from tests.conftest import OrderPlaced, Recorder

ORDER = OrderPlaced(order_id=1, total_cents=999)


class Unknown(BaseModel):
    x: int


@pytest.fixture
def asgi_app(homing: Homing) -> Starlette:
    app = Starlette(routes=[push_route(homing, "/events")])
    app.state.homing = homing
    return app


@pytest.mark.parametrize("through", ["homing", "asgi"])
async def test_a_signed_push_runs_the_handler(
    homing: Homing, asgi_app: Starlette, recorder: Recorder, through: str
) -> None:
    target = homing if through == "homing" else asgi_app
    result = await push(target, ORDER, event_id="e-1")
    assert_handled(result, "done", status=204)
    [(event, delivery)] = recorder.seen
    assert (event, delivery.event_id) == (ORDER, "e-1")


EXPECTED = {
    "unsigned": (401, "unauthenticated", "no signature"),
    "wrong_key": (401, "unauthenticated", "not in the ring"),
    "tampered": (401, "unauthenticated", "does not match"),
    "expired": (401, "unauthenticated", "expired"),
    "malformed": (400, "malformed", ""),
}


def test_every_defect_has_an_expected_answer() -> None:
    assert set(EXPECTED) == set(DEFECTS)


@pytest.mark.parametrize("through", ["homing", "asgi"])
@pytest.mark.parametrize("defect", DEFECTS)
async def test_a_broken_push_is_refused_and_runs_nothing(
    homing: Homing, asgi_app: Starlette, recorder: Recorder, defect: str, through: str
) -> None:
    target = homing if through == "homing" else asgi_app
    result = await push(target, ORDER, defect=defect)  # type: ignore[arg-type]
    status, outcome, why = EXPECTED[defect]
    assert_handled(result, outcome, status=status)
    assert why in (result.detail or "")
    assert recorder.seen == []


def test_an_unregistered_event_is_refused_unless_asked_for(homing: Homing) -> None:
    with pytest.raises(EventRegistrationError, match="Unknown is not a registered event"):
        push_body(homing, Unknown(x=1))
    with pytest.raises(EventRegistrationError, match="'nope' is not registered"):
        push_body(homing, {"x": 1}, event_type="nope")
    with pytest.raises(EventRegistrationError, match="needs its event_type"):
        push_body(homing, {"x": 1})


async def test_an_unregistered_event_when_asked_for_is_quarantined(
    homing: Homing, recorder: Recorder
) -> None:
    result = await push(homing, Unknown(x=1), event_type="nope", unregistered=True)
    assert_handled(result, "quarantined", status=200)
    assert "'nope' has no model" in (result.detail or "")
    [entry] = await homing.quarantine.list()
    assert entry.event_type == "nope"
    assert recorder.seen == []


async def test_assert_handled_says_what_happened(homing: Homing) -> None:
    result = await push(homing, ORDER, defect="tampered")
    expected = (
        "the push was answered unauthenticated (401): the signature does not match the "
        "message; expected done"
    )
    with pytest.raises(AssertionError, match=f"^{re.escape(expected)}$"):
        assert_handled(result)


async def test_a_recording_publisher_captures_then_runs_handlers(
    homing: Homing, recorder: Recorder
) -> None:
    recording = RecordingPublisher(homing)
    homing.publisher = recording
    await homing.publish(ORDER)
    await homing.publish(OrderPlaced(order_id=-1, total_cents=0))  # its handler asks to retry
    assert recorder.seen == []  # captured, not handled yet
    recording.assert_published(ORDER, OrderPlaced)
    done, retried = await recording.run_handlers()
    assert_handled(done)
    assert_handled(retried, "retry", status=503)
    assert [event for event, _ in recorder.seen] == [ORDER]
    assert await recording.run_handlers() == []  # each message is pushed once
    assert_published(recording, ORDER, OrderPlaced(order_id=-1, total_cents=0))


async def test_run_handlers_through_an_asgi_app(
    homing: Homing, asgi_app: Starlette, recorder: Recorder
) -> None:
    recording = RecordingPublisher(homing)
    homing.publisher = recording
    await homing.publish(ORDER)
    [result] = await recording.run_handlers(asgi_app)
    assert_handled(result, status=204)
    assert len(recorder.seen) == 1


async def test_assert_published_lists_both_sides(homing: Homing) -> None:
    recording = RecordingPublisher(homing)
    homing.publisher = recording
    await homing.publish(ORDER)
    expected = (
        "published:\n  OrderPlaced(order_id=1, total_cents=999)\n"
        "expected:\n  OrderPlaced(order_id=2, total_cents=999)"
    )
    with pytest.raises(AssertionError, match=f"^{re.escape(expected)}$"):
        recording.assert_published(OrderPlaced(order_id=2, total_cents=999))
    with pytest.raises(AssertionError, match="expected:\n  \\(nothing\\)"):
        recording.assert_published()
    recording.clear()
    recording.assert_published()


async def test_inline_handles_each_event_as_it_is_published(
    homing: Homing, recorder: Recorder
) -> None:
    inline = RecordingPublisher(homing, handle=True)
    homing.publisher = inline
    await homing.publish(ORDER)
    assert [event for event, _ in recorder.seen] == [ORDER]
    await homing.publish(ORDER, event_id=recorder.seen[0][1].event_id)  # the same event again
    assert [(r.status, r.outcome) for r in inline.results] == [(204, "done"), (204, "duplicate")]
    assert inline.messages == []
    inline.assert_published(ORDER, ORDER)


async def test_the_plugin_fixtures_install_and_restore_the_publisher(
    homing: Homing, homing_inline: RecordingPublisher, recorder: Recorder
) -> None:
    assert homing.publisher is homing_inline
    await homing.publish(ORDER)
    assert len(recorder.seen) == 1


def test_the_fixtures_put_the_previous_publisher_back(homing: Homing) -> None:
    from homing.testing.plugin import _installed

    previous = homing.publisher
    installing = _installed(homing, RecordingPublisher(homing))
    recorder = next(installing)
    assert homing.publisher is recorder
    installing.close()  # the fixture's teardown
    assert homing.publisher is previous


def test_a_recorder_without_a_service_says_how_to_give_it_one() -> None:
    from homing import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"set recorder.homing = <your Homing>"):
        RecordingPublisher().events  # noqa: B018
