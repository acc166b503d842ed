"""Small helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import bindparam, event, text
from werkzeug.test import TestResponse

from docqueue_app.models import UTCDateTime, db


def upload(
    client: FlaskClient,
    data: bytes = b"hello docqueue",
    filename: str = "note.txt",
    priority: Any = None,
    headers: dict[str, str] | None = None,
) -> TestResponse:
    """POST one file to the upload API, as ``curl -F file=@...`` would."""
    form: dict[str, Any] = {"file": (io.BytesIO(data), filename)}
    if priority is not None:
        form["priority"] = str(priority)
    return client.post(
        "/api/documents", data=form, content_type="multipart/form-data", headers=headers or {}
    )


def backend_name(app: Flask) -> str:
    with app.app_context():
        return db.engine.dialect.name


def close_connections(app: Flask) -> None:
    """Close the app's sessions and pooled connections (the next use opens new ones)."""
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def execute_sql(app: Flask, sql: str, **params: Any) -> None:
    """Change rows behind the service's back (to simulate time passing, crashes...)."""
    # Datetimes go through the model's column type, so SQLite stores them as it does.
    stamps = [
        bindparam(k, type_=UTCDateTime()) for k, v in params.items() if isinstance(v, datetime)
    ]
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(text(sql).bindparams(*stamps), params)


@contextmanager
def engine_events(app: Flask, **listeners: Callable[..., None]) -> Iterator[None]:
    """The app engine's events (by name) call these listeners while in the block."""
    with app.app_context():
        engine = db.engine
    for name, listener in listeners.items():
        event.listen(engine, name, listener)
    try:
        yield
    finally:
        for name, listener in listeners.items():
            event.remove(engine, name, listener)


@contextmanager
def statements_sent(app: Flask) -> Iterator[list[tuple[str, Any]]]:
    """Every statement (and its parameters) the app sends while in the block."""
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    with engine_events(app, before_cursor_execute=capture):
        yield sent


@contextmanager
def connections_opened(app: Flask) -> Iterator[list[Any]]:
    """Each new database connection the app opens while in the block."""
    opened: list[Any] = []
    with engine_events(
        app, connect=lambda dbapi_connection, _record: opened.append(dbapi_connection)
    ):
        yield opened


@contextmanager
def statements_at_the_driver(
    app: Flask, record: Callable[[Any, str, Any, bool], None]
) -> Iterator[None]:
    """Calls ``record(driver connection, statement, parameters, binary)`` for every
    statement the driver runs on the app's connections while in the block (``binary``:
    psycopg was asked for its rows in PostgreSQL's binary format).

    Read at the driver (psycopg's cursors; SQLite's own trace, whose text has the
    parameters written in, so they come as ``()``), so it sees the statements the
    app runs on the driver's connection directly (``run_on_driver``), which
    SQLAlchemy's events miss.
    """

    class RecordingCursor(psycopg.Cursor):
        def execute(self, query: Any, params: Any = None, *args: Any, **kwargs: Any) -> Any:
            binary = kwargs.get("binary") or self.format == psycopg.pq.Format.BINARY
            record(self.connection, str(query), params, bool(binary))
            return super().execute(query, params, *args, **kwargs)

    def start_recording(dbapi_connection: Any, *_: Any) -> None:
        if isinstance(dbapi_connection, psycopg.Connection):
            dbapi_connection.cursor_factory = RecordingCursor
        else:
            dbapi_connection.set_trace_callback(
                lambda statement: record(dbapi_connection, statement, (), False)
            )

    def stop_recording(dbapi_connection: Any, *_: Any) -> None:
        if isinstance(dbapi_connection, psycopg.Connection):
            dbapi_connection.cursor_factory = psycopg.Cursor
        else:
            dbapi_connection.set_trace_callback(None)

    with engine_events(app, checkout=start_recording, checkin=stop_recording):
        yield


@contextmanager
def statements_run(app: Flask) -> Iterator[list[tuple[str, Any]]]:
    """Every statement the driver runs on the app's connections while in the block,
    with its parameters (``statements_at_the_driver``)."""
    run: list[tuple[str, Any]] = []
    with statements_at_the_driver(
        app, lambda _, statement, params, __: run.append((statement, params))
    ):
        yield run


@contextmanager
def statements_with_binary_rows(app: Flask) -> Iterator[list[str]]:
    """The statements run while in the block whose rows psycopg was asked for in
    PostgreSQL's binary format (``statements_at_the_driver``)."""
    run: list[str] = []

    def record(_: Any, statement: str, __: Any, binary: bool) -> None:
        if binary:
            run.append(statement)

    with statements_at_the_driver(app, record):
        yield run


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


# A short SQLite busy timeout, so "longer than the busy timeout" takes a second, not 30.
SHORT_BUSY_TIMEOUT = {"connect_args": {"timeout": 0.5, "check_same_thread": False}}

_LOCK_HOLDER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


@contextmanager
def hold_write_lock(sqlite_path: Path) -> Iterator[Callable[[], None]]:
    """Another process holds SQLite's write lock; call the value (or leave) to release it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _LOCK_HOLDER, str(sqlite_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"

    def release() -> None:
        if holder.poll() is None:
            holder.communicate(timeout=10)

    try:
        yield release
    finally:
        release()


def drop_connections_to(database_url: str, admin_url: str) -> int:
    """The server drops every connection to the database of ``database_url`` (the
    LISTEN ones too), as a restart or a failover would; how many there were."""
    database = database_url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        return len(
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                [database],
            ).fetchall()
        )
