"""A PostgreSQL cluster of a test's own: made by initdb in a temporary folder, on a free port,
with trust auth, and stopped and deleted afterwards. A test that restarts or kills PostgreSQL
does it to this one, never to the server on 127.0.0.1:5432 that other tests and runs share."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import free_port
from tests.support.required import missing, require

_TOOLS = ("initdb", "pg_ctl", "postgres")


def find_binaries() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: on ``PATH``, or Debian's newest
    ``/usr/lib/postgresql/<version>/bin``."""
    on_path = shutil.which("pg_ctl")
    candidates = [Path(on_path).parent] if on_path else []
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=_version, reverse=True)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in _TOOLS):
            return folder
    return None


def _version(folder: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", folder.parent.name)) or (0,)


@dataclass(frozen=True)
class Cluster:
    """A running cluster: superuser ``postgres``, no password, on ``127.0.0.1:port``."""

    binaries: Path
    directory: Path
    port: int
    user: str | None  # whom initdb and postgres run as (they refuse to run as root)

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"

    def dsn(self, database: str = "postgres") -> str:
        """An asyncpg / libpq address of ``database``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL of ``database`` (asyncpg driver)."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "--no-sync")

    def start(self) -> None:
        self._ctl("start", "-l", self.log, "-o", self._options)

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")

    def restart(self) -> None:
        """A fast restart, as an operator's: every connection is cut, the server comes back."""
        self._ctl("restart", "-m", "fast", "-l", self.log, "-o", self._options)

    @property
    def _options(self) -> str:
        # Its own port, loopback only, its socket in its own folder. fsync off: nothing here
        # outlives the test, and a restart is a clean shutdown.
        return f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"

    def _ctl(self, action: str, *args: str | Path) -> None:
        self._run("pg_ctl", action, "-D", self.data, "-w", "-t", "60", *args)

    def _run(self, tool: str, *args: str | Path) -> None:
        done = subprocess.run(
            [str(self.binaries / tool), *map(str, args)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            user=self.user,
            group=None if self.user is None else pwd.getpwnam(self.user).pw_gid,
            extra_groups=None if self.user is None else [],
            cwd=self.directory,
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{tool} {' '.join(map(str, args))} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}{log}"
            )


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """A fresh cluster, started; stopped and deleted afterwards. Without PostgreSQL's server
    binaries it skips on a laptop and fails in CI."""
    binaries = find_binaries()
    require(binaries, f"PostgreSQL's server binaries ({', '.join(_TOOLS)}) are not installed")
    assert binaries is not None
    user = None
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            missing("running PostgreSQL as root needs a 'postgres' user to run it as")
        user = owner.pw_name
    # Not under pytest's tmp_path: its folders are private to root, and postgres needs its own.
    directory = Path(tempfile.mkdtemp(prefix="homing-pg-"))
    try:
        if user is not None:
            os.chown(directory, owner.pw_uid, owner.pw_gid)
        cluster = Cluster(binaries, directory, free_port(), user)
        cluster.init()
        cluster.start()
        try:
            yield cluster
        finally:
            if (cluster.data / "postmaster.pid").exists():
                cluster.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
