"""`make bench`: every hot path side by side with its baseline, in one run.

Each HTTP case is served by uvicorn (uvloop + httptools, one worker, no access log) in its own
process and driven by wrk over loopback with one envelope replayed (after a first delivery, so
homing's cases measure the duplicate path). Figures are medians of several runs with min-max.
A new case is one ``HttpCase(...)`` line in ``CASES``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.apps import KEYS
from homing import KeyRing, Signer, build_push
from homing.signing import legacy_signature

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
UVICORN = ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--workers", "1"]
DATA = b'{"n":1}'


def fresh_envelopes(kind: str, count: int) -> bytes:
    """``count`` distinct signed envelopes, one per line, for a load of new events."""
    signer = Signer(KeyRing.from_string(KEYS))
    template, type_name = (
        ('{"user_id":1,"old_name":"a","new_name":"n%d"}', "user.name.changed")
        if kind == "users_api"
        else ('{"n":%d}', "bench.noop")
    )
    lines = []
    for n in range(count):
        data = (template % n).encode()
        attributes = signer.sign(data, type_name)
        lines.append(build_push(data, attributes, message_id=str(n), subscription="b"))
    return b"\n".join(lines) + b"\n"


def envelope(kind: str) -> bytes:
    if kind == "legacy":
        attributes = {
            "event-type": "bench.noop",
            "signature": legacy_signature(KEYS.partition(":")[2], DATA),
        }
        return build_push(
            DATA, attributes, message_id="bench-1", subscription="projects/b/subscriptions/b"
        )
    if kind == "users_api":
        data = b'{"user_id":1,"old_name":"a","new_name":"b"}'
        attributes = Signer(KeyRing.from_string(KEYS)).sign(data, "user.name.changed")
        return build_push(
            data, attributes, message_id="bench-1", subscription="projects/b/subscriptions/b"
        )
    attributes = Signer(KeyRing.from_string(KEYS)).sign(DATA, "bench.noop")
    return build_push(
        DATA, attributes, message_id="bench-1", subscription="projects/b/subscriptions/b"
    )


@dataclass(frozen=True)
class HttpCase:
    name: str
    command: list[str]  # {port} is replaced
    envelope: str = "v1"
    baseline: str | None = "bare"
    env: Mapping[str, str] = field(default_factory=dict)
    prepare: Callable[[str], None] | None = None  # called with the base URL before the load
    fresh: bool = False  # every request a new event (else one envelope replayed: duplicates)


def _uvicorn(app: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        f"bench.apps:{app}",
        "--factory",
        "--port",
        "{port}",
        *UVICORN,
    ]


def _create_user(url: str) -> None:
    httpx.post(f"{url}/users", json={"name": "a", "email": "a@example.com"}).raise_for_status()


def _bench_database() -> str:
    """A PostgreSQL database of the bench's own, so it never touches the tests' tables."""
    url = os.environ.get("BENCH_POSTGRES_URL")
    if url:
        return url
    import asyncio

    import asyncpg

    async def create() -> None:
        connection = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
        try:
            if not await connection.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = 'homing_bench'"
            ):
                await connection.execute("CREATE DATABASE homing_bench")
        finally:
            await connection.close()

    asyncio.run(create())
    return "postgresql+asyncpg://postgres@127.0.0.1:5432/homing_bench"


def cases(workdir: Path) -> list[HttpCase]:
    sqlite = f"sqlite+aiosqlite:///{workdir}/bench.db"
    postgres = _bench_database()
    service_env = {
        "HOMING_SIGNING_KEYS": KEYS,
        "DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/svc.db",
        "PORT": "{port}",
        "PYTHONPATH": str(ROOT / "examples"),
    }
    return [
        HttpCase("bare starlette (ceiling)", _uvicorn("bare"), baseline=None),
        HttpCase("homing, memory dedupe", _uvicorn("homing_memory")),
        HttpCase(
            "homing, sqlite dedupe", _uvicorn("homing_sql"), env={"BENCH_DATABASE_URL": sqlite}
        ),
        HttpCase(
            "homing, postgres dedupe", _uvicorn("homing_sql"), env={"BENCH_DATABASE_URL": postgres}
        ),
        HttpCase("naive fastapi + pydantic", _uvicorn("naive_fastapi"), envelope="legacy"),
        HttpCase(
            "reference service (make run)",
            [sys.executable, "-m", "users_api"],
            envelope="users_api",
            env=service_env,
            prepare=_create_user,
        ),
        # New events: every request claims, runs the handler and marks done.
        HttpCase("homing, memory dedupe, new events", _uvicorn("homing_memory"), fresh=True),
        HttpCase(
            "homing, sqlite dedupe, new events",
            _uvicorn("homing_sql"),
            env={"BENCH_DATABASE_URL": sqlite.replace("bench.db", "fresh.db")},
            fresh=True,
        ),
        HttpCase(
            "homing, postgres dedupe, new events",
            _uvicorn("homing_sql"),
            env={"BENCH_DATABASE_URL": postgres},
            fresh=True,
        ),
        HttpCase(
            "reference service, new events",
            [sys.executable, "-m", "users_api"],
            envelope="users_api",
            env={**service_env, "DATABASE_URL": service_env["DATABASE_URL"].replace("svc", "new")},
            prepare=_create_user,
            fresh=True,
        ),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, process: subprocess.Popen[bytes], deadline: float = 30) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            raise SystemExit(f"bench: the server for {url} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"bench: {url} did not come up within {deadline}s")


_WRK_DONE = (
    'done = function(s) io.write(string.format("non2xx=%d errors=%d\\n", s.errors.status, '
    "s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout)) end\n"
)


def wrk(
    url: str, body_file: Path, concurrency: int, seconds: int, *, fresh: bool = False
) -> tuple[float, int]:
    """Requests/s and failed requests; ``fresh``: the file holds one envelope per line."""
    script = body_file.with_suffix(".lua")
    if fresh:
        load = (
            f'local bodies = {{}}; for line in io.lines("{body_file}") do '
            "bodies[#bodies + 1] = line end\nlocal i = 0\n"
            'request = function() i = i % #bodies + 1; return wrk.format("POST", nil, '
            '{["Content-Type"] = "application/json"}, bodies[i]) end\n'
        )
    else:
        load = (
            f'local f = io.open("{body_file}", "rb"); local body = f:read("*a"); f:close()\n'
            'wrk.method = "POST"; wrk.body = body; wrk.headers["Content-Type"] = '
            '"application/json"\n'
        )
    script.write_text(load + _WRK_DONE)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    failures = sum(int(n) for n in re.findall(r"(?:non2xx|errors)=(\d+)", out))
    return rate, failures


def run_http(
    case: HttpCase, workdir: Path, concurrencies: list[int], runs: int, seconds: int
) -> dict[str, dict[str, float]]:
    port = free_port()
    env = {**os.environ, **{k: v.replace("{port}", str(port)) for k, v in case.env.items()}}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [part.replace("{port}", str(port)) for part in case.command]
    log = (workdir / f"{port}.log").open("wb")
    process = subprocess.Popen(command, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url, process)
        if case.prepare:
            case.prepare(url)
        body = workdir / f"{port}.json"
        body.write_bytes(envelope(case.envelope))
        first = httpx.post(
            f"{url}/events", content=body.read_bytes(), headers={"content-type": "application/json"}
        )
        if first.status_code != 204:
            raise SystemExit(
                f"bench: {case.name}: first delivery answered {first.status_code}: {first.text}"
            )
        figures: dict[str, dict[str, float]] = {}
        batch = 40_000
        for concurrency in concurrencies:
            rates = []
            for _ in range(runs):
                if case.fresh:  # never-seen events for every request of this run
                    body.write_bytes(fresh_envelopes(case.envelope, batch))
                rate, failures = wrk(f"{url}/events", body, concurrency, seconds, fresh=case.fresh)
                batch = min(150_000, int(rate * seconds * 1.5) + 1_000)
                if failures:
                    raise SystemExit(f"bench: {case.name}: {failures} failed requests")
                rates.append(rate)
            figures[f"c{concurrency}"] = {
                "median": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
            }
        return figures
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def run_signing(runs: int, number: int = 50_000) -> dict[str, dict[str, float]]:
    """Signing and verification ops/s beside raw ``hmac`` doing the same cryptographic work."""
    import hashlib
    import hmac

    from homing.signing import _canonical

    secret_text = KEYS.partition(":")[2]
    secret = secret_text.encode()
    signer = Signer(KeyRing.from_string(KEYS), legacy_secret=secret_text)
    attributes = signer.sign(DATA, "bench.noop")
    covered = {k: v for k, v in attributes.items() if k != "homing-signature"}
    expected_v1 = attributes["homing-signature"][3:]
    legacy = {"event-type": "bench.noop", "signature": legacy_signature(secret_text, DATA)}

    cases: dict[str, Callable[[], object]] = {
        "homing verify, v1 scheme": lambda: signer.verify(DATA, attributes, message_id="m"),
        "homing verify, article's format": lambda: signer.verify(DATA, legacy, message_id="m"),
        "homing sign, v1 scheme": lambda: signer.sign(DATA, "bench.noop"),
        # What a hand-written check of the same bytes costs: the like-for-like baselines.
        "raw hmac, data only (article's format)": lambda: hmac.compare_digest(
            hmac.new(secret, DATA, hashlib.sha256).hexdigest(), legacy["signature"]
        ),
        "raw hmac, v1 signed bytes": lambda: hmac.compare_digest(
            hmac.new(secret, _canonical(DATA, covered.items()), hashlib.sha256).hexdigest(),
            expected_v1,
        ),
    }
    # Interleaved: each round times every case once, so machine noise falls on all alike.
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(max(runs, 5)):
        for name, fn in cases.items():
            rates[name].append(number / timeit.timeit(fn, number=number))
    return {
        name: {"median": statistics.median(r), "min": min(r), "max": max(r)}
        for name, r in rates.items()
    }


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_publish_latency(runs: int, count: int = 200) -> dict[str, dict[str, float]]:
    """Publish latency in ms (p50, p99): homing inside an event loop vs raw client calls."""
    import asyncio

    from google.cloud import pubsub_v1
    from tests.emulator import find_emulator, running_emulator

    from bench.apps import Noop, _homing
    from homing.publishers.pubsub import PubSubPublisher

    script = find_emulator()
    if script is None:
        print(
            "bench: the Pub/Sub emulator is not installed; publish latency skipped", file=sys.stderr
        )
        return {}
    results: dict[str, list[dict[str, float]]] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_emulator(script, Path(tmp) / "emu.log") as host,
    ):
        os.environ["PUBSUB_EMULATOR_HOST"] = host
        topic = "projects/bench/topics/latency"
        pubsub_v1.PublisherClient().create_topic(name=topic)

        def raw(client: pubsub_v1.PublisherClient) -> list[float]:
            client.publish(topic, b"warm-up").result()
            samples = []
            for _ in range(count):
                started = time.perf_counter()
                client.publish(topic, DATA, **{"event-type": "bench.noop"}).result()
                samples.append((time.perf_counter() - started) * 1000)
            return samples

        async def through_homing() -> list[float]:
            homing = _homing()
            homing.publisher = PubSubPublisher(topic)
            await homing.publish(Noop(n=0))
            samples = []
            for n in range(count):
                started = time.perf_counter()
                await homing.publish(Noop(n=n))
                samples.append((time.perf_counter() - started) * 1000)
            await homing.aclose()
            return samples

        zero = pubsub_v1.types.BatchSettings(max_latency=0)
        for _ in range(runs):
            for name, samples in (
                ("raw publish().result(), default batching", raw(pubsub_v1.PublisherClient())),
                (
                    "raw publish().result(), max_latency=0",
                    raw(pubsub_v1.PublisherClient(batch_settings=zero)),
                ),
                ("homing.publish() (PubSubPublisher)", asyncio.run(through_homing())),
            ):
                results.setdefault(name, []).append(
                    {"p50": _percentile(samples, 0.5), "p99": _percentile(samples, 0.99)}
                )
        del os.environ["PUBSUB_EMULATOR_HOST"]
    return {
        name: {
            "p50": statistics.median(r["p50"] for r in rows),
            "p99": statistics.median(r["p99"] for r in rows),
            "p50_min": min(r["p50"] for r in rows),
            "p50_max": max(r["p50"] for r in rows),
        }
        for name, rows in results.items()
    }


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def run_memory(
    events: int = 100_000, concurrency: int = 32, database_url: str | None = None
) -> dict[str, object]:
    """The reference service's RSS while ``events`` distinct events are pushed to it."""
    import asyncio

    checkpoints = sorted({events // 10, events // 4, events // 2, 3 * events // 4, events})
    data_template = '{"user_id":1,"old_name":"a","new_name":"n%d"}'
    signer = Signer(KeyRing.from_string(KEYS))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        port = free_port()
        env = {
            **os.environ,
            "PORT": str(port),
            "HOMING_SIGNING_KEYS": KEYS,
            "DATABASE_URL": database_url or f"sqlite+aiosqlite:///{workdir}/memory.db",
            "PYTHONPATH": str(ROOT / "examples"),
        }
        log = (workdir / "service.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "users_api"], env=env, cwd=workdir, stdout=log, stderr=log
        )
        url = f"http://127.0.0.1:{port}"
        samples: dict[int, int] = {}
        started = time.monotonic()
        try:
            wait_up(url, process)
            _create_user(url)
            samples[0] = _rss_kib(process.pid)

            async def push_all() -> None:
                queue: asyncio.Queue[int] = asyncio.Queue()
                for n in range(1, events + 1):
                    queue.put_nowait(n)
                done = 0

                async def worker(client: httpx.AsyncClient) -> None:
                    nonlocal done
                    while not queue.empty():
                        n = queue.get_nowait()
                        data = (data_template % n).encode()
                        attributes = signer.sign(data, "user.name.changed")
                        body = build_push(data, attributes, message_id=str(n), subscription="b")
                        response = await client.post(f"{url}/events", content=body)
                        if response.status_code != 204:
                            raise SystemExit(
                                f"bench: memory: push {n} answered {response.status_code}"
                            )
                        done += 1
                        if done in checkpoints:
                            samples[done] = _rss_kib(process.pid)

                limits = httpx.Limits(max_connections=concurrency)
                async with httpx.AsyncClient(limits=limits, timeout=30) as client:
                    await asyncio.gather(*(worker(client) for _ in range(concurrency)))

            asyncio.run(push_all())
            notes = httpx.get(f"{url}/users/1/notifications", timeout=60).json()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(15)
            log.close()
            tail = (workdir / "service.log").read_text(errors="replace")[-3000:]
            if "Traceback" in tail or process.returncode not in (0, -signal.SIGTERM):
                print(f"bench: memory: the service's log ends with:\n{tail}", file=sys.stderr)
    seconds = time.monotonic() - started
    return {
        "events": events,
        "notifications": len(notes),
        "seconds": round(seconds, 1),
        "rss_mib": {str(k): round(v / 1024, 1) for k, v in sorted(samples.items())},
    }


def _span(figures: Mapping[str, float]) -> str:
    return f"{figures['min']:,.0f}-{figures['max']:,.0f}"


def report(
    http: Mapping[str, Mapping[str, Mapping[str, float]]], ops: Mapping[str, Mapping[str, float]]
) -> None:
    print(f"\n{'case':<34} {'conc':>4} {'req/s median':>13} {'min-max':>17} {'vs ceiling':>10}")
    ceiling = http.get("bare starlette (ceiling)", {})
    for name, figures in http.items():
        for conc, f in figures.items():
            base = ceiling.get(conc, {}).get("median")
            ratio = f"{f['median'] / base:.2f}x" if base else "-"
            print(f"{name:<34} {conc[1:]:>4} {f['median']:>13,.0f} {_span(f):>17} {ratio:>10}")
    naive = http.get("naive fastapi + pydantic", {})
    memory = http.get("homing, memory dedupe", {})
    for conc in memory:
        if conc in naive:
            times = memory[conc]["median"] / naive[conc]["median"]
            print(
                f"homing (memory dedupe) vs naive fastapi at concurrency {conc[1:]}: {times:.2f}x"
            )
    baselines = {
        "homing verify, v1 scheme": "raw hmac, v1 signed bytes",
        "homing verify, article's format": "raw hmac, data only (article's format)",
    }
    print(f"\n{'operation':<40} {'ops/s median':>13} {'min-max':>21} {'vs raw hmac':>11}")
    for name, f in ops.items():
        baseline = baselines.get(name)
        ratio = f"{f['median'] / ops[baseline]['median']:.2f}x" if baseline else "-"
        print(f"{name:<40} {f['median']:>13,.0f} {_span(f):>21} {ratio:>11}")


def report_latency(latency: Mapping[str, Mapping[str, float]]) -> None:
    if not latency:
        return
    zero = latency["raw publish().result(), max_latency=0"]["p50"]
    default = latency["raw publish().result(), default batching"]["p50"]
    print(f"\n{'publish latency (ms)':<42} {'p50':>7} {'p50 min-max':>13} {'p99':>7}")
    for name, f in latency.items():
        span = f"{f['p50_min']:.2f}-{f['p50_max']:.2f}"
        print(f"{name:<42} {f['p50']:>7.2f} {span:>13} {f['p99']:>7.2f}")
    homing = latency["homing.publish() (PubSubPublisher)"]["p50"]
    print(
        f"homing p50 vs raw max_latency=0: {homing / zero:.2f}x; "
        f"raw default batching vs homing: {default / homing:.1f}x slower"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument(
        "--only", nargs="+", help="run only the cases whose name contains one of these"
    )
    parser.add_argument(
        "--memory-events",
        type=int,
        default=100_000,
        help="distinct events pushed while the service's RSS is sampled (0: skip)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit(
            "bench: wrk is not installed (Debian: apt-get install wrk); `make bench` installs it"
        )

    results: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "started": datetime.now(UTC).isoformat(),
        "http": {},
        "ops": {},
    }
    http: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for case in cases(workdir):
            if args.only and not any(part in case.name for part in args.only):
                continue
            print(f"bench: {case.name} ...", file=sys.stderr, flush=True)
            http[case.name] = run_http(case, workdir, args.concurrency, args.runs, args.seconds)
    ops = run_signing(args.runs)
    latency = {} if args.only else run_publish_latency(args.runs)
    memory = run_memory(args.memory_events) if args.memory_events and not args.only else {}
    results["http"], results["ops"], results["publish_latency_ms"] = http, ops, latency
    results["memory"] = memory

    report(http, ops)
    report_latency(latency)
    if memory:
        rss = memory["rss_mib"]
        assert isinstance(rss, dict)
        print(f"\nreference service RSS (MiB) by events pushed ({memory['seconds']} s): {rss}")
        print(f"notifications written: {memory['notifications']} of {memory['events']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bench-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nbench: figures written to {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
