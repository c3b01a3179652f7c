"""Real processes on loopback: the reference services as `make run` and `make run-django` start
them (the black-box tests run against both)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.support.services import REFERENCE_SERVICES, Service, start_service


@pytest.fixture(params=REFERENCE_SERVICES)
def reference_service(request: pytest.FixtureRequest) -> str:
    """Which reference service a black-box test runs against: both serve the same HTTP API."""
    return str(request.param)


@pytest.fixture
def service_factory(tmp_path: Path, reference_service: str) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(env: Mapping[str, str] | None = None) -> Service:
        service = start_service(tmp_path, env or {}, which=reference_service)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
