"""The service's ``Homing``, from Django's settings: which one, how it is built, its loop.

``settings.HOMING`` is a dict. ``"APP"`` names the service's ``Homing`` as
``"MODULE:ATTRIBUTE"`` (the object, or a function without arguments returning it);
``"DATABASE"`` is the ``DATABASES`` alias homing's stores use (default ``"default"``). Every
other key is one of :class:`homing.Settings`'s, in capitals (``"SIGNING_KEYS"``, ``"AUTH"``,
``"PUBLISHER"``...), and wins over its ``HOMING_*`` environment variable.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import importlib
import inspect
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings as django_settings

import homing.wiring as wiring
from homing.app import Homing
from homing.errors import ConfigurationError, HomingError
from homing.loop import LoopThread
from homing.settings import Settings

#: The keys of ``settings.HOMING`` that are the Django adapter's own.
OWN_KEYS = ("APP", "DATABASE")

#: Called with the service once it is loaded (the task backend registers its event here).
on_load: list[Callable[[Homing], None]] = []

#: homing's loop in this process: every homing coroutine the Django adapter runs runs here.
loop = LoopThread(name="homing-django", isolated=True)

_lock = threading.Lock()
_service: Homing | None = None
#: Each Homing's start, once per process (on homing's loop).
_starts: weakref.WeakKeyDictionary[Homing, asyncio.Future[None]] = weakref.WeakKeyDictionary()


def configured() -> dict[str, Any]:
    """``settings.HOMING`` (a dict; empty when unset)."""
    value = getattr(django_settings, "HOMING", {})
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"settings.HOMING must be a dict, not {type(value).__name__}")
    return dict(value)


def database() -> str:
    """The ``DATABASES`` alias homing's stores use."""
    alias = configured().get("DATABASE", "default")
    if alias not in django_settings.DATABASES:
        raise ConfigurationError(
            f"settings.HOMING['DATABASE'] is {alias!r}, which is not in settings.DATABASES"
        )
    return str(alias)


def environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment with ``settings.HOMING``'s settings written in as ``HOMING_*``.

    An unknown key is a :class:`~homing.errors.ConfigurationError` naming it.
    """
    env = dict(os.environ if environ is None else environ)
    names = {field.name.upper(): field.name for field in dataclasses.fields(Settings)}
    for key, value in configured().items():
        if key in OWN_KEYS:
            continue
        name = names.get(str(key).upper())
        if name is None:
            raise ConfigurationError(
                f"settings.HOMING[{key!r}] is not a homing setting; known: "
                + ", ".join([*OWN_KEYS, *names])
            )
        env[Settings.variable(name)] = _text(value)
    return env


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def build(environ: Mapping[str, str] | None = None, **overrides: Any) -> Homing:
    """A ``Homing`` from Django's settings and the environment, its stores on Django's database.

    As :meth:`homing.Homing.from_env`, with ``settings.HOMING`` over the ``HOMING_*``
    variables, and the dedupe and quarantine stores on the ``DATABASES`` alias
    ``settings.HOMING["DATABASE"]`` (``DATABASE_URL`` is not used: Django owns the database).
    Keyword arguments replace what the settings chose.

    Example (``myproject/events.py``, named by ``HOMING = {"APP": "myproject.events:homing"}``)::

        homing = build()

        @homing.event("user.name.changed")
        class UserNameChanged(BaseModel):
            user_id: int
    """
    from homing.django.stores import DjangoDedupeStore, DjangoQuarantineStore

    env = environment(environ)
    env.pop("DATABASE_URL", None)
    using = database()
    quarantine = DjangoQuarantineStore(using)
    chosen: dict[str, Any] = {"dedupe": DjangoDedupeStore(using), "quarantine": quarantine}
    if "publisher" not in overrides:
        chosen["publisher"] = wiring.publisher(Settings.from_env(env), env, keep=quarantine)
    return Homing.from_env(env, **(chosen | overrides))


def service() -> Homing:
    """The service's ``Homing``: ``settings.HOMING["APP"]``, else ``HOMING_APP``; loaded once."""
    global _service
    if _service is not None:
        return _service
    with _lock:
        if _service is None:
            _service = _load()
    return _service


def _load() -> Homing:
    spec = configured().get("APP") or Settings.from_env(environment()).app
    if not spec:
        raise ConfigurationError(
            "settings.HOMING['APP'] is not set: name the service's Homing as "
            "'module:attribute' (homing.django.build() makes one from the settings)"
        )
    module_name, sep, attribute = str(spec).partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"settings.HOMING['APP'] {spec!r} is not 'module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"settings.HOMING['APP']: cannot import {module_name!r}: {exc}"
        ) from None
    target = getattr(module, attribute, None)
    if inspect.isfunction(target):
        try:
            target = target()
        except HomingError:
            raise
        except Exception as exc:
            raise ConfigurationError(
                f"settings.HOMING['APP'] {spec!r} raised {type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(target, Homing):
        raise ConfigurationError(
            f"settings.HOMING['APP'] {spec!r} is not a Homing (nor a function returning one)"
        )
    for hook in on_load:
        hook(target)
    return target


def forget() -> None:
    """Drop the loaded service (tests that change ``settings.HOMING``)."""
    global _service
    with _lock:
        _service = None


async def started(homing: Homing) -> Homing:
    """``homing``, started once in this process (on homing's loop), closed at exit."""
    starting = _starts.get(homing)
    if starting is None:
        starting = _starts[homing] = asyncio.ensure_future(homing.start())
        atexit.register(_close, weakref.ref(homing))
    try:
        await asyncio.shield(starting)
    except BaseException:
        if starting.done():
            _starts.pop(homing, None)  # tried again by the next push
        raise
    return homing


def _close(reference: weakref.ref[Homing]) -> None:
    homing = reference()
    if homing is not None and loop.running() and not loop.in_loop():
        with contextlib.suppress(Exception):  # the process is ending; nobody is left to tell
            loop.run(homing.aclose(), timeout=30)
