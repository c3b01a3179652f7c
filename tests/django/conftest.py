from __future__ import annotations

import pytest

from tests.conftest import POSTGRES_URL
from tests.support.djangoproject import configure
from tests.support.required import missing

# Before any test module is collected: they import Django models.
DATABASES = configure(POSTGRES_URL)


@pytest.fixture(params=["default", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> str:
    """A Django database alias: SQLite (``default``) and PostgreSQL (``postgres``)."""
    if request.param not in DATABASES:
        missing(f"PostgreSQL does not answer at {POSTGRES_URL}")
    return str(request.param)
