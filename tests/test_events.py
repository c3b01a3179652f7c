from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from homing import EventRegistrationError, EventRegistry
from homing.events import decode_event, encode_event


class NameChanged(BaseModel):
    user_id: int
    new_name: str


class Other(BaseModel):
    x: int


def test_registry_binds_name_and_model_both_ways() -> None:
    registry = EventRegistry()
    registry.register("user.name.changed", NameChanged)
    assert registry.model("user.name.changed") is NameChanged
    assert registry.type_name(NameChanged) == "user.name.changed"
    assert registry.type_name(NameChanged(user_id=1, new_name="a")) == "user.name.changed"
    assert "user.name.changed" in registry
    assert list(registry) == ["user.name.changed"]
    assert registry.model("nope") is None


def test_registry_refuses_two_models_for_one_name() -> None:
    registry = EventRegistry()
    registry.register("user.name.changed", NameChanged)
    with pytest.raises(EventRegistrationError, match="already bound to NameChanged"):
        registry.register("user.name.changed", Other)
    assert registry.model("user.name.changed") is NameChanged


def test_registry_refuses_two_names_for_one_model() -> None:
    registry = EventRegistry()
    registry.register("a.b", NameChanged)
    with pytest.raises(EventRegistrationError, match=r"already bound to event type 'a\.b'"):
        registry.register("c.d", NameChanged)


def test_registering_the_same_pair_again_is_harmless() -> None:
    registry = EventRegistry()
    registry.register("a.b", NameChanged)
    registry.register("a.b", NameChanged)
    assert len(registry) == 1


@pytest.mark.parametrize("name", ["", "1abc", "has space", "x" * 256, "semi;colon"])
def test_registry_refuses_bad_type_names(name: str) -> None:
    with pytest.raises(EventRegistrationError, match="must start with a letter"):
        EventRegistry().register(name, NameChanged)


def test_registry_refuses_non_models() -> None:
    with pytest.raises(EventRegistrationError, match="is not a model"):
        EventRegistry().register("a.b", dict)  # type: ignore[arg-type]


def test_unregistered_model_names_the_fix() -> None:
    with pytest.raises(EventRegistrationError, match="not a registered event"):
        EventRegistry().type_name(NameChanged)


def test_decorator_form_returns_the_class() -> None:
    registry = EventRegistry()

    @registry.event("thing.happened")
    class ThingHappened(BaseModel):
        n: int

    assert registry.model("thing.happened") is ThingHappened


def test_events_round_trip_through_json_bytes() -> None:
    event = NameChanged(user_id=7, new_name="Zoë")
    data = encode_event(event)
    assert isinstance(data, bytes)
    assert data == '{"user_id":7,"new_name":"Zoë"}'.encode()
    assert decode_event(NameChanged, data) == event


def test_decoding_data_that_does_not_fit_raises_validation_error() -> None:
    with pytest.raises(ValidationError, match=r"(?s)2 validation errors.*user_id.*new_name"):
        decode_event(NameChanged, b'{"user_id": "seven"}')
