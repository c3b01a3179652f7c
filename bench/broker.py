"""`python -m bench.broker`: the local push broker against the official emulator, same receiver.

For each broker (homing's, durable in a SQLite file; the emulator, in memory): one topic, one
wrapped push subscription to the same receiver process (uvicorn, uvloop + httptools, answers
204), then

- throughput: ``--messages`` published as fast as google-cloud-pubsub sends them; messages per
  second from the first publish to the last push received;
- latency: ``--latency`` messages published one at a time (each after the last was received);
  publish-to-handler time (the publisher's clock in an attribute, read by the receiver) p50/p99;
- drain: ``--messages`` published to a subscription without a push endpoint, which keeps them,
  then the endpoint set (ModifyPushConfig); messages per second from that call to the last push
  received. Pushing alone, without the publishing client competing for the same cores.

About half a minute in all (the emulator pushes 20,000 messages in ~10 s); run it on a quiet
machine and read the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tests.support.emulator import find_emulator, running_emulator

from bench.run import free_port, wait_up
from homing.broker.cli import child_broker

PROJECT = "homing-bench"


def receiver() -> Starlette:
    """The push receiver: counts pushes and keeps publish-to-handler latencies (seconds)."""
    state: dict[str, Any] = {"count": 0, "latencies": [], "last": 0.0}

    async def push(request: Request) -> Response:
        body = json.loads(await request.body())
        now = time.time()
        sent = body["message"]["attributes"].get("sent")
        if sent is not None:
            state["latencies"].append(now - float(sent))
        state["count"] += 1
        state["last"] = now
        return Response(status_code=204)

    async def stats(_request: Request) -> Response:
        return JSONResponse(state)

    async def reset(_request: Request) -> Response:
        state.update(count=0, latencies=[], last=0.0)
        return Response(status_code=204)

    return Starlette(
        routes=[
            Route("/push", push, methods=["POST"]),
            Route("/stats", stats),
            Route("/reset", reset, methods=["POST"]),
        ]
    )


@contextmanager
def _receiver() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "bench.broker:receiver",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url + "/stats", process)
        yield url
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def _local_broker(workdir: Path) -> Iterator[str]:
    with child_broker(str(workdir / "bench-broker.sqlite3")) as addresses:
        yield addresses["grpc"]


def _all_pushed(received: Callable[[], dict[str, Any]], messages: int, what: str) -> float:
    """Wait until the receiver has counted ``messages`` pushes; the time of the last one."""
    deadline = time.monotonic() + 120
    while (stats := received())["count"] < messages:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {stats['count']} of {messages} {what} arrived")
        time.sleep(0.05)
    return float(stats["last"])


def _measure(host: str, receiver_url: str, messages: int, latency_runs: int) -> dict[str, float]:
    os.environ["PUBSUB_EMULATOR_HOST"] = host
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic = f"projects/{PROJECT}/topics/bench-{uuid.uuid4().hex[:8]}"
    publisher.create_topic(name=topic)
    subscriber.create_subscription(
        request={
            "name": topic.replace("/topics/", "/subscriptions/"),
            "topic": topic,
            "push_config": {"push_endpoint": receiver_url + "/push"},
            "ack_deadline_seconds": 10,
        }
    )
    client = httpx.Client(base_url=receiver_url)

    def received() -> dict[str, Any]:
        return client.get("/stats").json()  # type: ignore[no-any-return]

    client.post("/reset")
    started = time.time()
    futures = [publisher.publish(topic, b'{"n":%d}' % n) for n in range(messages)]
    for future in futures:
        future.result(timeout=60)
    published = time.time()
    throughput = messages / (_all_pushed(received, messages, "pushes") - started)

    client.post("/reset")
    for n in range(latency_runs):
        publisher.publish(topic, b"{}", sent=repr(time.time())).result(timeout=10)
        while received()["count"] <= n:
            time.sleep(0.001)
    latencies = sorted(received()["latencies"])

    backlog = f"{topic}-backlog"
    publisher.create_topic(name=backlog)
    held = backlog.replace("/topics/", "/subscriptions/")
    subscriber.create_subscription(
        request={"name": held, "topic": backlog, "ack_deadline_seconds": 10}
    )
    for future in [publisher.publish(backlog, b'{"n":%d}' % n) for n in range(messages)]:
        future.result(timeout=60)
    client.post("/reset")
    drain_started = time.time()
    subscriber.modify_push_config(
        request={"subscription": held, "push_config": {"push_endpoint": receiver_url + "/push"}}
    )
    drain = messages / (_all_pushed(received, messages, "backlog pushes") - drain_started)
    subscriber.close()
    publisher.stop()
    return {
        "throughput_msg_s": round(throughput, 1),
        "publish_seconds": round(published - started, 3),
        "latency_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "latency_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "drain_msg_s": round(drain, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # 20,000: long enough to measure both at their steady rate. At 5,000 the local broker's whole
    # run lasts under half a second, mostly the publishing client's start and the push window's
    # slow start; the emulator's lasts two and a half.
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--latency", type=int, default=200)
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as directory, _receiver() as receiver_url:
        workdir = Path(directory)
        with _local_broker(workdir) as host:
            results["homing broker (SQLite, durable)"] = _measure(
                host, receiver_url, args.messages, args.latency
            )
        script = find_emulator()
        if script is None:
            print("the official emulator is not installed: measured the broker only")
        else:
            with running_emulator(script, workdir / "emulator.log") as host:
                results["official emulator (memory)"] = _measure(
                    host, receiver_url, args.messages, args.latency
                )
    for name, figures in results.items():
        print(
            f"{name:34} {figures['throughput_msg_s']:>9.0f} msg/s   "
            f"p50 {figures['latency_p50_ms']:6.2f} ms   p99 {figures['latency_p99_ms']:6.2f} ms   "
            f"drain {figures['drain_msg_s']:>7.0f} msg/s"
        )
    print(json.dumps(results, indent=1))
    if len(results) == 2:
        ours, theirs = results.values()
        print(
            f"throughput ratio: {ours['throughput_msg_s'] / theirs['throughput_msg_s']:.2f}x   "
            f"drain ratio: {ours['drain_msg_s'] / theirs['drain_msg_s']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
