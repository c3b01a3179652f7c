"""``WEB_CONCURRENCY``: the container's command runs several worker processes on PostgreSQL,
and refuses them, saying why, on SQLite."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT
from tests.support.postgres import throwaway_cluster
from tests.support.services import Service, users_api_only
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

KEYS = "e2e-key:an-e2e-secret-that-is-long-enough"


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == pid:
            found.append(int(entry.name))
    return found


def _json(url: str) -> list[dict[str, str]]:
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


@users_api_only  # WEB_CONCURRENCY is users_api's command's
def test_several_workers_serve_one_service_on_postgresql(
    service_factory: Callable[..., Service],
) -> None:
    with throwaway_cluster() as cluster:
        service = service_factory(
            {
                "HOMING_SIGNING_KEYS": KEYS,
                "DATABASE_URL": cluster.url(),
                "WEB_CONCURRENCY": "2",
            }
        )
        workers = eventually(lambda: len(_children(service.process.pid)) >= 2 or None)
        assert workers
        # Both workers serving, so neither is still starting when the requests arrive.
        assert eventually(
            lambda: service.output().count("Application startup complete") >= 2,
            timeout=60,
            explain=service.output,
        )
        users = [
            httpx.post(
                f"{service.url}/users", json={"name": f"U{n}", "email": f"u{n}@example.com"}
            ).json()
            for n in range(6)
        ]
        for user in users:
            rename = {"user_id": user["id"], "name": "Renamed"}
            assert httpx.post(f"{service.url}/change-name", json=rename).status_code == 200
        for user in users:  # each event handled once, by whichever worker took its push
            notes = eventually(partial(_json, f"{service.url}/users/{user['id']}/notifications"))
            assert len(notes) == 1
        assert service.stop()
        output = service.output()
        assert "2 process(es)" in output
        assert "died" not in output, output  # no worker was killed as hung and replaced


def _users_api(tmp_path: Path, **environ: str) -> subprocess.CompletedProcess[str]:
    """Run the container's command with ``environ`` until it exits (it refuses to start)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMING_")}
    env.update(PYTHONPATH=str(ROOT / "examples"), HOMING_SIGNING_KEYS=KEYS, **environ)
    return subprocess.run(
        [sys.executable, "-m", "users_api"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("2", "WEB_CONCURRENCY=2 needs PostgreSQL"),
        ("many", "WEB_CONCURRENCY must be a number of processes (1-64), not 'many'"),
    ],
)
def test_workers_are_refused_on_sqlite_and_nonsense_in_one_line(
    tmp_path: Path, value: str, says: str
) -> None:
    done = _users_api(
        tmp_path, DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/one.db", WEB_CONCURRENCY=value
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"users_api: error: {says}")
    assert done.stderr.count("\n") == 1


def test_workers_on_an_unreachable_database_are_refused_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = _users_api(
        tmp_path,
        DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:{port}/none",
        WEB_CONCURRENCY="2",
    )
    assert done.returncode == 2
    assert done.stderr.startswith("users_api: error: cannot create the tables: ")
    assert str(port) in done.stderr
    assert done.stderr.count("\n") == 1
