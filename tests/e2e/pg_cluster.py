"""A PostgreSQL cluster a test owns: initdb into a temporary folder, stop and start at will.

The shared server of ``tests/conftest.py`` cannot be stopped by one test, so a
test about an outage gets a cluster of its own (``initdb``, ``pg_ctl``) that
listens on 127.0.0.1 only, on a free port it keeps across restarts, with its
unix socket inside its own folder.

``fsync`` is off: only the PostgreSQL processes ever stop (``pg_ctl stop``,
even ``-m immediate``), never the machine, so every write PostgreSQL reported
is still in the kernel's page cache when it starts again, and crash recovery
replays the WAL from there. What fsync protects against (a power cut, a kernel
panic) is not what these tests exercise, and skipping the disk flushes keeps a
slow disk out of their timings.

PostgreSQL refuses to run as root; as root (this machine's tests) every command
runs as the ``postgres`` user through ``runuser``, and the folder belongs to it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from tests.e2e.server import free_port

DATABASE = "docqueue"
# Long enough for crash recovery after ``-m immediate`` on a slow disk.
PG_CTL_WAIT_SECONDS = 60
OS_USER = "postgres"


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl live: ``pg_config --bindir``, else Debian's folder."""
    candidates = []
    if shutil.which("pg_config"):
        result = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, timeout=10
        )
        if result.returncode == 0:
            candidates.append(result.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for folder in candidates:
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


class PostgresCluster:
    """One initdb'd cluster on 127.0.0.1:<port>; ``stop()`` and ``start()`` keep the port."""

    def __init__(self, bindir: Path, initdb_options: Sequence[str] = ()) -> None:
        """``initdb_options`` are added to initdb's (``--waldir`` elsewhere, say)."""
        self.bindir = bindir
        self.initdb_options = tuple(initdb_options)
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="docqueue-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.port = free_port()
        if self.as_root:
            user = pwd.getpwnam(OS_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *args: str, timeout: float = PG_CTL_WAIT_SECONDS + 30) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", OS_USER, "--", *command]
        result = subprocess.run(
            command, cwd=self.root, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}\n{self.log_tail()}"
            )

    def init(self) -> PostgresCluster:
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            "postgres",
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
            *self.initdb_options,
        )
        self.start()
        with psycopg.connect(self.admin_url, connect_timeout=5, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
        return self

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.root} -c fsync=off -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "start",
            "--pgdata",
            str(self.data),
            "--log",
            str(self.log_path),
            "--options",
            options,
            "--wait",
            "--timeout",
            str(PG_CTL_WAIT_SECONDS),
        )

    def stop(self, mode: str = "fast") -> None:
        """``fast``: sessions are ended, a clean shutdown; ``immediate``: a crash."""
        self._run(
            "pg_ctl",
            "stop",
            "--pgdata",
            str(self.data),
            "--mode",
            mode,
            "--wait",
            "--timeout",
            str(PG_CTL_WAIT_SECONDS),
        )

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def destroy(self) -> None:
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def owned_cluster(initdb_options: Sequence[str] = ()) -> Iterator[PostgresCluster]:
    """A fresh cluster with an empty database ``docqueue``; stopped and removed after.

    Skipped when the server binaries are missing, a failure under CI=true.
    """
    bindir = postgres_bindir()
    if bindir is None:
        reason = "PostgreSQL server binaries (initdb, pg_ctl) not found"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} under CI=true", pytrace=False)
        pytest.skip(reason)
    cluster = PostgresCluster(bindir, initdb_options)
    try:
        yield cluster.init()
    finally:
        cluster.destroy()


@pytest.fixture
def pg_cluster() -> Iterator[PostgresCluster]:
    """A fresh cluster with an empty database ``docqueue``; stopped and removed at teardown."""
    with owned_cluster() as cluster:
        yield cluster
