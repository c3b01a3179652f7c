"""Finding a service's ``Homing`` (and outbox) from ``--app MODULE:ATTRIBUTE`` for the CLI.

``ATTRIBUTE`` names a :class:`~homing.Homing`, an ASGI app whose ``state`` holds ``homing``
(and ``outbox``), or a callable without arguments returning either. An app's lifespan runs
around the command, so its engines and stores are set up and closed as when it serves.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from homing.app import Homing
from homing.errors import ConfigurationError, HomingError

if TYPE_CHECKING:
    from homing.outbox import SQLOutbox


@dataclass(frozen=True)
class Loaded:
    homing: Homing
    outbox: SQLOutbox | None


def _import(spec: str) -> Any:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"service {spec!r} is not of the form MODULE:ATTRIBUTE")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = _install_hint(exc)
        raise ConfigurationError(
            f"service {spec!r}: cannot import {module_name!r}: {exc}{hint}"
        ) from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(f"service {spec!r}: {module_name} has no {attribute!r}") from None


#: The reference service, the default in a checkout of homing.
REFERENCE_SERVICE = "users_api.app:create_app"


def checkout_root(start: Path | None = None) -> Path | None:
    """The homing checkout holding ``start`` (default: the working directory), if any."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        project = directory / "pyproject.toml"
        if (
            (directory / "examples" / "users_api" / "app.py").is_file()
            and project.is_file()
            and 'name = "homing"' in project.read_text(errors="replace")
        ):
            return directory
    return None


def service_spec(explicit: str | None, configured: str | None) -> tuple[str, str | None]:
    """Which service to load: ``--app``, else ``HOMING_APP``, else a checkout's reference one.

    Returns the ``MODULE:ATTRIBUTE`` and, when it was not asked for, a note saying so.
    """
    if explicit:
        return explicit, None
    if configured:
        return configured, None
    root = checkout_root()
    if root is None:
        raise ConfigurationError(
            "which service? pass --app MODULE:ATTRIBUTE or set HOMING_APP=MODULE:ATTRIBUTE "
            "(the reference service is the default only inside a checkout of homing)"
        )
    examples = str(root / "examples")
    if examples not in sys.path:
        sys.path.insert(0, examples)
    return REFERENCE_SERVICE, (
        f"the reference service of the checkout at {root} ({REFERENCE_SERVICE}); "
        "--app or HOMING_APP names another"
    )


def resolve(spec: str) -> Any:
    """The object ``spec`` names: a ``Homing`` or an app (a factory is called).

    A database URL that cannot be read or a driver that is not installed is reported as one
    :class:`~homing.errors.ConfigurationError` naming the problem (and the extra to install).
    """
    target = _import(spec)
    if callable(target) and not isinstance(target, Homing) and not hasattr(target, "state"):
        try:
            target = target()
        except HomingError:  # said already: homing's create_engine names a URL's problem
            raise
        except Exception as exc:
            raise _explained(exc) from exc
    return target


def find_homing(target: Any) -> Homing | None:
    """``target`` itself when it is a ``Homing``, else the one its ``state`` holds, else the
    one its push endpoint serves (:class:`~homing.asgi.PushFastPath`), looking through ASGI
    middleware that keeps the app it wraps as ``app``."""
    for _ in range(20):  # middleware is never this deep; a loop of ``app`` is not followed
        if isinstance(target, Homing):
            return target
        for found in (
            getattr(getattr(target, "state", None), "homing", None),
            getattr(getattr(target, "endpoint", None), "homing", None),
        ):
            if isinstance(found, Homing):
                return found
        target = getattr(target, "app", None)
        if target is None:
            return None
    return None


def homing_of(target: Any, spec: str) -> Homing:
    """The ``Homing`` of ``target`` (:func:`find_homing`); raise when there is none."""
    found = find_homing(target)
    if found is None:
        raise ConfigurationError(
            f"service {spec!r} is neither a Homing nor an app whose state or push endpoint "
            "holds one"
        )
    return found


@asynccontextmanager
async def load(spec: str) -> AsyncIterator[Loaded]:
    """The ``Homing`` behind ``spec``, with the app's lifespan running around the block."""
    target = resolve(spec)
    outbox = getattr(getattr(target, "state", None), "outbox", None)
    try:
        from homing.outbox import SQLOutbox  # needs SQLAlchemy: only the commands that load

        async with _lifespan(target, spec) as homing:
            yield Loaded(homing, outbox if isinstance(outbox, SQLOutbox) else None)
    except HomingError:
        raise
    except Exception as exc:
        raise _explained(exc) from exc


@asynccontextmanager
async def _lifespan(target: Any, spec: str) -> AsyncIterator[Homing]:
    async with AsyncExitStack() as stack:
        homing = homing_of(target, spec)
        if homing is target:
            await stack.enter_async_context(homing)
        else:
            router = getattr(target, "router", None)
            lifespan = getattr(router, "lifespan_context", None)
            if lifespan is not None:
                await stack.enter_async_context(lifespan(target))
            else:
                await stack.enter_async_context(homing)
        yield homing


# Modules the extras bring, and the extra that brings each.
_EXTRAS = {
    "sqlalchemy": "sql",
    "aiosqlite": "sql",
    "asyncpg": "sql",
    "greenlet": "sql",
    "fastapi": "fastapi",
    "uvicorn": "server",
    "google": "pubsub",
    "email_validator": "service",
    "flask": "flask",
}
_SQL_DRIVERS = "postgresql+asyncpg://USER@HOST:5432/DB or sqlite+aiosqlite:///PATH"


def _install_hint(exc: ImportError) -> str:
    top = (exc.name or "").partition(".")[0]
    extra = _EXTRAS.get(top)
    return f" (pip install 'homing[{extra}]')" if extra else ""


def _from_sqlalchemy(exc: BaseException) -> bool:
    return any("sqlalchemy" in frame.filename for frame in traceback.extract_tb(exc.__traceback__))


def _explained(exc: Exception) -> HomingError:
    """One line saying what is wrong with the service's database or its driver, never a secret.

    Database URLs are never repeated: they may hold a password.
    """
    kind = type(exc).__name__
    message = str(exc).partition("\n")[0]
    if isinstance(exc, ModuleNotFoundError):
        name = exc.name or "?"
        if name.partition(".")[0] in _EXTRAS:
            return ConfigurationError(f"the module {name!r} is not installed{_install_hint(exc)}")
        if _from_sqlalchemy(exc):
            # Not a driver homing[sql] brings (those are in _EXTRAS): installing it won't do.
            return ConfigurationError(
                f"the database URL (DATABASE_URL) selects a driver whose module {name!r} is not "
                f"installed, and homing's SQL stores do not run on it; write {_SQL_DRIVERS}"
            )
        return ConfigurationError(f"the service needs the module {name!r}, which is not installed")
    if kind == "ArgumentError" and "URL" in message:
        return ConfigurationError(
            f"the database URL (DATABASE_URL) cannot be read as a URL; expected {_SQL_DRIVERS}"
        )
    if kind == "NoSuchModuleError":
        dialect = message.rpartition("dialects:")[2] or "?"
        return ConfigurationError(
            f"the database URL (DATABASE_URL) names a database SQLAlchemy has no dialect for "
            f"({dialect!r}); homing's SQL stores use {_SQL_DRIVERS}"
        )
    if kind == "InvalidRequestError" and "async driver" in message:
        return ConfigurationError(
            "the database URL (DATABASE_URL) names a driver that is not async; use " + _SQL_DRIVERS
        )
    if isinstance(exc, OSError) or _from_sqlalchemy(exc) or "asyncpg" in type(exc).__module__:
        root = _root_cause(exc)
        reason = str(root).partition("\n")[0]
        return HomingError(f"cannot use the database: {type(root).__name__}: {reason}"[:500])
    raise exc


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost error behind a driver's wrappers (SQLAlchemy's ``orig``, ``__cause__``)."""
    seen = {id(exc)}
    while True:
        inner = getattr(exc, "orig", None) or exc.__cause__
        if not isinstance(inner, BaseException) or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner
