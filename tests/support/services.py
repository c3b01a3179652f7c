"""The reference services (``examples/users_api``, ``examples/django_api``) and test apps as
real processes on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.ports import free_port
from tests.support.processes import answers, launch, running, wait_ready


@dataclass
class Service:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    #: What the log says once it shut down cleanly (Django's ASGI app has no lifespan).
    shut_down: str = "Application shutdown complete"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> bool:
        """SIGTERM, as Cloud Run sends; true when the service shut down cleanly."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=15)
        # uvicorn re-raises the signal once its graceful shutdown is over.
        return code in (0, -signal.SIGTERM) and self.shut_down in self.output()


#: The reference services that serve the same HTTP API: the FastAPI one and the Django one.
REFERENCE_SERVICES = ("users_api", "django_api")
#: For a test of what only users_api has (``/outbox/flush``, ``WEB_CONCURRENCY``, its CLI).
users_api_only = pytest.mark.parametrize("reference_service", ["users_api"])


def start_service(
    tmp_path: Path,
    env: Mapping[str, str],
    *,
    deadline: float = 20.0,
    which: str = "users_api",
) -> Service:
    """``python -m users_api`` on ``PORT`` (a free one by default), once /healthz answers 200;
    its database is SQLite in ``tmp_path`` unless ``env`` says otherwise.

    ``which="django_api"``: the Django reference service instead, migrated, under uvicorn (the
    same HTTP API, SQLite in ``tmp_path`` unless ``env`` gives a PostgreSQL ``DATABASE_URL``).
    """
    port = int(env.get("PORT") or free_port())
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HOMING_")
        and k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE", "PUBSUB_EMULATOR_HOST")
    }
    full_env.update(PORT=str(port), PYTHONPATH=str(ROOT / "examples"))
    if which == "django_api":
        full_env.update(
            DJANGO_SETTINGS_MODULE="django_api.settings",
            DJANGO_API_SQLITE=str(tmp_path / f"django-{port}.sqlite3"),
        )
        full_env.update(env)
        url = full_env.get("DATABASE_URL", "")
        if url.startswith("sqlite"):  # the file users_api would use; Django names it alone
            full_env["DJANGO_API_SQLITE"] = url.partition(":///")[2]
            del full_env["DATABASE_URL"]
        _migrate_django_api(full_env, tmp_path)
        command = ["uvicorn", "django_api.asgi:application", "--host", "127.0.0.1"]
        command += ["--port", str(port)]
    elif which == "users_api":
        full_env["DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path}/e2e.db"
        full_env.update(env)
        command = ["users_api"]
    else:
        raise ValueError(f"no reference service {which!r}: one of {REFERENCE_SERVICES}")
    log = tmp_path / f"service-{port}.log"
    process = launch([sys.executable, "-m", *command], log, env=full_env, cwd=tmp_path)
    service = Service(f"http://127.0.0.1:{port}", process, log)
    if which == "django_api":
        service.shut_down = "Finished server process"
    try:
        wait_ready(
            process,
            log,
            lambda: answers(service.url + "/healthz", 200),
            timeout=deadline,
            what=f"the reference service ({which})",
        )
    except BaseException:
        if process.poll() is None:
            service.stop()
        raise
    return service


def _migrate_django_api(env: Mapping[str, str], cwd: Path) -> None:
    migrated = subprocess.run(
        [sys.executable, "-m", "django_api", "migrate", "--verbosity", "0"],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if migrated.returncode != 0:
        raise RuntimeError(f"django_api migrate failed:\n{migrated.stderr[-4000:]}")


@contextmanager
def serve_test_app(
    factory: str, env: Mapping[str, str], log: Path, *, access_log: bool = False
) -> Iterator[str]:
    """Serve ``tests.e2e.apps:<factory>`` with uvicorn on a free port; yield its URL once up."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "uvicorn", f"tests.e2e.apps:{factory}", "--factory"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    if not access_log:
        command.append("--no-access-log")
    with running(
        command,
        log,
        lambda: answers(url, 404),
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=ROOT,
        timeout=20,
        what=f"tests.e2e.apps:{factory}",
    ):
        yield url


def homing_envelope(event_type: str, data_json: str, keys: str) -> bytes:
    """A signed push body made by ``homing envelope`` in its own process, as an operator would."""
    made = subprocess.run(
        [sys.executable, "-m", "homing.cli", "envelope", event_type, data_json],
        env={"HOMING_SIGNING_KEYS": keys, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
        cwd=ROOT,
        timeout=30,
    )
    return made.stdout
