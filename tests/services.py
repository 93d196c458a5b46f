"""Real local services for tests, each started once per test session on a free loopback port.

Every service is self-contained below: a helper class that runs it, and its fixtures. A test module (or
conftest.py) imports the fixtures it uses, e.g. `from services import postgres_dsn, postgres_server`.

PostgreSQL runs from the server binaries of the Debian package `postgresql` (`initdb`, `pg_ctl`, `postgres`),
found on the PATH or under /usr/lib/postgresql/<version>/bin. PostgreSQL refuses to run as root, so as root
every server command runs as the `postgres` user, which owns the cluster's directory.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


# PostgreSQL ------------------------------------------------------------------------------------------------

POSTGRES_COMMANDS = ("initdb", "pg_ctl", "postgres", "createdb")
POSTGRES_COMMAND_TIMEOUT_S = 60


def postgres_bin_dir() -> Path:
    """The directory holding every server command: the one `pg_ctl` on the PATH lives in, else the newest
    /usr/lib/postgresql/<version>/bin. Raises LookupError naming the package to install."""
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent)

    def version(directory: str) -> tuple[int, ...]:
        name = Path(directory).parent.name
        return tuple(int(part) for part in name.split(".")) if name.replace(".", "").isdigit() else (0,)

    candidates += [Path(d) for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in POSTGRES_COMMANDS):
            return directory
    raise LookupError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres, createdb) were not found on the PATH or under "
        "/usr/lib/postgresql/*/bin; install them with `apt-get install -y postgresql`"
    )


class PostgresServer:
    """A throwaway cluster in a temporary directory: trust auth, listening on 127.0.0.1:`port` only."""

    def __init__(self, bin_dir: Path, port: int) -> None:
        self.bin_dir = bin_dir
        self.port = port
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise LookupError("running as root needs the `postgres` user, which the postgresql package creates") from None
        self.root = Path(tempfile.mkdtemp(prefix="bifrost-rt-postgres-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "server.log"
        self._database_numbers = itertools.count(1)
        self.sockets.mkdir()
        if self._as_postgres:
            for path in (self.root, self.sockets):
                os.chown(path, owner.pw_uid, owner.pw_gid)

    def _run(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin_dir / command), *args]
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=POSTGRES_COMMAND_TIMEOUT_S)

    def _check(self, command: str, *args: str) -> None:
        result = self._run(command, *args)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise RuntimeError(f"{command} failed ({result.returncode}): {result.stderr.strip()}\n{log}")

    def init(self) -> None:
        self._check("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"  # throwaway data: speed over safety
        )
        self._check("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "30", "start")

    def stop(self) -> None:
        """Fast shutdown: open connections are terminated, as in a database outage."""
        self._check("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    @property
    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status").returncode == 0

    def create_database(self, name: str) -> str:
        """Create an empty database; returns its DSN."""
        self._check("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.dsn(name)

    def fresh_database(self) -> str:
        """A new, empty database (the server restarted first if a test left it stopped); returns its DSN."""
        if not self.running:
            self.start()
        return self.create_database(f"test_{next(self._database_numbers)}")

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def destroy(self) -> None:
        if self.data.exists() and self.running:
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Fails (never skips) when PostgreSQL is missing: CI installs it, so its absence is a broken setup."""
    try:
        server = PostgresServer(postgres_bin_dir(), free_port())
    except LookupError as missing:
        pytest.fail(str(missing), pytrace=False)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """A new, empty database on the session's server."""
    return postgres_server.fresh_database()
