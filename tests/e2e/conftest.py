"""Real processes on loopback: the reference service as `make run` starts it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.support.services import Service, start_service


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(env: Mapping[str, str] | None = None) -> Service:
        service = start_service(tmp_path, env or {})
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
