from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer

from homing import EventRegistrationError, EventRegistry, Homing, InvalidEvent, MemoryPublisher
from homing.events import decode_event, describe_validation_error, encode_event


class NameChanged(BaseModel):
    user_id: int
    new_name: str


class Other(BaseModel):
    x: int


class Line(BaseModel):
    sku: str
    quantity: int = Field(gt=0)


class Order(BaseModel):
    order_id: int
    total_cents: int = Field(ge=0)
    lines: list[Line] = []
    by_warehouse: dict[str, Line] = {}


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


# -- refused at publish: a model instance that its consumer would not read ----------------------


def test_an_instance_missing_a_field_is_refused_naming_the_field() -> None:
    with pytest.raises(
        InvalidEvent, match=r"does not fit Order: 1 error\(s\): total_cents: missing"
    ):
        encode_event(Order.model_construct(order_id=1))  # type: ignore[call-arg]


def test_an_instance_breaking_a_constraint_is_refused_without_its_value() -> None:
    event = Order(order_id=1, total_cents=5)
    event.total_cents = -987654  # no validate_assignment: the model took it
    with pytest.raises(InvalidEvent, match="total_cents: greater_than_equal") as caught:
        encode_event(event)
    assert "987654" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_a_nested_instance_that_does_not_fit_is_refused_at_its_location() -> None:
    event = Order(order_id=1, total_cents=5, lines=[Line(sku="a", quantity=1)])
    event.lines.append(Line.model_construct(sku="b", quantity=0))
    with pytest.raises(InvalidEvent, match=r"lines\.1\.quantity: greater_than"):
        encode_event(event)


@pytest.mark.parametrize(
    ("event", "location"),
    [
        (Order.model_construct(order_id="secret-text", total_cents=1), "order_id"),  # type: ignore[arg-type]
        (
            Order.model_construct(
                order_id=1,
                total_cents=1,
                lines=[Line(sku="a", quantity=1), Line.model_construct(sku=object(), quantity=1)],  # type: ignore[arg-type]
            ),
            "lines.1.sku",
        ),
        (
            Order.model_construct(
                order_id=1,
                total_cents=1,
                by_warehouse={"east": Line.model_construct(sku=b"\xff", quantity=1)},  # type: ignore[arg-type]
            ),
            "by_warehouse.east.sku",
        ),
    ],
)
def test_a_value_that_does_not_serialise_is_refused_at_its_location(
    event: Order, location: str
) -> None:
    with pytest.raises(InvalidEvent, match=f"does not serialise to JSON at {location}:") as caught:
        encode_event(event)
    assert "secret-text" not in str(caught.value)
    assert caught.value.__cause__ is None


def test_a_serialiser_that_raises_is_refused_without_its_message() -> None:
    class Masked(BaseModel):
        card: str

        @field_serializer("card")
        def mask(self, card: str) -> str:
            raise ValueError(f"cannot mask {card}")

    with pytest.raises(InvalidEvent, match="at card:") as caught:
        encode_event(Masked(card="4111-1111"))
    assert "4111" not in str(caught.value)


def test_json_that_does_not_read_back_is_refused() -> None:
    class Renamed(BaseModel):
        model_config = ConfigDict(serialize_by_alias=True)
        total: int = Field(alias="sum", serialization_alias="total_sum")

    with pytest.raises(InvalidEvent, match="sum: missing"):
        encode_event(Renamed(sum=1))


async def test_publish_refuses_an_invalid_instance_and_publishes_nothing(homing: Homing) -> None:
    from tests.conftest import OrderPlaced

    with pytest.raises(InvalidEvent, match="total_cents: missing"):
        await homing.publish(OrderPlaced.model_construct(order_id=1))  # type: ignore[call-arg]
    assert isinstance(homing.publisher, MemoryPublisher)
    assert homing.publisher.messages == []


# -- a pushed event that does not fit: its quarantine reason ------------------------------------


def _error(model: type[BaseModel], data: bytes) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        decode_event(model, data)
    return caught.value


def test_the_reason_lists_each_error_location_and_type_never_the_input() -> None:
    exc = _error(Order, b'{"order_id":1,"total_cents":"lots-of-secret","lines":[{"quantity":0}]}')
    assert describe_validation_error(exc, Order) == (
        "the data does not fit Order: 3 error(s): total_cents: int_parsing; lines.0.sku: missing; "
        "lines.0.quantity: greater_than"
    )


def test_the_reason_for_data_that_is_not_json_names_the_whole() -> None:
    exc = _error(Order, b"not json")
    assert describe_validation_error(exc, Order) == (
        "the data does not fit Order: 1 error(s): (the whole): json_invalid"
    )


def test_the_reason_bounds_locations_the_sender_chose() -> None:
    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: int = 0

    keys = ", ".join(f'"{"k" * 200}{i}": 1' for i in range(30))
    reason = describe_validation_error(_error(Strict, b"{%s}" % keys.encode()), Strict)
    listed = reason.removeprefix(f"the data does not fit {Strict.__qualname__}: 30 error(s): ")
    assert listed.startswith("k" * 64 + ": extra_forbidden; ")
    assert reason.endswith("; and 20 more")
    assert reason.count("extra_forbidden") == 10
    assert len(reason) < 1000
