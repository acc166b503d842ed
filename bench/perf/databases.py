"""Fresh databases for each measurement, and bulk-filled queues.

Each back end's schema is made once per run by the migrations (``flask_migrate.upgrade``)
into a template; every measurement then gets a copy of it: a database created from the
template on PostgreSQL (and dropped after), a copied file on SQLite.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

PG_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ("postgresql", "sqlite")
_names = itertools.count()


@dataclass(frozen=True)
class Database:
    kind: str  # "postgresql" or "sqlite"
    url: str  # SQLAlchemy URL, as DATABASE_URL

    @property
    def sqlite_path(self) -> str:
        return self.url.removeprefix("sqlite:///")

    def connect(self) -> Any:
        """A raw DB-API connection in autocommit mode (psycopg 3 or sqlite3)."""
        if self.kind == "postgresql":
            return psycopg.connect(self.url, autocommit=True)
        connection = sqlite3.connect(self.sqlite_path, isolation_level=None, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")
        return connection


def _admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(sql)


def _pg_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def migrate(url: str) -> None:
    """Create the schema as users do: the migrations, through flask_migrate.upgrade()."""
    from flask_migrate import upgrade

    from docqueue_app import create_app
    from docqueue_app.models import db

    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "bench", "SCHEDULER_ENABLED": False})
    with app.app_context():
        upgrade()
        db.session.remove()
        db.engine.dispose()


class Templates:
    """One migrated database per back end, copied for every measurement."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.prefix = f"docqueue_bench_{os.getpid()}"
        self._made: set[str] = set()

    def _template_name(self) -> str:
        return f"{self.prefix}_template"

    def _ensure(self, kind: str) -> None:
        if kind in self._made:
            return
        if kind == "postgresql":
            _admin(f'DROP DATABASE IF EXISTS "{self._template_name()}" WITH (FORCE)')
            _admin(f'CREATE DATABASE "{self._template_name()}"')
            migrate(_pg_url(self._template_name()))
        else:
            migrate(f"sqlite:///{self.folder / 'template.db'}")
        self._made.add(kind)

    @contextmanager
    def fresh(self, kind: str) -> Iterator[Database]:
        """A new database with docqueue's schema, removed after the block."""
        self._ensure(kind)
        name = f"{self.prefix}_{next(_names)}"
        if kind == "sqlite":
            path = self.folder / f"{name}.db"
            shutil.copyfile(self.folder / "template.db", path)
            try:
                yield Database(kind, f"sqlite:///{path}")
            finally:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
            return
        _admin(f'CREATE DATABASE "{name}" TEMPLATE "{self._template_name()}"')
        try:
            yield Database(kind, _pg_url(name))
        finally:
            _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        if "postgresql" in self._made:
            _admin(f'DROP DATABASE IF EXISTS "{self._template_name()}" WITH (FORCE)')


@contextmanager
def templates() -> Iterator[Templates]:
    with tempfile.TemporaryDirectory(prefix="docqueue-bench-") as folder:
        made = Templates(Path(folder))
        try:
            yield made
        finally:
            made.close()


# Documents, their bytes and one pending queue item each, numbered first..last, in
# three INSERT ... SELECT statements over a number series. Contents are distinct
# ("document <n>"), and so are the sha256 column's values.
_SERIES = {
    "postgresql": "generate_series({first}, {last}) AS s(n)",
    "sqlite": "(WITH RECURSIVE s(n) AS (SELECT {first} UNION ALL SELECT n + 1 FROM s "
    "WHERE n < {last}) SELECT n FROM s)",
}
_HEX64 = {"postgresql": "lpad(to_hex(n), 64, '0')", "sqlite": "printf('%064x', n)"}
_BYTES = {
    "postgresql": "convert_to('document ' || n, 'UTF8')",
    "sqlite": "CAST('document ' || n AS BLOB)",
}
_FILL = (
    "INSERT INTO documents (id, filename, content_type, size, sha256, status, created_at,"
    " updated_at) SELECT n, 'bench-' || n || '.txt', 'text/plain', length('document ' || n),"
    " {hex64}, 'pending', {now}, {now} FROM {series}",
    "INSERT INTO document_contents (document_id, data) SELECT n, {bytes} FROM {series}",
    "INSERT INTO queue_items (id, document_id, operation, status, priority, attempts,"
    " max_attempts, run_at, created_at) SELECT n, n, 'process', 'pending', 5, 0, 5, {run_at},"
    " {now} FROM {series}",
)


def _timestamp(kind: str, moment: datetime) -> str:
    """A literal as the column stores it: timestamptz, or SQLite's naive UTC text."""
    if kind == "postgresql":
        return f"'{moment.isoformat()}'::timestamptz"
    return f"'{moment.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def fill_queue(database: Database, first: int, count: int, due_in: timedelta) -> None:
    """Queue ``count`` text documents numbered from ``first``, due ``due_in`` from now."""
    now = datetime.now(UTC)
    values = {
        "series": _SERIES[database.kind].format(first=first, last=first + count - 1),
        "hex64": _HEX64[database.kind],
        "bytes": _BYTES[database.kind],
        "now": _timestamp(database.kind, now),
        "run_at": _timestamp(database.kind, now + due_in),
    }
    with closing(database.connect()) as connection:
        connection.execute("BEGIN")
        for statement in _FILL:
            connection.execute(statement.format(**values))
        if database.kind == "postgresql":
            for table in ("documents", "queue_items"):
                connection.execute(
                    f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))"
                )
        connection.execute("COMMIT")


class Probe:
    """One kept connection that counts finished items (how a drain is watched)."""

    FINISHED = "SELECT count(*) FROM queue_items WHERE status IN ('completed', 'failed')"
    FAILED = "SELECT count(*) FROM queue_items WHERE status = 'failed'"
    UNFINISHED = "SELECT count(*) FROM queue_items WHERE status IN ('pending', 'in_progress')"

    def __init__(self, database: Database) -> None:
        self.connection = database.connect()

    def finished(self) -> int:
        return self.connection.execute(self.FINISHED).fetchone()[0]

    def failed(self) -> int:
        return self.connection.execute(self.FAILED).fetchone()[0]

    def unfinished(self) -> int:
        return self.connection.execute(self.UNFINISHED).fetchone()[0]

    def close(self) -> None:
        self.connection.close()


@contextmanager
def app_on(database: Database) -> Iterator[Any]:
    """docqueue's app on ``database`` (no scheduler); its connections closed after."""
    from docqueue_app import create_app
    from docqueue_app.models import db

    app = create_app(
        {"DATABASE_URL": database.url, "SECRET_KEY": "bench", "SCHEDULER_ENABLED": False}
    )
    try:
        yield app
    finally:
        with app.app_context():
            db.engine.dispose()


@contextmanager
def docqueue_context(database: Database) -> Iterator[Any]:
    """An app context of docqueue on ``database`` (no scheduler); its connections closed after."""
    from docqueue_app.models import db

    with app_on(database) as app, app.app_context():
        try:
            yield app
        finally:
            db.session.remove()
