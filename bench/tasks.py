"""``python -m bench.tasks``: delayed events through the local broker's Cloud Tasks API.

Two figures, against a ``homing broker`` process (durable SQLite file, its own CPU time):

- **timeliness**: ``--events`` events (1,000) published with ``at=`` spread over ten seconds
  (``--spread``), starting a few seconds ahead (``--lead``), through
  :class:`~homing.publishers.cloudtasks.CloudTasksPublisher`; each is handled by a homing app
  (HMAC-verified, deduplicated) served by uvicorn in this process. Reported: how many ran
  before their time (the target: none), how many ran more than once (none), and how late the
  others ran, p50 / p99 / max (the target: at most 1 s).
- **publish latency**: ``homing.publish()`` on the Cloud Tasks transport beside the raw
  google-cloud-tasks client creating the same named task (same body size) on the same queue,
  one at a time, interleaved (the order swapped each time), ``--count`` each per round over
  ``--runs`` rounds; p50 per round, and the median of the per-round ratios (the target: at most
  1.2x).

Not a test: the machine may be shared with other work, which moves the figures; say so when
quoting them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from google.cloud import tasks_v2
from pydantic import BaseModel
from starlette.applications import Starlette
from tests.support.ports import free_port
from tests.support.processes import running

from homing import Homing, KeyRing, MemoryPublisher, Signer
from homing.publishers.cloudtasks import CloudTasksPublisher, emulator_client
from homing.starlette import push_route

PARENT = "projects/bench/locations/us-central1"
KEYS = "bench:a-bench-secret-long-enough-to-sign"


class Later(BaseModel):
    n: int
    due: float


@contextlib.contextmanager
def _broker(workdir: Path) -> Iterator[str]:
    port = free_port()
    log = workdir / "broker.log"
    command = [sys.executable, "-m", "homing.cli", "broker", "--port", str(port)]
    command += ["--data", str(workdir / "broker.sqlite3"), "--http-port", "0"]
    with running(
        command, log, lambda: f"on 127.0.0.1:{port}" in log.read_text(), what="homing broker"
    ):
        yield f"127.0.0.1:{port}"


def _homing(queue: str, url: str) -> Homing:
    homing = Homing(
        signer=Signer(KeyRing.from_string(KEYS)),
        publisher=MemoryPublisher(),
        transports={"tasks": CloudTasksPublisher(queue, url=url, service_account=None)},
    )
    homing.event("bench.later", transport="tasks")(Later)
    return homing


@contextlib.asynccontextmanager
async def _serving(homing: Homing, port: int) -> AsyncIterator[None]:
    app = Starlette(routes=[push_route(homing, "/events")])
    server = uvicorn.Server(
        uvicorn.Config(app, port=port, log_level="warning", lifespan="off", access_log=False)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn says it has started by a flag only
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await task


async def _queue(name: str) -> None:
    client = emulator_client(os.environ["CLOUD_TASKS_EMULATOR_HOST"])
    await client.create_queue(parent=PARENT, queue=tasks_v2.Queue(name=f"{PARENT}/queues/{name}"))
    await client.transport.close()  # type: ignore[no-untyped-call]


async def timeliness(events: int, lead: float = 4.0, spread: float = 10.0) -> dict[str, Any]:
    """``events`` events at times spread over ``spread`` seconds, ``lead`` seconds ahead."""
    await _queue("timeliness")
    handled: dict[int, tuple[float, float]] = {}
    runs: dict[int, int] = {}  # handler runs per event: one effect each is the target
    done = asyncio.Event()
    port = free_port()
    homing = _homing(f"{PARENT}/queues/timeliness", f"http://127.0.0.1:{port}/events")

    @homing.handler
    async def record(event: Later) -> None:
        handled.setdefault(event.n, (event.due, time.time()))
        runs[event.n] = runs.get(event.n, 0) + 1
        if len(handled) == events:
            done.set()

    async with _serving(homing, port):
        start = time.time() + lead
        gate = asyncio.Semaphore(32)

        async def publish(n: int) -> None:
            due = start + spread * n / events
            async with gate:
                await homing.publish(Later(n=n, due=due), at=datetime.fromtimestamp(due, UTC))

        began = time.time()
        await asyncio.gather(*(publish(n) for n in range(events)))
        published_in = time.time() - began
        if published_in > lead:
            print(f"bench: publishing took {published_in:.1f} s, past the lead", file=sys.stderr)
        with contextlib.suppress(TimeoutError):  # the figures say how many were handled
            await asyncio.wait_for(done.wait(), timeout=lead + spread + 60)
    await homing.aclose()
    late = sorted(at - due for due, at in handled.values())
    return {
        "events": events,
        "handled": len(handled),
        "ran_more_than_once": sum(1 for count in runs.values() if count > 1),
        "published_in_s": round(published_in, 2),
        "early": sum(1 for x in late if x < 0),
        "late_p50_ms": round(_percentile(late, 0.5) * 1000, 1),
        "late_p99_ms": round(_percentile(late, 0.99) * 1000, 1),
        "late_max_ms": round(max(late) * 1000, 1),
        "over_1s": sum(1 for x in late if x > 1.0),
    }


async def publish_latency(count: int, runs: int) -> dict[str, Any]:
    """p50 of ``homing.publish()`` vs the raw client's ``create_task``, round by round."""
    await _queue("latency")
    queue = f"{PARENT}/queues/latency"
    homing = _homing(queue, "http://127.0.0.1:9/events")  # an hour ahead: never dispatched
    raw = emulator_client(os.environ["CLOUD_TASKS_EMULATOR_HOST"])
    tasks = homing.transports.named["tasks"]
    assert isinstance(tasks, CloudTasksPublisher)
    body = len(tasks.task(homing.sign(Later(n=1, due=0.0))).http_request.body)  # the same size

    async def through_homing(n: int) -> float:
        started = time.perf_counter()
        at = datetime.now(UTC) + timedelta(hours=1)
        await homing.publish(Later(n=n, due=0.0), at=at)
        return time.perf_counter() - started

    async def through_raw(n: int) -> float:
        started = time.perf_counter()
        name = f"raw-{n}-{time.time_ns()}"
        task = tasks_v2.Task(
            name=f"{queue}/tasks/{hashlib.sha256(name.encode()).hexdigest()[:8]}-{name}",
            schedule_time=datetime.now(UTC) + timedelta(hours=1),
            http_request=tasks_v2.HttpRequest(
                url="http://127.0.0.1:9/events",
                headers={"Content-Type": "application/json"},
                body=b"x" * body,
            ),
        )
        await raw.create_task(parent=queue, task=task)
        return time.perf_counter() - started

    await through_homing(-1)  # warm up both channels
    await through_raw(-1)
    rounds: list[dict[str, float]] = []
    for r in range(runs):
        homing_ms, raw_ms = [], []
        for n in range(count):  # interleaved, the order swapped each time: no side is favoured
            first, second = (
                (through_homing, through_raw) if n % 2 else (through_raw, through_homing)
            )
            one, other = await first(r * count + n), await second(r * count + n)
            homing_ms.append((one if first is through_homing else other) * 1000)
            raw_ms.append((other if first is through_homing else one) * 1000)
        rounds.append(
            {"homing_p50": _percentile(homing_ms, 0.5), "raw_p50": _percentile(raw_ms, 0.5)}
        )
    await homing.aclose()
    await raw.transport.close()  # type: ignore[no-untyped-call]
    ratios = [r["homing_p50"] / r["raw_p50"] for r in rounds]
    return {
        "count": count,
        "runs": runs,
        "homing_p50_ms": round(statistics.median(r["homing_p50"] for r in rounds), 3),
        "raw_p50_ms": round(statistics.median(r["raw_p50"] for r in rounds), 3),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        "raw_body_bytes": body,
    }


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if not args.skip_timeliness:
        lead = args.lead if args.lead is not None else 4.0 + max(0, args.events - 1000) / 200
        spread = args.spread if args.spread is not None else max(10.0, args.events / 100)
        results["timeliness"] = await timeliness(args.events, lead, spread)
    if not args.skip_latency:
        results["publish_latency"] = await publish_latency(args.count, args.runs)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument(
        "--lead",
        type=float,
        help="seconds from the first publish to the first due time (default: 4, and 1 more "
        "per 200 events past 1,000, so every event is published before any is due)",
    )
    parser.add_argument(
        "--spread",
        type=float,
        help="seconds over which the due times spread (default: 10, or one per 100 events)",
    )
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-timeliness", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, _broker(Path(tmp)) as host:
        os.environ["CLOUD_TASKS_EMULATOR_HOST"] = host
        print(json.dumps(asyncio.run(main(arguments)), indent=2))
