"""The official Pub/Sub emulator, started by the tests (and the benchmarks) on loopback."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.ports import free_port
from tests.support.processes import answers, running
from tests.support.required import require

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
        listing = ""
    for line in listing.splitlines():
        if line.endswith("bin/cloud-pubsub-emulator"):
            return Path(line)
    found = shutil.which("cloud-pubsub-emulator")
    return Path(found) if found else None


def required_emulator() -> Path:
    """The emulator's script; a test without it skips on a laptop and fails in CI."""
    script = find_emulator()
    require(
        script,
        "the official Pub/Sub emulator is not installed "
        "(Debian package google-cloud-cli-pubsub-emulator)",
    )
    assert script is not None
    return script


@contextmanager
def running_emulator(
    script: Path, log: Path, deadline: float = 60.0, *, port: int | None = None
) -> Iterator[str]:
    """Start the emulator (on ``port``, or a free one); yield its ``host:port`` once it answers;
    stop it, java and all, afterwards."""
    host = f"127.0.0.1:{port or free_port()}"
    with running(
        [str(script), "--host=127.0.0.1", f"--port={host.rsplit(':', 1)[1]}"],
        log,
        lambda: answers(f"http://{host}/v1/projects/probe/topics"),
        group=True,  # the script starts java as a child
        timeout=deadline,
        what=f"the Pub/Sub emulator on {host}",
    ):
        yield host
