"""Processes the tests start: output to a log file, waited for until ready, always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx


class NotReady(RuntimeError):
    """Raised when a started process exited, or was not ready in time (with its log's end)."""


def launch(
    command: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    group: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``command`` with its output appended to ``log``; ``group``: in a session of its own,
    so :func:`halt` can stop its children too (a script that starts java, a server's workers)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            list(command),
            cwd=cwd,
            env=None if env is None else dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=group,
        )


def tail(log: Path, size: int = 4000) -> str:
    return log.read_text(errors="replace")[-size:] if log.exists() else "(no log)"


def wait_ready(
    process: subprocess.Popen[bytes],
    log: Path,
    ready: Callable[[], bool],
    *,
    timeout: float = 30.0,
    what: str = "the process",
    interval: float = 0.05,
) -> None:
    """Wait until ``ready()``; raise :class:`NotReady` if ``process`` exits first, or after
    ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            raise NotReady(f"{what} exited with {process.returncode}:\n{tail(log)}")
        if time.monotonic() >= end:
            raise NotReady(f"{what} was not ready within {timeout}s:\n{tail(log)}")
        time.sleep(interval)


def halt(process: subprocess.Popen[bytes], *, group: bool = False) -> None:
    """SIGTERM, then SIGKILL if it is still there after 10 s (the whole group with ``group``)."""
    if process.poll() is not None:
        return

    def signal_it(number: int) -> None:
        try:
            if group:
                os.killpg(process.pid, number)
            else:
                process.send_signal(number)
        except ProcessLookupError:
            pass

    signal_it(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        signal_it(signal.SIGKILL)
        process.wait(10)


@contextmanager
def running(
    command: Sequence[str],
    log: Path,
    ready: Callable[[], bool],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    group: bool = False,
    timeout: float = 30.0,
    what: str = "the process",
) -> Iterator[subprocess.Popen[bytes]]:
    """:func:`launch`, :func:`wait_ready`, and :func:`halt` on the way out."""
    process = launch(command, log, env=env, cwd=cwd, group=group)
    try:
        wait_ready(process, log, ready, timeout=timeout, what=what)
        yield process
    finally:
        halt(process, group=group)


def answers(url: str, status: int | None = None) -> bool:
    """``True`` when an HTTP GET of ``url`` is answered with ``status`` (by default: with
    anything below 500)."""
    try:
        answer = httpx.get(url, timeout=1)
    except httpx.TransportError:
        return False
    return answer.status_code < 500 if status is None else answer.status_code == status
