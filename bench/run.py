"""`make bench`: every hot path side by side with its baseline, in one run.

Each HTTP case is served by uvicorn (uvloop + httptools, one worker, no access log) in its own
process and driven by wrk over loopback with one envelope replayed (after a first delivery, so
homing's cases measure the duplicate path), or with a new event per request. The servers run
pinned to one CPU and wrk to the others, and every case is loaded once per round, in turn:
a ratio to the ceiling is the median of ratios between runs of the same round. Figures are
medians of several rounds with min-max. A new case is one ``HttpCase(...)`` line in ``cases``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.apps import KEYS, RENAME_USERS
from bench.coldstart import report as report_cold_start
from bench.coldstart import run_cold_start
from homing import KeyRing, Signer, build_push
from homing.signing import legacy_signature
from homing.telemetry import TRACEPARENT_ATTRIBUTE

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
UVICORN = ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--workers", "1"]
DATA = b'{"n":1}'
#: The publishing request's trace context, signed into the "traced" envelopes.
TRACE_CONTEXT = {TRACEPARENT_ATTRIBUTE: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
CEILING = "bare starlette (ceiling)"
NAIVE = "naive fastapi + pydantic"
HAND_SQLITE = "hand-written consumer, SQLAlchemy + aiosqlite"
HAND_PG = "hand-written consumer, SQLAlchemy + asyncpg"
RAW_SQLITE = "raw consumer, stdlib sqlite3 inline"
RAW_PG = "raw consumer, asyncpg pool"
TELEMETRY_ON = "homing, memory dedupe, telemetry on"
REFERENCE = "reference service (make run)"
REFERENCE_OFF = "reference service, telemetry off"
REFERENCE_NEW = "reference service, new events"
REFERENCE_NEW_OFF = "reference service, telemetry off, new events"
REFERENCE_PG_NEW = "reference service on postgres, new events"
REFERENCE_PG_NEW_OFF = "reference service on postgres, telemetry off, new events"
HAND_RENAME = "hand-written rename, then publish (raw client)"
DJANGO_NEW = "django reference service, new events"
DJANGO_NEW_OFF = "django reference service, telemetry off, new events"
HAND_DJANGO_PG = "hand-written django view, atomic(), postgres, new events"
HAND_DJANGO = "hand-written django view, atomic(), new events"
#: Settings renamed since: an older revision (--against) is given its own name for them.
RENAMED_SETTINGS = {"HOMING_TELEMETRY": "TELEMETRY"}
#: Cases that serve no homing code: --against serves them once, from the working tree.
BASELINE_CASES = frozenset(
    (
        CEILING,
        NAIVE,
        HAND_SQLITE,
        HAND_PG,
        RAW_SQLITE,
        RAW_PG,
        HAND_RENAME,
        HAND_DJANGO,
        HAND_DJANGO_PG,
    )
)

RENAME_TOPIC = "projects/bench/topics/rename"


def fresh_envelopes(kind: str, count: int) -> bytes:
    """``count`` distinct signed envelopes, one per line, for a load of new events."""
    signer = Signer(KeyRing.from_string(KEYS))
    template, type_name = (
        ('{"user_id":1,"old_name":"a","new_name":"n%d"}', "user.name.changed")
        if kind.startswith("users_api")
        else ('{"n":%d}', "bench.noop")
    )
    secret = KEYS.partition(":")[2]
    context = TRACE_CONTEXT if kind in ("traced", "users_api") else None
    run = uuid.uuid4().hex[:8]  # ids never seen by a server that outlives one load
    lines = []
    for n in range(count):
        data = (template % n).encode()
        if kind == "users_api_legacy":
            attributes = {"event-type": type_name, "signature": legacy_signature(secret, data)}
        else:
            attributes = signer.sign(data, type_name, context=context)
        lines.append(build_push(data, attributes, message_id=f"{run}-{n}", subscription="b"))
    return b"\n".join(lines) + b"\n"


def envelope(kind: str) -> bytes:
    if kind == "users_api_legacy":
        data = b'{"user_id":1,"old_name":"a","new_name":"b"}'
        attributes = {
            "event-type": "user.name.changed",
            "signature": legacy_signature(KEYS.partition(":")[2], data),
        }
        return build_push(
            data, attributes, message_id="bench-1", subscription="projects/b/subscriptions/b"
        )
    if kind == "legacy":
        attributes = {
            "event-type": "bench.noop",
            "signature": legacy_signature(KEYS.partition(":")[2], DATA),
        }
        return build_push(
            DATA, attributes, message_id="bench-1", subscription="projects/b/subscriptions/b"
        )
    if kind == "users_api":  # as the service publishes it with telemetry on: traced
        data = b'{"user_id":1,"old_name":"a","new_name":"b"}'
        attributes = Signer(KeyRing.from_string(KEYS)).sign(
            data, "user.name.changed", context=TRACE_CONTEXT
        )
        return build_push(
            data, attributes, message_id="bench-1", subscription="projects/b/subscriptions/b"
        )
    context = TRACE_CONTEXT if kind == "traced" else None
    attributes = Signer(KeyRing.from_string(KEYS)).sign(DATA, "bench.noop", context=context)
    return build_push(
        DATA, attributes, message_id="bench-1", subscription="projects/b/subscriptions/b"
    )


@dataclass(frozen=True)
class HttpCase:
    name: str
    command: list[str]  # {port} is replaced
    envelope: str = "v1"
    baselines: tuple[str, ...] = (CEILING,)  # compared with these, round by round
    env: Mapping[str, str] = field(default_factory=dict)
    prepare: Callable[[str], None] | None = None  # called with the base URL before the load
    fresh: bool = False  # every request a new event (else one envelope replayed: duplicates)
    renames: bool = False  # POST /change-name, a new name each time (needs the emulator)
    tree: Path | None = None  # served from this checkout of another revision (--against)


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


def _create_users(url: str) -> None:
    for n in range(RENAME_USERS):
        user = {"name": f"u{n}", "email": f"u{n}@example.com"}
        httpx.post(f"{url}/users", json=user).raise_for_status()


def _bench_database(name: str = "homing_bench") -> str:
    """A PostgreSQL database of the bench's own, so it never touches the tests' tables."""
    url = os.environ.get("BENCH_POSTGRES_URL")
    if url:
        return url if name == "homing_bench" else url.rsplit("/", 1)[0] + f"/{name}"
    import asyncio

    import asyncpg

    async def create() -> None:
        connection = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
        try:
            if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    asyncio.run(create())
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


def _consumer(name: str, app: str, database_url: str) -> HttpCase:
    """A hand-written consumer of new events: a baseline for homing's new-event cases."""
    return HttpCase(
        name,
        _uvicorn(app),
        envelope="users_api_legacy",
        env={"BENCH_DATABASE_URL": database_url},
        baselines=(),
        fresh=True,
    )


def _reference(
    name: str,
    env: Mapping[str, str],
    baselines: tuple[str, ...] = (CEILING,),
    *,
    fresh: bool = False,
) -> HttpCase:
    """The reference service as `make run` serves it, on traced pushes of its own event type."""
    return HttpCase(
        name,
        [sys.executable, "-m", "users_api"],
        envelope="users_api",
        env=env,
        baselines=baselines,
        prepare=_create_user,
        fresh=fresh,
    )


def _django(name: str, settings: str, app: str, env: Mapping[str, str], **more: Any) -> HttpCase:
    """A Django service under uvicorn: migrated and given user 1 first, in the same process
    group (so pinned alike), then served; new events of the reference service's type."""
    python = sys.executable
    user = (
        "from django_api.models import User; "
        "User.objects.get_or_create(id=1, defaults={'name': 'a', 'email': 'a@example.com'})"
    )
    script = (
        f"{python} -m django_api migrate --verbosity 0 && "
        f'{python} -m django_api shell --command "{user}" && '
        f"exec {python} -m uvicorn {app} --port {{port}} {' '.join(UVICORN)}"
    )
    return HttpCase(
        name,
        ["sh", "-c", script],
        env={"DJANGO_SETTINGS_MODULE": settings, **env},
        fresh=True,
        **more,
    )


def cases(workdir: Path) -> list[HttpCase]:
    sqlite = f"sqlite+aiosqlite:///{workdir}/bench.db"
    postgres = _bench_database()
    hand_postgres = _bench_database("homing_bench_hand")
    sqlite_dir = f"sqlite+aiosqlite:///{workdir}"
    service_env = {
        "HOMING_SIGNING_KEYS": KEYS,
        "DATABASE_URL": f"{sqlite_dir}/svc.db",
        "PORT": "{port}",
        "PYTHONPATH": str(ROOT / "examples"),
    }
    telemetry_off = {**service_env, "HOMING_TELEMETRY": "off"}
    return [
        HttpCase(CEILING, _uvicorn("bare"), baselines=()),
        HttpCase("homing, memory dedupe", _uvicorn("homing_memory"), baselines=(CEILING, NAIVE)),
        HttpCase(
            "homing, sqlite dedupe", _uvicorn("homing_sql"), env={"BENCH_DATABASE_URL": sqlite}
        ),
        HttpCase(
            "homing, postgres dedupe", _uvicorn("homing_sql"), env={"BENCH_DATABASE_URL": postgres}
        ),
        HttpCase(NAIVE, _uvicorn("naive_fastapi"), envelope="legacy"),
        _reference(REFERENCE, service_env, (CEILING, REFERENCE_OFF)),
        # The same service with HOMING_TELEMETRY=off: what its summary lines, trace, metrics cost.
        _reference(REFERENCE_OFF, {**telemetry_off, "DATABASE_URL": f"{sqlite_dir}/svc-off.db"}),
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
        # New events, against what a careful engineer writes by hand on the same stack (one
        # transaction per event) and on the raw drivers.
        _consumer(HAND_SQLITE, "handwritten_sqlalchemy", f"sqlite+aiosqlite:///{workdir}/h.db"),
        _consumer(HAND_PG, "handwritten_sqlalchemy", hand_postgres),
        _consumer(RAW_SQLITE, "handwritten_raw_sqlite", f"sqlite+aiosqlite:///{workdir}/r.db"),
        _consumer(RAW_PG, "handwritten_raw_asyncpg", hand_postgres),
        # Telemetry on (a JSON summary line per push, the message's trace continued, metrics)
        # beside the same app with it off, on both paths.
        HttpCase(
            TELEMETRY_ON,
            _uvicorn("homing_memory_telemetry"),
            envelope="traced",
            baselines=(CEILING, "homing, memory dedupe"),
        ),
        HttpCase(
            TELEMETRY_ON + ", new events",
            _uvicorn("homing_memory_telemetry"),
            envelope="traced",
            baselines=(CEILING, "homing, memory dedupe, new events"),
            fresh=True,
        ),
        _reference(
            REFERENCE_NEW,
            {**service_env, "DATABASE_URL": f"{sqlite_dir}/new.db"},
            (CEILING, HAND_SQLITE, REFERENCE_NEW_OFF),
            fresh=True,
        ),
        _reference(
            REFERENCE_NEW_OFF,
            {**telemetry_off, "DATABASE_URL": f"{sqlite_dir}/new-off.db"},
            (HAND_SQLITE,),
            fresh=True,
        ),
        _reference(
            REFERENCE_PG_NEW,
            {**service_env, "DATABASE_URL": postgres},
            (HAND_PG, REFERENCE_PG_NEW_OFF),
            fresh=True,
        ),
        _reference(  # (a database of its own: the same event ids would be duplicates there)
            REFERENCE_PG_NEW_OFF,
            {**telemetry_off, "DATABASE_URL": _bench_database("homing_bench_telemetry_off")},
            (HAND_PG,),
            fresh=True,
        ),
        HttpCase(
            "homing, no-op transactional handler, sqlite",
            _uvicorn("homing_sql_transactional"),
            envelope="users_api",
            env={"BENCH_DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/tx.db"},
            baselines=(RAW_SQLITE,),
            fresh=True,
        ),
        # The request side: rename + publish to the official emulator, before the response.
        HttpCase(
            HAND_RENAME,
            _uvicorn("handwritten_rename"),
            env={"BENCH_DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/rename-hand.db"},
            baselines=(),
            renames=True,
        ),
        HttpCase(
            "reference service, /change-name",
            [sys.executable, "-m", "users_api"],
            env={
                **service_env,
                "DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/rename.db",
                "HOMING_PUBLISHER": "pubsub",
                "GOOGLE_CLOUD_PROJECT": "bench",
                "HOMING_TOPIC": "rename",
            },
            baselines=(HAND_RENAME,),
            prepare=_create_users,
            renames=True,
        ),
        HttpCase(
            "homing, no-op transactional handler, postgres",
            _uvicorn("homing_sql_transactional"),
            envelope="users_api",
            env={"BENCH_DATABASE_URL": postgres},
            baselines=(RAW_PG,),
            fresh=True,
        ),
        # Django: examples/django_api (make run-django) on new events, against a hand-written
        # Django view doing the same effect in one atomic() block, on the same server, settings
        # and database (SQLite, as django_api's default). Target: >= 0.7x.
        _django(
            HAND_DJANGO,
            "bench.django_hand",
            "bench.django_hand:application",
            {"DJANGO_API_SQLITE": f"{workdir}/django-hand.sqlite3"},
            envelope="users_api_legacy",
            baselines=(),
        ),
        _django(
            DJANGO_NEW,
            "django_api.settings",
            "django_api.asgi:application",
            {
                "DJANGO_API_SQLITE": f"{workdir}/django-new.sqlite3",
                "HOMING_SIGNING_KEYS": KEYS,
                "PORT": "{port}",
            },
            envelope="users_api",
            baselines=(CEILING, HAND_DJANGO, DJANGO_NEW_OFF),
        ),
        # The same pair on PostgreSQL (databases of their own: Django makes its own tables).
        _django(
            HAND_DJANGO_PG,
            "bench.django_hand",
            "bench.django_hand:application",
            {"DATABASE_URL": _bench_database("homing_bench_django_hand")},
            envelope="users_api_legacy",
            baselines=(),
        ),
        _django(
            "django reference service on postgres, new events",
            "django_api.settings",
            "django_api.asgi:application",
            {
                "DATABASE_URL": _bench_database("homing_bench_django"),
                "HOMING_SIGNING_KEYS": KEYS,
                "PORT": "{port}",
            },
            envelope="users_api",
            baselines=(HAND_DJANGO_PG,),
        ),
        # The same with HOMING_TELEMETRY=off: what the summary line, trace and metrics cost it.
        _django(
            DJANGO_NEW_OFF,
            "django_api.settings",
            "django_api.asgi:application",
            {
                "DJANGO_API_SQLITE": f"{workdir}/django-new-off.sqlite3",
                "HOMING_SIGNING_KEYS": KEYS,
                "HOMING_TELEMETRY": "off",
                "PORT": "{port}",
            },
            envelope="users_api",
            baselines=(HAND_DJANGO,),
        ),
    ]


def checkout(revision: str, workdir: Path) -> Path:
    """``revision`` of this repository, exported into ``workdir`` (no worktree to clean up)."""
    tree = workdir / f"tree-{re.sub(r'[^A-Za-z0-9]+', '-', revision)}"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision],
        capture_output=True,
        check=False,
    )
    if archive.returncode:
        raise SystemExit(
            f"bench: --against {revision}: git archive failed: {archive.stderr.decode().strip()}"
        )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def against(selected: list[HttpCase], revision: str, workdir: Path) -> list[HttpCase]:
    """Every selected homing case twice: as it is, and served from ``revision``'s code (its own
    ``bench/apps.py`` and examples) on databases of its own; the working tree's case is then
    paired with its twin, round by round. The baselines run once."""
    tree = checkout(revision, workdir)
    label = re.sub(r"[^A-Za-z0-9]+", "_", revision).strip("_").lower()
    (workdir / label).mkdir()
    renamed = {new: old for new, old in RENAMED_SETTINGS.items() if not _mentions(tree, new)}
    twins = {}
    for case in selected:
        if case.name in BASELINE_CASES:
            continue
        env = {
            renamed.get(key, key): _elsewhere(value, workdir, label)
            for key, value in case.env.items()
            if key != "PYTHONPATH"
        }
        twins[case.name] = dataclasses.replace(
            case, name=f"{case.name} @{revision}", env=env, tree=tree, baselines=()
        )
    out = []
    for case in selected:
        twin = twins.get(case.name)
        if twin is None:
            out.append(case)
        else:
            out += [dataclasses.replace(case, baselines=(*case.baselines, twin.name)), twin]
    return out


def _mentions(tree: Path, setting: str) -> bool:
    return any(
        setting in path.read_text(errors="replace")
        for folder in ("src", "examples")
        for path in (tree / folder).rglob("*.py")
    )


def _elsewhere(value: str, workdir: Path, label: str) -> str:
    """A database setting moved for a twin: SQLite files in a folder of its own, a PostgreSQL
    database of its own (the revisions' tables may differ)."""
    if value.startswith("postgresql"):
        return _bench_database(f"{value.rsplit('/', 1)[1]}_{label}")
    return value.replace(f"{workdir}/", f"{workdir}/{label}/")


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


def _pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child to ``cpus`` (``None``: no pinning)."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def wrk(
    url: str,
    body_file: Path,
    concurrency: int,
    seconds: int,
    *,
    fresh: bool = False,
    renames: bool = False,
    cpus: set[int] | None = None,
) -> tuple[float, int, float, float]:
    """Requests/s, failed requests, p50 and p99 latency (ms); ``fresh``: one envelope a line."""
    script = body_file.with_suffix(".lua")
    if renames:
        load = (
            f'local n = 0; local run = "{uuid.uuid4().hex[:8]}"\n'
            'request = function() n = n + 1; return wrk.format("POST", "/change-name", '
            '{["Content-Type"] = "application/json"}, string.format('
            f'\'{{"user_id":%d,"name":"%s-%d"}}\', n % {RENAME_USERS} + 1, run, n)) end\n'
        )
    elif fresh:
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
        [
            *("wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s"),
            *("--latency", "-s", str(script), url),
        ],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=_pinned(cpus),
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    failures = sum(int(n) for n in re.findall(r"(?:non2xx|errors)=(\d+)", out))
    if failures:
        print(f"bench: wrk reported failures:\n{out}", file=sys.stderr)
    return rate, failures, _latency_ms(out, "50%"), _latency_ms(out, "99%")


@contextlib.contextmanager
def _emulator_for(selected: list[HttpCase], workdir: Path) -> Iterator[None]:
    """The official emulator, with the renames' topic, while cases that publish to it run."""
    if not any(case.renames for case in selected):
        yield
        return
    from google.cloud import pubsub_v1
    from tests.support.emulator import find_emulator, running_emulator

    script = find_emulator()
    if script is None:
        raise SystemExit("bench: the /change-name cases need the official Pub/Sub emulator")
    with running_emulator(script, workdir / "emulator.log") as host:
        os.environ["PUBSUB_EMULATOR_HOST"] = host
        os.environ["BENCH_TOPIC"] = RENAME_TOPIC
        pubsub_v1.PublisherClient().create_topic(name=RENAME_TOPIC)
        try:
            yield
        finally:
            del os.environ["PUBSUB_EMULATOR_HOST"], os.environ["BENCH_TOPIC"]


def _latency_ms(wrk_output: str, percentile: str) -> float:
    """A percentile from wrk's latency distribution, in milliseconds."""
    found = re.search(rf"^\s+{percentile}\s+([\d.]+)(us|ms|s)\s*$", wrk_output, re.MULTILINE)
    if found is None:
        return float("nan")
    value, unit = float(found.group(1)), found.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


@dataclass
class Server:
    """One case's server, up and prepared, with what its next load needs."""

    case: HttpCase
    url: str
    body: Path
    batch: int = 40_000  # fresh envelopes written per run, resized to the measured rate
    pid: int = 0  # the server's process: its CPU time (and its children's) per request


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) used so far by ``pid`` and the processes under it."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            # After the command's closing parenthesis: utime and stime are fields 14 and 15.
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / _TICKS
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile
    return total


@contextlib.contextmanager
def serving(case: HttpCase, workdir: Path, cpus: set[int] | None) -> Iterator[Server]:
    """Start ``case``'s server (pinned to ``cpus``), deliver its envelope once, yield it."""
    port = free_port()
    env = {**os.environ, **{k: v.replace("{port}", str(port)) for k, v in case.env.items()}}
    root = case.tree or ROOT
    # Another revision's src first: the venv's editable install points at the working tree.
    source = str(root / "src") if case.tree else None
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [source, str(root), str(root / "examples"), env.get("PYTHONPATH")])
    )
    command = [part.replace("{port}", str(port)) for part in case.command]
    log = (workdir / f"{port}.log").open("wb")
    process = subprocess.Popen(
        command,
        env=env,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_pinned(cpus),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_up(url, process)
        except SystemExit:
            log.flush()
            tail = (workdir / f"{port}.log").read_text(errors="replace")[-3000:]
            print(f"bench: {case.name}: the server's log ends with:\n{tail}", file=sys.stderr)
            raise
        if case.prepare:
            case.prepare(url)
        body = workdir / f"{port}.json"
        body.write_bytes(envelope(case.envelope))
        if case.renames:
            first = httpx.post(f"{url}/change-name", json={"user_id": 1, "name": "first"})
        else:
            first = httpx.post(
                f"{url}/events",
                content=body.read_bytes(),
                headers={"content-type": "application/json"},
            )
        if first.status_code != (200 if case.renames else 204):
            raise SystemExit(
                f"bench: {case.name}: first delivery answered {first.status_code}: {first.text}"
            )
        yield Server(case, url, body, pid=process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def load(
    server: Server, concurrency: int, seconds: int, cpus: set[int] | None
) -> tuple[float, float, float]:
    """One wrk run against ``server``: requests/s, p50 and p99 in ms (fresh cases get
    never-seen events)."""
    case = server.case
    for attempt in (1, 2):
        if case.fresh:
            server.body.write_bytes(fresh_envelopes(case.envelope, server.batch))
        rate, failures, p50, p99 = wrk(
            f"{server.url}/events",
            server.body,
            concurrency,
            seconds,
            fresh=case.fresh,
            renames=case.renames,
            cpus=cpus,
        )
        if not failures:
            break
        # Once, a run with failures is measured again (and said so): on a shared machine a
        # database restarted by someone else fails a few requests. Twice is a finding.
        log = server.body.with_suffix(".log").read_text(errors="replace")[-2000:]
        print(
            f"bench: {case.name}: {failures} failed requests (attempt {attempt}); the "
            f"server's log ends with:\n{log}",
            file=sys.stderr,
        )
        if attempt == 2:
            raise SystemExit(f"bench: {case.name}: {failures} failed requests, twice")
    server.batch = min(150_000, int(rate * seconds * 1.5) + 1_000)
    return rate, p50, p99


def cpu_split() -> tuple[set[int] | None, set[int] | None]:
    """CPUs for the servers and for wrk: apart, so neither steals the other's core."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


def run_http(
    selected: list[HttpCase],
    workdir: Path,
    concurrencies: list[int],
    runs: int,
    seconds: int,
    *,
    pin: bool = True,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every case served at once; each round loads every case in turn, so that a ratio is
    taken between runs seconds apart, under the same machine noise."""
    server_cpus, load_cpus = cpu_split() if pin else (None, None)
    rates: dict[str, dict[int, list[float]]] = {
        c.name: {n: [] for n in concurrencies} for c in selected
    }
    latencies: dict[str, dict[int, list[tuple[float, float]]]] = {
        c.name: {n: [] for n in concurrencies} for c in selected
    }
    # The server's CPU time per request (µs): less moved by machine noise than requests/s.
    cpu: dict[str, dict[int, list[float]]] = {
        c.name: {n: [] for n in concurrencies} for c in selected
    }
    with contextlib.ExitStack() as stack:
        servers = []
        for case in selected:
            print(f"bench: starting {case.name} ...", file=sys.stderr, flush=True)
            servers.append(stack.enter_context(serving(case, workdir, server_cpus)))
        for number in range(1, runs + 1):
            print(f"bench: round {number} of {runs} ...", file=sys.stderr, flush=True)
            for concurrency in concurrencies:
                for server in servers:
                    used = cpu_seconds(server.pid)
                    rate, p50, p99 = load(server, concurrency, seconds, load_cpus)
                    used = cpu_seconds(server.pid) - used
                    rates[server.case.name][concurrency].append(rate)
                    cpu[server.case.name][concurrency].append(used / (rate * seconds) * 1e6)
                    latencies[server.case.name][concurrency].append((p50, p99))
    by_name = {case.name: case for case in selected}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name, by_concurrency in rates.items():
        results[name] = {}
        for concurrency, samples in by_concurrency.items():
            figures: dict[str, Any] = {
                "median": statistics.median(samples),
                "min": min(samples),
                "max": max(samples),
                "runs": samples,
                "p50_ms": statistics.median(p50 for p50, _ in latencies[name][concurrency]),
                "p99_ms": statistics.median(p99 for _, p99 in latencies[name][concurrency]),
                "cpu_us": statistics.median(cpu[name][concurrency]),
            }
            for baseline in by_name[name].baselines:
                if baseline in rates:
                    figures[f"vs {baseline}"] = _paired(samples, rates[baseline][concurrency])
                    # CPU per request, the baseline's over this case's: above 1 is cheaper.
                    figures[f"cpu vs {baseline}"] = _paired(
                        cpu[baseline][concurrency], cpu[name][concurrency]
                    )
            results[name][f"c{concurrency}"] = figures
    return results


def _paired(samples: list[float], baselines: list[float]) -> dict[str, float]:
    """Ratios of runs taken in the same round: median with min-max."""
    ratios = [sample / base for sample, base in zip(samples, baselines, strict=True)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def run_signing(rounds: int = 30, number: int = 10_000) -> dict[str, dict[str, Any]]:
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
            hmac.new(secret, _canonical(DATA, covered.items())[0], hashlib.sha256).hexdigest(),
            expected_v1,
        ),
    }
    baselines = {
        "homing verify, v1 scheme": "raw hmac, v1 signed bytes",
        "homing verify, article's format": "raw hmac, data only (article's format)",
    }
    # Interleaved, many short rounds: each round times every case once, and a ratio is taken
    # within a round, so machine noise falls on a case and its baseline alike.
    rates: dict[str, list[float]] = {name: [] for name in cases}
    server_cpus, _ = cpu_split()
    affinity = os.sched_getaffinity(0)
    if server_cpus:  # where the servers ran: away from whatever else this process started
        os.sched_setaffinity(0, server_cpus)
    try:
        for _ in range(rounds):
            for name, fn in cases.items():
                rates[name].append(number / timeit.timeit(fn, number=number))
    finally:
        os.sched_setaffinity(0, affinity)
    results: dict[str, dict[str, Any]] = {}
    for name, samples in rates.items():
        results[name] = {
            "median": statistics.median(samples),
            "min": min(samples),
            "max": max(samples),
        }
        if name in baselines:
            baseline = rates[baselines[name]]
            results[name]["vs raw hmac"] = _paired(samples, baseline)
            # timeit's advice: the fastest run is the least disturbed one.
            results[name]["best vs best"] = max(samples) / max(baseline)
    return results


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_publish_latency(runs: int, count: int = 200) -> dict[str, dict[str, float]]:
    """Publish latency in ms (p50, p99): homing inside an event loop vs raw client calls."""
    import asyncio

    from google.cloud import pubsub_v1
    from tests.support.emulator import find_emulator, running_emulator

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
        retried = 0
        started = time.monotonic()
        failed = True
        try:
            wait_up(url, process)
            _create_user(url)
            samples[0] = _rss_kib(process.pid)

            async def push_all() -> None:
                queue: asyncio.Queue[int] = asyncio.Queue()
                for n in range(1, events + 1):
                    queue.put_nowait(n)
                done = 0

                async def push(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
                    # A connection the server closed under a request is tried again, as
                    # Pub/Sub would redeliver; counted, and reported beside the figures.
                    nonlocal retried
                    for _ in range(2):
                        try:
                            return await client.post(f"{url}/events", content=body)
                        except httpx.TransportError:
                            retried += 1
                    return await client.post(f"{url}/events", content=body)

                async def worker(client: httpx.AsyncClient) -> None:
                    nonlocal done
                    while not queue.empty():
                        n = queue.get_nowait()
                        data = (data_template % n).encode()
                        attributes = signer.sign(data, "user.name.changed")
                        body = build_push(data, attributes, message_id=str(n), subscription="b")
                        response = await push(client, body)
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
            failed = False
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(15)
            log.close()
            tail = (workdir / "service.log").read_text(errors="replace")[-3000:]
            if failed or "Traceback" in tail or process.returncode not in (0, -signal.SIGTERM):
                print(f"bench: memory: the service's log ends with:\n{tail}", file=sys.stderr)
    seconds = time.monotonic() - started
    return {
        "events": events,
        "notifications": len(notes),
        "pushes_retried_after_a_transport_error": retried,
        "seconds": round(seconds, 1),
        "rss_mib": {str(k): round(v / 1024, 1) for k, v in sorted(samples.items())},
    }


def _span(figures: Mapping[str, float]) -> str:
    return f"{figures['min']:,.0f}-{figures['max']:,.0f}"


def _ratio(figures: Mapping[str, Any], baseline: str, key: str = "vs") -> str:
    paired = figures.get(f"{key} {baseline}")
    if paired is None:
        return "-"
    return f"{paired['median']:.2f}x ({paired['min']:.2f}-{paired['max']:.2f})"


def report(
    http: Mapping[str, Mapping[str, Mapping[str, Any]]], ops: Mapping[str, Mapping[str, Any]]
) -> None:
    print(
        f"\n{'case':<46} {'conc':>4} {'req/s median':>12} {'min-max':>13} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} {'vs ceiling, same round':>24}"
    )
    for name, by_concurrency in http.items():
        for conc, f in by_concurrency.items():
            print(
                f"{name:<46} {conc[1:]:>4} {f['median']:>12,.0f} {_span(f):>13} "
                f"{f['p50_ms']:>7.2f} {f['p99_ms']:>7.2f} {f.get('cpu_us', float('nan')):>10.1f} "
                f"{_ratio(f, CEILING):>24}"
            )
    for name, by_concurrency in http.items():
        for conc, f in by_concurrency.items():
            for key in f:
                if key.startswith("vs ") and key != f"vs {CEILING}":
                    print(
                        f"{name} {key} at concurrency {conc[1:]}: {_ratio(f, key[3:])}; "
                        f"by CPU per request {_ratio(f, key[3:], 'cpu vs')}"
                    )
    print(
        f"\n{'operation':<40} {'ops/s median':>12} {'min-max':>17} {'vs raw hmac, same round':>24}"
    )
    for name, f in ops.items():
        print(f"{name:<40} {f['median']:>12,.0f} {_span(f):>17} {_ratio(f, 'raw hmac'):>24}")
    for name, f in ops.items():
        if "best vs best" in f:
            print(f"{name}: fastest run vs raw hmac's fastest: {f['best vs best']:.2f}x")


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
    parser.add_argument("--runs", type=int, default=5, help="rounds over every HTTP case")
    parser.add_argument("--seconds", type=int, default=3, help="length of one wrk run")
    parser.add_argument("--no-pin", action="store_true", help="let servers and wrk share every CPU")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument(
        "--only", nargs="+", help="run only the cases whose name contains one of these"
    )
    parser.add_argument(
        "--skip", nargs="+", help="leave out the cases whose name contains one of these"
    )
    parser.add_argument(
        "--against",
        metavar="REVISION",
        help="serve every selected homing case from this git revision too, paired with it "
        "(a regression check; the revision must serve the same cases: pick them with --only)",
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

    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "pinned": not args.no_pin and cpu_split() != (None, None),
        "started": datetime.now(UTC).isoformat(),
        "http": {},
        "ops": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        selected = [
            case
            for case in cases(workdir)
            if (not args.only or any(part in case.name for part in args.only))
            and not any(part in case.name for part in args.skip or ())
        ]
        if args.against:
            selected = against(selected, args.against, workdir)
        with _emulator_for(selected, workdir):
            http = run_http(
                selected, workdir, args.concurrency, args.runs, args.seconds, pin=not args.no_pin
            )
    ops = run_signing()
    latency = {} if args.only else run_publish_latency(args.runs)
    cold = {} if args.only else run_cold_start(args.runs)
    results["http"], results["ops"], results["publish_latency_ms"] = http, ops, latency
    results["time_to_ready"] = cold
    report(http, ops)
    report_latency(latency)
    if cold:
        report_cold_start(cold)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bench-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(results, indent=2))  # written now: the memory run is long
    if args.memory_events and not args.only:
        print(f"\nbench: pushing {args.memory_events:,} events ...", file=sys.stderr, flush=True)
        memory = run_memory(args.memory_events)
        results["memory"] = memory
        path.write_text(json.dumps(results, indent=2))
        print(
            f"\nreference service RSS (MiB) by events pushed ({memory['seconds']} s): "
            f"{memory['rss_mib']}"
        )
        print(
            f"notifications written: {memory['notifications']} of {memory['events']}; pushes "
            f"retried after a transport error: {memory['pushes_retried_after_a_transport_error']}"
        )
    print(f"\nbench: figures written to {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
