"""The other Pythons homing supports: a venv each, the suite on each, and their locks.

The supported versions are pyproject.toml's classifiers (``Programming Language :: Python ::
3.X``). The one running this script builds ``.venv`` and runs the whole suite (the Makefile);
each other one gets ``.venv-3.X``, built the same way from pyproject.toml and pinned by the
development lock, and runs the suite without the tests that start real processes or build the
distribution (those run once, on ``.venv``'s Python). An interpreter is ``python3.X`` on PATH,
else pyenv's newest 3.X. Under CI (``CI`` set) one not found fails, naming it; elsewhere it is
skipped, saying so.

    python scripts/pythons.py test [PYTEST ARGS]   # `make test`, after the whole suite
    python scripts/pythons.py lock                 # `make lock`, after requirements/dev.lock

``lock`` resolves the development extra on each other version with requirements/dev.lock as
constraints: where that installs exactly what the lock pins, the one lock serves; where it does
not (a pin with no build for that version, a dependency only that version needs), that version
gets requirements/dev-3.X.lock of its own, made by the same pip freeze.

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
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEV_LOCK = ROOT / "requirements" / "dev.lock"
#: What the other versions leave out: the end-to-end tests (real processes over loopback, the
#: emulator, the broker) and the distribution's build and install, which run on .venv's Python.
MARKERS = "not e2e and not dist"
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


def test(versions: Sequence[str], pytest_args: Sequence[str]) -> int:
    """Each of ``versions``' suites, without e2e; 1 if one failed or, under CI, is missing."""
    failed: list[str] = []
    timings: list[str] = []
    for version in versions:
        python = interpreter(version)
        if python is None:
            if _missing(version):
                failed.append(f"{version} (not found)")
            continue
        venv = venv_for(version, python)
        print(f"pythons: Python {version}: pytest -m {MARKERS!r}", flush=True)
        started = time.monotonic()
        run = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pytest", "-m", MARKERS, *pytest_args],
            cwd=ROOT,
            check=False,
        )
        timings.append(f"{version} {time.monotonic() - started:.0f} s")
        if run.returncode != 0:
            failed.append(version)
    if timings:
        print(f"pythons: suites took {', '.join(timings)}")
    if failed:
        print(f"pythons: FAILED on Python {', '.join(failed)}", file=sys.stderr)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/pythons.py", description="The other Pythons homing supports."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("test", help="the suite without e2e on each other supported Python")
    commands.add_parser("lock", help="check or make each other supported Python's lock")
    args, rest = parser.parse_known_args(argv)
    if args.command == "test":
        return test(others(), rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return lock(others())


if __name__ == "__main__":
    raise SystemExit(main())
