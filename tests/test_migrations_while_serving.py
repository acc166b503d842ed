"""``db upgrade`` on a database in use: by the service's sessions, or by another deploy.

On PostgreSQL a migration's ALTER TABLE waiting for a lock queues every later query
on that table behind it, so a migration that waits without end stalls the service
without end. ``db upgrade`` waits a short while for each lock, tries again a few
times, then gives up with nothing changed. Two ``db upgrade`` at once (two hosts
deploying) take turns: the second finds the database migrated.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from flask import Flask
from flask_migrate import upgrade
from sqlalchemy import text

from docqueue_app import create_app
from docqueue_app.models import db
from tests.conftest import BASE_CONFIG
from tests.e2e.server import BIN
from tests.helpers import close_connections, hold_write_lock, wait_until

BEFORE_WEBHOOKS = "0005"  # 0006 adds a column to documents: ALTER TABLE, the strongest lock
HEAD = "0008"
SHORT_LOCK_WAIT = ["-x", "lock_timeout=0.1"]  # seconds per try; the tries double it
HANG_GUARD_SECONDS = 30  # a `db upgrade` still running then is a hang, not slowness
# Lock timeouts are PostgreSQL's: SQLite's writers wait for each other by design (its
# busy timeout), and the two back ends take turns in two different ways.
ON_POSTGRESQL = pytest.mark.parametrize("unmigrated_database_url", ["postgresql"], indirect=True)
ON_SQLITE = pytest.mark.parametrize("unmigrated_database_url", ["sqlite"], indirect=True)


@pytest.fixture
def database_at_0005(unmigrated_database_url: str) -> Iterator[str]:
    app = create_app({**BASE_CONFIG, "DATABASE_URL": unmigrated_database_url})
    with app.app_context():
        upgrade(revision=BEFORE_WEBHOOKS)
    close_connections(app)
    yield unmigrated_database_url


@pytest.fixture
def session_reading_documents(database_at_0005: str) -> Iterator[psycopg.Connection]:
    """A session left idle in a transaction that read ``documents`` (a worker, psql)."""
    with psycopg.connect(database_at_0005) as holder:
        holder.execute("SELECT count(*) FROM documents")
        yield holder


@ON_POSTGRESQL
def test_upgrade_waiting_for_a_lock_gives_up_with_nothing_changed(
    database_at_0005, session_reading_documents, tmp_path
):
    result = db_upgrade(database_at_0005, tmp_path, *SHORT_LOCK_WAIT, "-x", "lock_tries=2")

    assert result.returncode == 3, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: db upgrade gave up waiting for a lock")
    assert "ALTER TABLE documents ADD COLUMN callback_url" in error
    assert "still at revision 0005" in error
    assert revision_of(database_at_0005) == BEFORE_WEBHOOKS
    session_reading_documents.rollback()
    assert db_upgrade(database_at_0005, tmp_path).returncode == 0
    assert revision_of(database_at_0005) == HEAD


@ON_POSTGRESQL
def test_queries_queued_behind_a_waiting_upgrade_go_on_when_it_gives_up(
    database_at_0005, session_reading_documents, tmp_path
):
    one_try = ["-x", "lock_timeout=1", "-x", "lock_tries=1"]
    with started_db_upgrade(database_at_0005, tmp_path, *one_try) as upgrading:
        wait_until(lambda: sessions_waiting_for_locks(database_at_0005) == 1)
        reader = threading.Thread(target=count_documents, args=(database_at_0005,))
        reader.start()  # queued behind the upgrade's ALTER TABLE, as every request is

        reader.join(HANG_GUARD_SECONDS)
        assert not reader.is_alive()
        assert upgrading.wait(HANG_GUARD_SECONDS) == 3
    assert revision_of(database_at_0005) == BEFORE_WEBHOOKS


@ON_POSTGRESQL
def test_upgrade_goes_on_once_the_lock_is_free(
    database_at_0005, session_reading_documents, tmp_path
):
    with started_db_upgrade(database_at_0005, tmp_path, *SHORT_LOCK_WAIT) as upgrading:
        assert "trying again" in read_until(upgrading, "trying again")
        session_reading_documents.rollback()

        assert upgrading.wait(HANG_GUARD_SECONDS) == 0
    assert revision_of(database_at_0005) == HEAD


@ON_POSTGRESQL
def test_two_upgrades_at_once_on_postgresql_both_end_migrated(
    database_at_0005, session_reading_documents, tmp_path
):
    # The first waits (for as long as it takes) on the session's lock, midway through
    # 0006; the second starts while it waits, from the same revision.
    no_timeout = ["-x", "lock_timeout=0"]
    with started_db_upgrade(database_at_0005, tmp_path, *no_timeout) as first:
        wait_until(lambda: sessions_waiting_for_locks(database_at_0005) == 1)
        with started_db_upgrade(database_at_0005, tmp_path, *no_timeout) as second:
            wait_until(lambda: sessions_waiting_for_locks(database_at_0005) == 2)
            session_reading_documents.rollback()

            assert first.wait(HANG_GUARD_SECONDS) == 0, first.stderr.read()
            assert second.wait(HANG_GUARD_SECONDS) == 0, second.stderr.read()
    assert revision_of(database_at_0005) == HEAD


@ON_SQLITE
def test_two_upgrades_at_once_on_sqlite_both_end_migrated(database_at_0005, tmp_path):
    path = Path(database_at_0005.removeprefix("sqlite:///"))
    with (
        hold_write_lock(path) as release,
        started_db_upgrade(database_at_0005, tmp_path) as first,
        started_db_upgrade(database_at_0005, tmp_path) as second,
    ):
        read_until(first, "Context impl")
        read_until(second, "Context impl")
        release()

        assert first.wait(HANG_GUARD_SECONDS) == 0, first.stderr.read()
        assert second.wait(HANG_GUARD_SECONDS) == 0, second.stderr.read()
    assert revision_of(database_at_0005) == HEAD


def db_upgrade(database_url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "docqueue"), "db", "upgrade", *args],
        cwd=cwd,
        env=command_env(database_url),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
    )


@contextmanager
def started_db_upgrade(database_url: str, cwd: Path, *args: str) -> Iterator[subprocess.Popen]:
    """``docqueue db upgrade`` running in the background; killed if still running after
    the block, or after HANG_GUARD_SECONDS (so a test reading its stderr cannot hang)."""
    process = subprocess.Popen(
        [str(BIN / "docqueue"), "db", "upgrade", *args],
        cwd=cwd,
        env=command_env(database_url),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    hang_guard = threading.Timer(HANG_GUARD_SECONDS, process.kill)
    hang_guard.start()
    try:
        yield process
    finally:
        hang_guard.cancel()
        if process.poll() is None:
            process.kill()
        process.wait()
        assert process.stderr is not None
        process.stderr.close()


def command_env(database_url: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "DOCQUEUE_SECRET_KEY": "k"}


def read_until(process: subprocess.Popen, words: str) -> str:
    """The process's stderr up to the first line holding ``words`` (all of it if none)."""
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if words in line:
            break
    return "".join(seen)


def revision_of(database_url: str) -> str:
    app: Flask = create_app({**BASE_CONFIG, "DATABASE_URL": database_url})
    try:
        with app.app_context(), db.engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        close_connections(app)


def sessions_waiting_for_locks(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as connection:
        return connection.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ).fetchone()[0]


def count_documents(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as connection:
        return connection.execute("SELECT count(*) FROM documents").fetchone()[0]
