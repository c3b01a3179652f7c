"""examples/quickstart.py, unchanged, served three ways: plain uvicorn on any port, `homing dev`
(through the local broker, OIDC on), and on the official Pub/Sub emulator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from homing.cli import main as homing_cli
from tests.support import ROOT
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

EMAILED = "emailing user 7: your name is now Zoe"


class Served:
    def __init__(self, process: subprocess.Popen[bytes], log: Path, port: int) -> None:
        self.process, self.log, self.port = process, log, port

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def rename(self) -> httpx.Response:
        return httpx.post(
            f"http://127.0.0.1:{self.port}/change-name",
            params={"user_id": 7, "name": "Zoe"},
            timeout=10,
        )

    def wait_for(self, text: str, deadline: float = 20.0) -> None:
        end = time.monotonic() + deadline
        while text not in self.text():
            assert self.process.poll() is None, self.text()
            assert time.monotonic() < end, f"{text!r} never came:\n{self.text()}"
            time.sleep(0.05)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    started: list[Served] = []

    def start(command: Sequence[str], port: int, **env: str) -> Served:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("HOMING_")}
        for name in ("PUBSUB_EMULATOR_HOST", "PORT", "DATABASE_URL"):
            environ.pop(name, None)
        environ.update(env, PYTHONPATH=str(ROOT / "examples"), PYTHONUNBUFFERED="1")
        log = tmp_path / f"served-{port}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", *command],
                cwd=tmp_path,
                env=environ,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        served = Served(process, log, port)
        started.append(served)
        end = time.monotonic() + 40
        while True:
            assert process.poll() is None, served.text()
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                return served
            except httpx.TransportError:
                assert time.monotonic() < end, served.text()
                time.sleep(0.1)

    yield start
    for served in started:
        if served.process.poll() is None:
            os.killpg(served.process.pid, signal.SIGTERM)
            served.process.wait(20)


def test_under_plain_uvicorn_on_any_port(serve: object) -> None:
    # No PORT, no HOMING_LOOPBACK_URL, no keys: the loopback publisher finds the port itself.
    port = free_port()
    served = serve(["uvicorn", "quickstart:app", "--port", str(port)], port)  # type: ignore[operator]
    assert served.rename().status_code == 200
    served.wait_for(EMAILED)
    assert "HOMING_SIGNING_KEYS is not set: signing with a development key" in served.text()


def test_under_homing_dev_through_the_local_broker(serve: object, tmp_path: Path) -> None:
    port = free_port()
    command = ["homing.cli", "dev", "--app", "quickstart:app", "--port", str(port)]
    command += ["--data", str(tmp_path / "broker.sqlite3")]
    served = serve(command, port)  # type: ignore[operator]
    response = served.rename()
    assert response.status_code == 200
    served.wait_for(EMAILED)
    text = served.text()
    assert "with the local broker" in text
    # Through the broker: Pub/Sub's push with its OIDC token, which the app verified.
    assert "HOMING_AUTH=both" not in text  # no configuration error
    assert "loopback" not in text.lower()


def test_on_the_pubsub_emulator(
    serve: object, pubsub_emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    topic, subscription = f"events-{uuid.uuid4().hex[:8]}", f"push-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    flags = ["--project", "homing-e2e", "--topic", topic, "--subscription", subscription]
    flags += ["--push-endpoint", f"http://127.0.0.1:{port}/events", "--ack-deadline", "10"]
    assert homing_cli(["provision", *flags]) == 0
    served = serve(  # type: ignore[operator]
        ["uvicorn", "quickstart:app", "--port", str(port)],
        port,
        HOMING_PUBLISHER="pubsub",
        HOMING_TOPIC=topic,
        GOOGLE_CLOUD_PROJECT="homing-e2e",
        PUBSUB_EMULATOR_HOST=pubsub_emulator,
        HOMING_SIGNING_KEYS="e2e-key:an-e2e-secret-that-is-long-enough",
    )
    assert served.rename().status_code == 200
    served.wait_for(EMAILED)
