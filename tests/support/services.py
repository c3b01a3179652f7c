"""The reference service (``examples/users_api``) and test apps as real processes on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support import ROOT
from tests.support.ports import free_port
from tests.support.processes import answers, launch, running, wait_ready


@dataclass
class Service:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> bool:
        """SIGTERM, as Cloud Run sends; true when the service shut down cleanly."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=15)
        # uvicorn re-raises the signal once its graceful shutdown is over.
        return code in (0, -signal.SIGTERM) and "Application shutdown complete" in self.output()


def start_service(tmp_path: Path, env: Mapping[str, str], *, deadline: float = 20.0) -> Service:
    """``python -m users_api`` on ``PORT`` (a free one by default), once /healthz answers 200;
    its database is SQLite in ``tmp_path`` unless ``env`` says otherwise."""
    port = int(env.get("PORT") or free_port())
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith("HOMING_") and k != "DATABASE_URL"
    }
    full_env.update(
        PORT=str(port),
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/e2e.db",
        PYTHONPATH=str(ROOT / "examples"),
    )
    full_env.update(env)
    log = tmp_path / f"service-{port}.log"
    process = launch([sys.executable, "-m", "users_api"], log, env=full_env, cwd=tmp_path)
    service = Service(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_ready(
            process,
            log,
            lambda: answers(service.url + "/healthz", 200),
            timeout=deadline,
            what="the reference service",
        )
    except BaseException:
        if process.poll() is None:
            service.stop()
        raise
    return service


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
