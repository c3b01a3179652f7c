"""Waiting for a condition instead of sleeping and hoping it came true."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar, overload

import pytest

T = TypeVar("T")


def eventually(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    *,
    interval: float = 0.05,
    explain: Callable[[], object] | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that; fail after
    ``timeout`` seconds with its last value (and ``explain()``, when given). An exception from
    ``predicate`` is not caught."""
    end = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= end:
            _fail(timeout, last, explain)
        time.sleep(interval)


@overload
async def eventually_async(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,  # noqa: ASYNC109
    *,
    interval: float = ...,
    explain: Callable[[], object] | None = ...,
) -> T: ...


@overload
async def eventually_async(
    predicate: Callable[[], T],
    timeout: float = ...,  # noqa: ASYNC109
    *,
    interval: float = ...,
    explain: Callable[[], object] | None = ...,
) -> T: ...


async def eventually_async(
    predicate: Callable[[], Any],
    timeout: float = 10.0,  # noqa: ASYNC109 - eventually()'s signature, and its failure message
    *,
    interval: float = 0.02,
    explain: Callable[[], object] | None = None,
) -> Any:
    """:func:`eventually` inside an event loop: the loop runs between calls, and ``predicate``
    may be a coroutine function."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if loop.time() >= end:
            _fail(timeout, last, explain)
        await asyncio.sleep(interval)


def _fail(timeout: float, last: object, explain: Callable[[], object] | None) -> NoReturn:
    detail = "" if explain is None else f"\n{explain()}"
    pytest.fail(f"not true within {timeout}s; last value {last!r}{detail}")
