"""Typed events: pydantic models bound to a type name such as ``user.name.changed``."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import TypeVar

from pydantic import BaseModel

from homing.errors import EventRegistrationError

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


def encode_event(event: BaseModel) -> bytes:
    """Serialise an event to compact JSON bytes."""
    return event.__pydantic_serializer__.to_json(event)


def decode_event(model: type[BaseModel], data: bytes) -> BaseModel:
    """Parse JSON bytes into ``model``; raises ``pydantic.ValidationError`` when they don't fit."""
    return model.model_validate_json(data)
