"""Finding a service's ``Homing`` (and outbox) from ``--app MODULE:ATTRIBUTE`` for the CLI.

``ATTRIBUTE`` names a :class:`~homing.Homing`, an ASGI app whose ``state`` holds ``homing``
(and ``outbox``), or a callable without arguments returning either. An app's lifespan runs
around the command, so its engines and stores are set up and closed as when it serves.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from homing.app import Homing
from homing.errors import ConfigurationError

if TYPE_CHECKING:
    from homing.outbox import SQLOutbox


@dataclass(frozen=True)
class Loaded:
    homing: Homing
    outbox: SQLOutbox | None


def _import(spec: str) -> Any:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"--app {spec!r} is not of the form MODULE:ATTRIBUTE")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"--app {spec!r}: cannot import {module_name!r}: {exc}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(f"--app {spec!r}: {module_name} has no {attribute!r}") from None


def resolve(spec: str) -> Any:
    """The object ``spec`` names: a ``Homing`` or an app (a factory is called)."""
    target = _import(spec)
    if callable(target) and not isinstance(target, Homing) and not hasattr(target, "state"):
        target = target()
    return target


def homing_of(target: Any, spec: str) -> Homing:
    """``target`` itself when it is a ``Homing``, else the one its ``state`` holds."""
    if isinstance(target, Homing):
        return target
    found = getattr(getattr(target, "state", None), "homing", None)
    if not isinstance(found, Homing):
        raise ConfigurationError(
            f"--app {spec!r} is neither a Homing nor an app whose state holds one"
        )
    return found


@asynccontextmanager
async def load(spec: str) -> AsyncIterator[Loaded]:
    """The ``Homing`` behind ``spec``, with the app's lifespan running around the block."""
    from homing.outbox import SQLOutbox  # needs SQLAlchemy: only for the commands that load

    target = resolve(spec)
    async with AsyncExitStack() as stack:
        if isinstance(target, Homing):
            homing, outbox = target, None
            await stack.enter_async_context(homing)
        else:
            homing = homing_of(target, spec)
            outbox = getattr(target.state, "outbox", None)
            router = getattr(target, "router", None)
            lifespan = getattr(router, "lifespan_context", None)
            if lifespan is not None:
                await stack.enter_async_context(lifespan(target))
            else:
                await stack.enter_async_context(homing)
        yield Loaded(homing, outbox if isinstance(outbox, SQLOutbox) else None)
