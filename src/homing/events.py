"""Typed events: pydantic models bound to a type name such as ``user.name.changed``."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from homing.errors import EventRegistrationError, InvalidEvent

M = TypeVar("M", bound=type[BaseModel])

_TYPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,254}$")


class EventRegistry:
    """Maps event type names to pydantic models, one model per name and one name per model.

    Example::

        registry = EventRegistry()

        @registry.event("user.name.changed")
        class UserNameChanged(BaseModel):
            user_id: int
    """

    def __init__(self) -> None:
        self._models: dict[str, type[BaseModel]] = {}
        self._names: dict[type[BaseModel], str] = {}

    def register(self, type_name: str, model: type[BaseModel]) -> None:
        """Bind ``model`` to ``type_name``; refuse a second model for a name or name for a model."""
        if not _TYPE_NAME.match(type_name):
            raise EventRegistrationError(
                f"event type {type_name!r} must start with a letter and use only letters, "
                "digits, '.', '_' and '-' (at most 255 characters)"
            )
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise EventRegistrationError(f"event type {type_name!r}: {model!r} is not a model")
        existing = self._models.get(type_name)
        if existing is not None and existing is not model:
            raise EventRegistrationError(
                f"event type {type_name!r} is already bound to {existing.__qualname__}"
            )
        other_name = self._names.get(model)
        if other_name is not None and other_name != type_name:
            raise EventRegistrationError(
                f"{model.__qualname__} is already bound to event type {other_name!r}"
            )
        self._models[type_name] = model
        self._names[model] = type_name

    def event(self, type_name: str) -> Callable[[M], M]:
        """Class decorator form of :meth:`register`."""

        def bind(model: M) -> M:
            self.register(type_name, model)
            return model

        return bind

    def type_name(self, event: BaseModel | type[BaseModel]) -> str:
        """The type name an event (or its model) is bound to."""
        model = event if isinstance(event, type) else type(event)
        try:
            return self._names[model]
        except KeyError:
            raise EventRegistrationError(
                f"{model.__qualname__} is not a registered event; register it with "
                "@homing.event('type.name')"
            ) from None

    def model(self, type_name: str) -> type[BaseModel] | None:
        """The model bound to ``type_name``, or ``None`` when the name is unknown."""
        return self._models.get(type_name)

    def __contains__(self, type_name: object) -> bool:
        return type_name in self._models

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)


#: How many of a validation error's locations a message lists, and how much of each part.
_MAX_LOCATIONS = 10
_MAX_PART = 64
#: Bounds on the search for the value that stops an event serialising.
_MAX_DEPTH = 16
_MAX_TRIES = 1000


def encode_event(event: BaseModel) -> bytes:
    """Serialise an event to compact JSON bytes that its model accepts back.

    An instance made without validation (``model_construct``, or changed since) may not fit its
    own model; the bytes are validated as the consumer will read them (:func:`decode_event`),
    so it is refused here rather than quarantined there.

    Raises:
        InvalidEvent: the event does not serialise, or its JSON does not fit its model; the
            message names the fields (their locations), never their values.
    """
    model = type(event)
    try:
        # warnings="error": a value of the wrong type fails here instead of writing a warning
        # (which would quote the value) and JSON that the check below refuses anyway.
        data = model.__pydantic_serializer__.to_json(event, warnings="error")
    except (PydanticSerializationError, ValueError, TypeError):
        # Not chained: the serialiser's message quotes the value.
        raise InvalidEvent(_unserialisable(event)) from None
    try:
        model.__pydantic_validator__.validate_json(data)
    except ValidationError as exc:
        raise InvalidEvent(describe_validation_error(exc, model)) from None
    return data


def decode_event(model: type[BaseModel], data: bytes) -> BaseModel:
    """Parse JSON bytes into ``model``; raises ``pydantic.ValidationError`` when they don't fit."""
    return model.model_validate_json(data)


def describe_validation_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """Why data does not fit ``model``: each error's location and type, never its input.

    Example: ``the data does not fit Order: 2 error(s): total_cents: int_parsing;
    items.0.sku: missing``. Locations come from the data (an unexpected key is one), so each
    part is cut to 64 characters and at most 10 are listed.
    """
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    listed = "; ".join(
        f"{_location(error['loc'])}: {error['type']}" for error in errors[:_MAX_LOCATIONS]
    )
    more = f"; and {len(errors) - _MAX_LOCATIONS} more" if len(errors) > _MAX_LOCATIONS else ""
    return f"the data does not fit {model.__qualname__}: {len(errors)} error(s): {listed}{more}"


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part)[:_MAX_PART] for part in loc) or "(the whole)"


def _unserialisable(event: BaseModel) -> str:
    where = _failing_location(event)
    return (
        f"{type(event).__qualname__} does not serialise to JSON at {where}: a value of another "
        "type than its field declares, or one JSON cannot hold"
    )


def _failing_location(event: BaseModel) -> str:
    """The location of the value that stops ``event`` serialising, found by serialising parts.

    Only run once serialising failed; bounded, it returns the deepest location found so far.
    """
    to_json = type(event).__pydantic_serializer__.to_json
    tries = 0

    def fails(path: list[int | str]) -> bool:
        include: Any = True
        for part in reversed(path):
            include = {part: include}
        try:
            to_json(event, include=include, warnings="error")
        except (PydanticSerializationError, ValueError, TypeError):
            return True
        return False

    path: list[int | str] = []
    value: object = event
    while len(path) < _MAX_DEPTH:
        for key, child in _children(value):
            tries += 1
            if tries > _MAX_TRIES:
                return _location(tuple(path))
            if fails([*path, key]):
                path.append(key)
                value = child
                break
        else:
            break
    return _location(tuple(path))


def _children(value: object) -> Iterable[tuple[int | str, object]]:
    if isinstance(value, BaseModel):
        return [*value.__dict__.items(), *(value.__pydantic_extra__ or {}).items()]
    if isinstance(value, list | tuple):
        return enumerate(value)
    if isinstance(value, dict):
        return [(key, child) for key, child in value.items() if isinstance(key, int | str)]
    return ()
