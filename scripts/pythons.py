"""The other Pythons homing supports: a venv each, the suite on each, and their locks.

The supported versions are pyproject.toml's classifiers (``Programming Language :: Python ::
3.X``). The one running this script builds ``.venv`` and runs the whole suite (the Makefile);
each other one gets ``.venv-3.X``, built the same way from pyproject.toml and pinned by the
development lock, and runs the suite without the tests that start real processes or build the
distribution (those run once, on ``.venv``'s Python). An interpreter is ``python3.X`` on PATH,
else pyenv's newest 3.X. Under CI (``CI`` set) one not found fails, naming it; elsewhere it is
skipped, saying so.

    python scripts/pythons.py test [PYTEST ARGS]   # `make test-pythons`
    python scripts/pythons.py test --beside CMD... # `make test`: beside .venv's whole suite
    python scripts/pythons.py lock                 # `make lock`, after requirements/dev.lock

``--beside CMD`` runs CMD (``make test``: .venv's whole suite) in the foreground while each
other version builds its venv and runs its suite in a lane of its own behind it, printed
whole once it is over. A pytest run is one process, and the end-to-end tests mostly wait on
the processes they start: run one after another, the suites kept about one core busy of two.
Each other version's suite gets a PostgreSQL database of its own (``test_py3X`` beside
``test``), made when missing, so suites running at once never drop each other's tables.

``lock`` resolves the development extra on each other version with requirements/dev.lock as
constraints: where that installs exactly what the lock pins, the one lock serves; where it does
not (a pin with no build for that version, a dependency only that version needs), that version
gets requirements/dev-3.X.lock of its own, made by the same pip freeze. A version in
``PINNED_APART`` always gets its own, with those pins in place of dev.lock's (Python 3.13 runs
Django 6; the others Django 5.2 LTS).

Only the standard library: it runs before any venv exists.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEV_LOCK = ROOT / "requirements" / "dev.lock"
#: What a version's lock pins apart from dev.lock on purpose (``make lock`` keeps it so). The
#: newest Python runs the newest Django: 6, whose own ``django.tasks`` homing's backend then
#: uses, while the others run 5.2 LTS with the django-tasks backport; both are tested.
PINNED_APART = {"3.13": {"django": "6.0.10"}}
#: What the other versions leave out: the end-to-end tests (real processes over loopback, the
#: emulator, the broker) and the distribution's build and install, which run on .venv's Python.
MARKERS = "not e2e and not dist"
#: The suite's PostgreSQL database (tests/conftest.py reads the same variable, same default).
POSTGRES_URL = os.environ.get(
    "HOMING_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
_DATABASE = re.compile(r"/(?P<name>[^/?]+)(?P<query>\?.*)?$")
#: Run by a venv's Python: make the database named argv[2] on the server of argv[1] (a libpq
#: address of another database there) unless it exists.
_CREATE_DATABASE = """
import asyncio, sys
import asyncpg

async def main(dsn, name):
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await connection.execute('CREATE DATABASE "%s"' % name.replace('"', '""'))
    finally:
        await connection.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""
_CLASSIFIER = re.compile(r"Programming Language :: Python :: (3\.\d+)$")
_RELEASE = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def supported() -> list[str]:
    """The minor versions pyproject.toml's classifiers name, oldest first."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    versions = {m[1] for c in project["classifiers"] if (m := _CLASSIFIER.match(c))}
    return sorted(versions, key=lambda v: tuple(map(int, v.split("."))))


def others() -> list[str]:
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    return [version for version in supported() if version != running]


def interpreter(version: str) -> str | None:
    """``python3.X`` if it runs as 3.X (a pyenv shim on PATH may refuse), else pyenv's newest."""
    candidates = [shutil.which(f"python{version}")]
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    releases = [p for p in pyenv.glob(f"{version}.*") if _RELEASE.fullmatch(p.name)]
    for release in sorted(releases, key=lambda p: int(p.name.rsplit(".", 1)[1]), reverse=True):
        candidates.append(str(release / "bin" / f"python{version}"))
    for candidate in candidates:
        if candidate and _runs_as(candidate, version):
            return candidate
    return None


def _runs_as(python: str, version: str) -> bool:
    try:
        run = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return False
    return run.returncode == 0 and run.stdout.strip() == version


def lock_for(version: str) -> Path:
    """The lock that pins ``version``: its own where ``make lock`` made one, else dev.lock."""
    own = DEV_LOCK.with_name(f"dev-{version}.lock")
    return own if own.exists() else DEV_LOCK


def _pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", *args], cwd=ROOT, check=True)


def _install(python: str, venv: Path, constraints: Path | None) -> None:
    """The development extra into ``venv``, editable, as the Makefile builds .venv."""
    if not (venv / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
    _pip(venv, "install", "--quiet", "--upgrade", "pip")
    pinned = ["-c", str(constraints)] if constraints else []
    _pip(venv, "install", "--quiet", *pinned, "-e", ".[dev]")


def _freeze(venv: Path) -> list[str]:
    frozen = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [line for line in frozen if line and not line.startswith("-e")]


def _name(requirement: str) -> str:
    name, _, version = requirement.partition("==")
    return re.sub(r"[-_.]+", "-", name).lower() + "==" + version


def unpinned(venv: Path, lock: Path) -> list[str]:
    """What ``venv`` holds that ``lock`` does not pin at that version (none, if nothing drifted)."""
    pins = {_name(line) for line in lock.read_text().splitlines() if "==" in line}
    return [line for line in _freeze(venv) if _name(line) not in pins]


def _missing(version: str) -> bool:
    """Say that ``version`` is not found; true when that fails the run (under CI)."""
    if os.environ.get("CI"):
        print(
            f"pythons: FAILED: Python {version} is supported (pyproject.toml's classifiers) and "
            f"required in CI, and no interpreter was found (python{version} on PATH, or pyenv's)",
            file=sys.stderr,
        )
        return True
    print(
        f"pythons: skipping Python {version}: no interpreter found (python{version} on PATH, "
        "or pyenv's); CI requires it",
        file=sys.stderr,
    )
    return False


def venv_for(version: str, python: str) -> Path:
    """``.venv-3.X``, (re)built when pyproject.toml or its lock changed since it was."""
    venv = ROOT / f".venv-{version}"
    stamp = venv / ".installed"
    lock = lock_for(version)
    sources = (ROOT / "pyproject.toml", lock)
    if stamp.exists() and all(s.stat().st_mtime <= stamp.stat().st_mtime for s in sources):
        return venv
    print(f"pythons: building {venv.name} with {python}, pinned by {lock.relative_to(ROOT)}")
    _install(python, venv, lock)
    drifted = unpinned(venv, lock)
    if drifted:
        raise SystemExit(
            f"pythons: {venv.name} holds what {lock.relative_to(ROOT)} does not pin: "
            f"{', '.join(drifted)}; run `make lock`"
        )
    stamp.touch()
    return venv


def database_for(version: str, venv: Path) -> str:
    """The suite's PostgreSQL URL with a database of ``version``'s own, made when missing.

    Where it cannot be made (no server on a laptop), the URL is still given: the tests that
    need it skip, or fail under CI, saying so, as they do on ``test``.
    """
    found = _DATABASE.search(POSTGRES_URL)
    if found is None:
        return POSTGRES_URL
    name = f"{found['name']}_py{version.replace('.', '')}"
    url = f"{POSTGRES_URL[: found.start()]}/{name}{found['query'] or ''}"
    dsn = POSTGRES_URL.replace("+asyncpg", "", 1)
    made = subprocess.run(
        [str(venv / "bin" / "python"), "-c", _CREATE_DATABASE, dsn, name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if made.returncode != 0:
        error = (made.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"pythons: could not make PostgreSQL database {name}: {error}", file=sys.stderr)
    return url


def _suite(version: str, pytest_args: Sequence[str], *, quiet: bool) -> tuple[str | None, str]:
    """``version``'s suite without e2e: what failed (``None``: nothing), and its time. ``quiet``
    keeps its output until it is over, then prints it whole."""
    python = interpreter(version)
    if python is None:
        return f"Python {version} (not found)" if _missing(version) else None, "not found"
    venv = venv_for(version, python)
    env = os.environ | {"HOMING_TEST_POSTGRES_URL": database_for(version, venv)}
    command = [str(venv / "bin" / "python"), "-m", "pytest", "-m", MARKERS, *pytest_args]
    started = time.monotonic()
    print(f"pythons: Python {version}: pytest -m {MARKERS!r}", flush=True)
    if quiet:
        run = subprocess.run(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, check=False,
        )  # fmt: skip
        print(f"pythons: Python {version}'s suite:\n{run.stdout}", end="", flush=True)
    else:
        run = subprocess.run(command, cwd=ROOT, env=env, text=True, check=False)
    failure = None if run.returncode == 0 else f"Python {version}"
    return failure, f"{version} {time.monotonic() - started:.0f} s"


def run_suites(
    versions: Sequence[str], pytest_args: Sequence[str], beside: Sequence[str] = ()
) -> int:
    """Each of ``versions``' suites, without e2e, beside the command ``beside`` when given;
    1 if one failed (``beside`` too) or, under CI, is missing."""
    failed: list[str] = []
    timings: list[str] = []

    def suite(version: str) -> None:
        try:
            failure, timing = _suite(version, pytest_args, quiet=bool(beside))
        except (Exception, SystemExit) as exc:  # a venv that would not build: in a lane, a
            # thread's exception (SystemExit too) would otherwise vanish and the run pass
            print(f"pythons: Python {version}: {exc}", file=sys.stderr, flush=True)
            failed.append(f"Python {version} (its venv)")
            return
        timings.append(timing)
        if failure:
            failed.append(failure)

    if not beside:  # one after another, each printed as it runs
        for version in versions:
            suite(version)
    else:  # each in a lane of its own behind the command, printed whole when over
        lanes = [threading.Thread(target=suite, args=(v,), name=f"python{v}") for v in versions]
        for lane in lanes:
            lane.start()
        if subprocess.run(list(beside), cwd=ROOT, check=False).returncode != 0:
            failed.append(" ".join(beside))
        for lane in lanes:
            lane.join()
    if timings := [t for t in timings if t != "not found"]:
        print(f"pythons: suites took {', '.join(timings)}")
    if failed:
        print(f"pythons: FAILED on {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def lock(versions: Sequence[str]) -> int:
    """Check that dev.lock serves each of ``versions``, or pin one its own; 1 if one is missing
    under CI."""
    failed = False
    for version in versions:
        python = interpreter(version)
        if python is None:
            failed |= _missing(version)
            continue
        own = DEV_LOCK.with_name(f"dev-{version}.lock")
        if version in PINNED_APART:
            _lock_apart(python, version, own)
            continue
        with tempfile.TemporaryDirectory(prefix=f"lock-{version}-") as scratch:
            venv = Path(scratch) / "venv"
            try:
                _install(python, venv, DEV_LOCK)
                drifted = unpinned(venv, DEV_LOCK)
            except subprocess.CalledProcessError as exc:
                drifted = [f"pip failed ({exc.returncode})"]
        if not drifted:
            own.unlink(missing_ok=True)
            print(f"pythons: Python {version}: requirements/dev.lock resolves the same")
            continue
        print(
            f"pythons: Python {version}: requirements/dev.lock does not serve "
            f"({', '.join(drifted)}); pinning its own in {own.relative_to(ROOT)}"
        )
        with tempfile.TemporaryDirectory(prefix=f"lock-{version}-") as scratch:
            venv = Path(scratch) / "venv"
            _install(python, venv, None)
            own.write_text("".join(line + "\n" for line in _freeze(venv)))
    return 1 if failed else 0


def apart_from_dev_lock(version: str) -> list[str]:
    """dev.lock's lines with ``version``'s :data:`PINNED_APART` pins in place of its own."""
    apart = PINNED_APART[version]
    lines = []
    for line in DEV_LOCK.read_text().splitlines():
        name = _name(line).partition("==")[0] if "==" in line else None
        lines.append(f"{name}=={apart[name]}" if name in apart else line)
    return lines


def _lock_apart(python: str, version: str, own: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=f"lock-{version}-") as scratch:
        constraints = Path(scratch) / "constraints.txt"
        constraints.write_text("\n".join(apart_from_dev_lock(version)) + "\n")
        venv = Path(scratch) / "venv"
        _install(python, venv, constraints)
        own.write_text("".join(line + "\n" for line in _freeze(venv)))
    pins = ", ".join(f"{name} {pin}" for name, pin in PINNED_APART[version].items())
    print(f"pythons: Python {version}: pinned apart on purpose ({pins}) in {own.name}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/pythons.py", description="The other Pythons homing supports."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("test", help="the suite without e2e on each other supported Python")
    commands.add_parser("lock", help="check or make each other supported Python's lock")
    argv = list(sys.argv[1:] if argv is None else argv)
    beside: list[str] = []
    if "--beside" in argv:  # everything after it is the command
        at = argv.index("--beside")
        argv, beside = argv[:at], argv[at + 1 :]
        if not beside:
            parser.error("--beside needs a command")
    args, rest = parser.parse_known_args(argv)
    if args.command == "test":
        return run_suites(others(), rest, beside)
    if beside:
        parser.error("--beside goes with test")
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return lock(others())


if __name__ == "__main__":
    raise SystemExit(main())
