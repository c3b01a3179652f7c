"""The official Pub/Sub emulator, started by the tests on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

_KNOWN = Path("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator")


def find_emulator() -> Path | None:
    """The ``cloud-pubsub-emulator`` script of the Debian package, or ``None``."""
    if _KNOWN.exists():
        return _KNOWN
    try:
        listing = subprocess.run(
            ["dpkg", "-L", "google-cloud-cli-pubsub-emulator"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    except FileNotFoundError:
        return None
    for line in listing.splitlines():
        if line.endswith("bin/cloud-pubsub-emulator"):
            return Path(line)
    found = shutil.which("cloud-pubsub-emulator")
    return Path(found) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_emulator(script: Path, log: Path, deadline: float = 60.0) -> Iterator[str]:
    """Start the emulator; yield its ``host:port`` once it answers; stop it afterwards."""
    port = _free_port()
    host = f"127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(script), "--host=127.0.0.1", f"--port={port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        end = time.monotonic() + deadline
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the Pub/Sub emulator exited: {log.read_text()[-2000:]}")
            try:
                if (
                    httpx.get(f"http://{host}/v1/projects/probe/topics", timeout=1).status_code
                    < 500
                ):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > end:
                raise RuntimeError(f"the Pub/Sub emulator did not answer in {deadline}s")
            time.sleep(0.2)
        yield host
    finally:
        # The script starts java as a child: stop the whole group.
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
