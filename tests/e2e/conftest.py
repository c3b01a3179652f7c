"""Real processes on loopback: the reference service as `make run` starts it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "users_api"],
            cwd=tmp_path,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    service = Service(f"http://127.0.0.1:{port}", process, log)
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            pytest.fail(f"the service exited with {process.returncode}:\n{service.output()}")
        try:
            if httpx.get(service.url + "/healthz", timeout=1).status_code == 200:
                return service
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    service.stop()
    pytest.fail(f"the service did not answer /healthz within {deadline}s:\n{service.output()}")


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[object]:
    started: list[Service] = []

    def start(env: Mapping[str, str] | None = None) -> Service:
        service = start_service(tmp_path, env or {})
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


@contextmanager
def serve_test_app(
    factory: str, env: Mapping[str, str], log: Path, *, access_log: bool = False
) -> Iterator[str]:
    """Serve ``tests.e2e.apps:<factory>`` with uvicorn on a free port; yield its URL once up."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", f"tests.e2e.apps:{factory}", "--factory"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    if not access_log:
        command.append("--no-access-log")
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={"PATH": "/usr/bin:/bin", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert process.poll() is None, log.read_text(errors="replace")
            try:
                return httpx.get(url, timeout=1).status_code == 404
            except httpx.TransportError:
                return False

        poll(up, deadline=20)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


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


def poll(check: object, *, deadline: float = 10.0, interval: float = 0.05) -> object:
    """Call ``check`` until it returns something truthy, or fail at the deadline."""
    assert callable(check)
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"not true within {deadline}s; last value {last!r}")
