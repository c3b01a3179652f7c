"""homing's pytest plugin (registered through the ``pytest11`` entry point).

Fixtures: ``homing`` (your service; override it or set ``homing_app``), ``homing_publisher``
(records what is published) and ``homing_inline`` (records it and runs its handlers at once).
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator

import pytest

from homing.app import Homing
from homing.errors import HomingError
from homing.loading import homing_of, resolve
from homing.testing._publisher import RecordingPublisher

_INI = "homing_app"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        _INI,
        "the service under test for homing's fixtures, as MODULE:ATTRIBUTE: a Homing, an app "
        "whose state holds one, or a factory of either (default: the HOMING_APP variable)",
        default=None,
    )


@pytest.fixture
def homing(request: pytest.FixtureRequest) -> Homing:
    """Your service's ``Homing``: from ``homing_app`` (ini) or ``HOMING_APP``; or override it."""
    spec = request.config.getini(_INI) or os.environ.get("HOMING_APP")
    if not spec:
        pytest.fail(
            "homing's fixtures need your service: define a `homing` fixture returning your "
            'Homing, or set homing_app = "module:attribute" in pytest\'s configuration',
            pytrace=False,
        )
    try:
        return homing_of(resolve(str(spec)), str(spec))
    except HomingError as exc:
        pytest.fail(f"homing_app: {exc}", pytrace=False)


@pytest.fixture
def homing_publisher(homing: Homing) -> Iterator[RecordingPublisher]:
    """A :class:`~homing.testing.RecordingPublisher` that is ``homing``'s publisher for the test."""
    yield from _installed(homing, RecordingPublisher(homing))


@pytest.fixture
def homing_inline(homing: Homing) -> Iterator[RecordingPublisher]:
    """Like ``homing_publisher``, but each published event is handled before publish returns."""
    yield from _installed(homing, RecordingPublisher(homing, handle=True))


def _installed(
    homing: Homing, recorder: RecordingPublisher
) -> Generator[RecordingPublisher, None, None]:
    previous = homing.publisher
    homing.publisher = recorder
    try:
        yield recorder
    finally:
        homing.publisher = previous
