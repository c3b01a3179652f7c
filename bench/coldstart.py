"""Time to ready: the container's command (``python -m users_api``) against a bare FastAPI app
under the same uvicorn, from process start to the first 200 on ``/healthz``.

Cloud Run starts an instance on every scale-out and the request that caused it waits, so this
is what a user pays. The runs alternate (bare, service with loopback, service with Pub/Sub on
the emulator) so that a noisy moment hits every case; each figure is the median of ``runs``.

    PYTHONPATH=examples .venv/bin/python -m bench.coldstart --runs 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from tests.support import ROOT
from tests.support.ports import free_port

KEYS = "bench-key:a-bench-secret-that-is-long-enough"
TOPIC = "projects/bench-coldstart/topics/events"

#: The bare app: FastAPI with one route, served the way the container serves the service.
BARE = """
from fastapi import FastAPI
app = FastAPI()
@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
"""


def _ready_after(command: list[str], env: Mapping[str, str], cwd: Path, port: int) -> float:
    """Seconds from starting ``command`` until ``/healthz`` on ``port`` answers 200."""
    url = f"http://127.0.0.1:{port}/healthz"
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=dict(env), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{command} exited with {process.returncode} before it was ready"
                )
            try:
                if httpx.get(url, timeout=0.5).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            if time.perf_counter() - started > 30:
                raise RuntimeError(f"{command} was not ready within 30 s")
            time.sleep(0.005)
    finally:
        process.terminate()
        process.wait(timeout=15)


@contextmanager
def _emulator(workdir: Path) -> Iterator[str | None]:
    from tests.support.emulator import find_emulator, running_emulator

    script = find_emulator()
    if script is None:
        yield None
        return
    with running_emulator(script, workdir / "emulator.log") as host:
        os.environ["PUBSUB_EMULATOR_HOST"] = host
        from google.cloud import pubsub_v1

        pubsub_v1.PublisherClient().create_topic(name=TOPIC)
        try:
            yield host
        finally:
            del os.environ["PUBSUB_EMULATOR_HOST"]


def run_cold_start(runs: int = 5) -> dict[str, Any]:
    """Medians (seconds) of each case over ``runs`` alternating rounds, and the ratios to the
    bare app's median."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HOMING_")}
    base["PYTHONPATH"] = str(ROOT / "examples")
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, _emulator(Path(tmp)) as emulator:
        workdir = Path(tmp)
        (workdir / "bare_app.py").write_text(BARE)
        cases: dict[str, tuple[list[str], dict[str, str]]] = {
            "bare FastAPI app (uvicorn)": (
                [sys.executable, "-m", "uvicorn", "bare_app:app", "--no-access-log", "--port"],
                {},
            ),
            "python -m users_api, loopback publisher": (
                [sys.executable, "-m", "users_api"],
                {"HOMING_SIGNING_KEYS": KEYS},
            ),
        }
        if emulator is not None:
            cases["python -m users_api, Pub/Sub publisher (emulator)"] = (
                [sys.executable, "-m", "users_api"],
                {
                    "HOMING_SIGNING_KEYS": KEYS,
                    "HOMING_PUBLISHER": "pubsub",
                    "HOMING_TOPIC": TOPIC,
                    "PUBSUB_EMULATOR_HOST": emulator,
                },
            )
        for round_ in range(runs):
            for name, (command, extra) in cases.items():
                port = free_port()
                env = {**base, **extra, "PORT": str(port)}
                env["DATABASE_URL"] = f"sqlite+aiosqlite:///{workdir}/cold-{round_}-{port}.db"
                argv = [*command, str(port)] if command[-1] == "--port" else command
                times.setdefault(name, []).append(_ready_after(argv, env, workdir, port))
    medians = {name: statistics.median(values) for name, values in times.items()}
    bare = medians["bare FastAPI app (uvicorn)"]
    return {
        name: {
            "median_s": round(medians[name], 3),
            "min_s": round(min(values), 3),
            "max_s": round(max(values), 3),
            "vs_bare": round(medians[name] / bare, 2),
        }
        for name, values in times.items()
    }


def report(results: Mapping[str, Mapping[str, float]]) -> None:
    print(f"\n{'time to ready (median of runs)':<52} {'s':>6} {'min-max':>13} {'vs bare':>8}")
    for name, figures in results.items():
        span = f"{figures['min_s']:.2f}-{figures['max_s']:.2f}"
        print(f"{name:<52} {figures['median_s']:>6.2f} {span:>13} {figures['vs_bare']:>7.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    report(run_cold_start(args.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
