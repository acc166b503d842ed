"""The database cannot take work: a 503 with Retry-After, nothing half-written, and back on its own.

SPEC §4: unreachable, read-only or full, every endpoint that needs the database
answers 503 with the JSON error shape (a page: an HTML 503), and an upload that
got a 503 left no document, no bytes and no queue item behind. Each fault is
real: a write-protected file, a database at its size limit, a write lock held
by another process, a PostgreSQL server that refuses connections or writes.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, text

from docqueue_app import create_app
from docqueue_app.database import PING_AFTER_IDLE_SECONDS, RETRY_AFTER_SECONDS
from docqueue_app.models import db
from tests.api import assert_json_error, run_queue
from tests.conftest import BASE_CONFIG, PG_ADMIN_URL, TABLES, app_factory
from tests.helpers import (
    SHORT_BUSY_TIMEOUT,
    close_connections,
    drop_connections_to,
    hold_write_lock,
    statements_at_the_driver,
    upload,
)

UNREACHABLE_DATABASE = "postgresql://postgres@127.0.0.1:1/nope"


def assert_unavailable(response: Any, kind: str) -> None:
    body = assert_json_error(response, 503, "Service Unavailable")
    assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert kind in body["message"]


def row_counts(app: Flask) -> dict[str, int]:
    with app.app_context():
        counts = {
            table: db.session.scalar(text(f"SELECT count(*) FROM {table}")) for table in TABLES
        }
        db.session.rollback()
    return counts


def upload_page(client: FlaskClient, data: bytes = b"from the form") -> Any:
    return client.post(
        "/",
        data={"file": (io.BytesIO(data), "form.txt")},
        content_type="multipart/form-data",
    )


# -- SQLite -------------------------------------------------------------------------


@pytest.fixture
def sqlite_path(tmp_path: Path, sqlite_template: Path) -> Path:
    path = tmp_path / "data" / "docqueue.db"
    path.parent.mkdir()
    shutil.copyfile(sqlite_template, path)
    return path


@pytest.fixture
def sqlite_app(sqlite_path: Path) -> Iterator[Callable[..., Flask]]:
    with app_factory(f"sqlite:///{sqlite_path}") as factory:
        yield factory


@pytest.fixture
def write_protect(sqlite_path: Path) -> Iterator[Callable[[bool], None]]:
    """Make the database file read-only, and writable again.

    As root, permission bits stop nobody, so the file is made immutable instead.
    """
    as_root = os.geteuid() == 0

    def protect(read_only: bool) -> None:
        if as_root:
            subprocess.run(["chattr", "+i" if read_only else "-i", str(sqlite_path)], check=True)
        else:
            sqlite_path.chmod(0o444 if read_only else 0o644)

    yield protect
    protect(False)


def test_a_read_only_sqlite_file_gives_503_and_keeps_nothing(
    sqlite_app: Callable[..., Flask], write_protect: Callable[[bool], None]
) -> None:
    app = sqlite_app()
    client = app.test_client()
    assert upload(client, b"before the fault").status_code == 202
    close_connections(app)  # the file is then opened read-only, as after a remount
    before = row_counts(app)
    close_connections(app)
    write_protect(True)

    assert_unavailable(upload(client, b"during the fault"), "read-only")
    assert client.get("/api/documents").status_code == 200  # reading still works
    health = client.get("/healthz")
    assert (health.status_code, health.get_json()["database"]) == (503, "read_only")
    page = upload_page(client)
    assert page.status_code == 503
    assert page.mimetype == "text/html"
    assert "read-only" in page.get_data(as_text=True)
    assert row_counts(app) == before

    write_protect(False)
    close_connections(app)
    assert client.get("/healthz").status_code == 200
    assert upload(client, b"after the fault").status_code == 202
    assert run_queue(app)["completed"] == 2
    assert row_counts(app)["documents"] == 2


def test_healthz_notices_a_missing_sqlite_file(
    sqlite_app: Callable[..., Flask], sqlite_path: Path
) -> None:
    client = sqlite_app().test_client()
    assert client.get("/healthz").status_code == 200

    sqlite_path.rename(sqlite_path.with_name("moved.db"))
    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.get_json() == {"status": "error", "database": "unreachable"}
    assert not sqlite_path.exists()  # the check did not create an empty database


def test_a_full_sqlite_database_gives_503_and_processing_resumes_once_there_is_room(
    sqlite_app: Callable[..., Flask],
) -> None:
    app = sqlite_app()
    client = app.test_client()
    assert upload(client, b"small, before the fault").status_code == 202
    limit = {"pages": None}

    @event.listens_for(_engine(app), "connect")
    def cap_size(dbapi_connection: Any, _record: Any) -> None:
        if limit["pages"] is not None:
            dbapi_connection.execute(f"PRAGMA max_page_count = {limit['pages']}")

    close_connections(app)
    with app.app_context():
        limit["pages"] = db.session.scalar(text("PRAGMA page_count")) + 2
    close_connections(app)
    before = row_counts(app)

    # 200 KB of bytes need far more than two more pages.
    assert_unavailable(upload(client, os.urandom(100_000).hex().encode()), "full")
    assert row_counts(app) == before
    assert run_queue(app)["completed"] == 1  # the queued document is still processed

    limit["pages"] = None
    close_connections(app)
    assert upload(client, os.urandom(100_000).hex().encode()).status_code == 202
    assert run_queue(app)["completed"] == 1


def _engine(app: Flask) -> Any:
    with app.app_context():
        return db.engine


@pytest.fixture
def write_lock_holder(sqlite_path: Path) -> Iterator[Callable[[], None]]:
    with hold_write_lock(sqlite_path) as release:
        yield release


def test_a_write_lock_held_past_the_busy_timeout_gives_503(
    sqlite_app: Callable[..., Flask], write_lock_holder: Callable[[], None]
) -> None:
    app = sqlite_app(SQLALCHEMY_ENGINE_OPTIONS=SHORT_BUSY_TIMEOUT)
    client = app.test_client()

    assert_unavailable(upload(client, b"while locked"), "busy")
    assert client.get("/api/documents").get_json()["total"] == 0  # readers are not blocked

    write_lock_holder()
    assert upload(client, b"after the lock").status_code == 202
    assert row_counts(app)["documents"] == 1
    assert run_queue(app)["completed"] == 1


def test_writes_of_one_process_take_turns_past_the_busy_timeout(
    sqlite_app: Callable[..., Flask],
) -> None:
    """A slow write transaction (a slow disk, say) makes the other threads of its
    process wait their turn, not fail: SQLite's busy timeout only bounds the wait
    for other processes. Without the turns, the second upload got a 503 after 0.5 s."""
    app = sqlite_app(SQLALCHEMY_ENGINE_OPTIONS=SHORT_BUSY_TIMEOUT)
    committing = threading.Event()

    def slow_upload() -> None:
        assert upload(app.test_client(), b"slow to commit").status_code == 202

    slow = threading.Thread(target=slow_upload)

    def commit_slowly(_connection: Any, statement: str, *_: Any) -> None:
        if threading.current_thread() is slow and statement == "COMMIT":
            committing.set()
            time.sleep(1.5)  # three busy timeouts, holding the write lock

    with statements_at_the_driver(app, commit_slowly):
        slow.start()
        assert committing.wait(10)
        response = upload(app.test_client(), b"behind it")
        slow.join()

    assert response.status_code == 202, response.get_json()
    assert row_counts(app)["documents"] == 2


def test_a_write_waits_out_another_process_and_keeps_the_busy_timeout(
    sqlite_app: Callable[..., Flask], write_lock_holder: Callable[[], None]
) -> None:
    """The write lock is asked for every millisecond at first (models._take_write_lock),
    then with SQLite's own wait: a lock let go within the busy timeout is waited out,
    and the connection's busy timeout is as configured afterwards."""
    app = sqlite_app(SQLALCHEMY_ENGINE_OPTIONS=SHORT_BUSY_TIMEOUT)
    releasing = threading.Timer(0.3, write_lock_holder)  # past the first, finer tries
    releasing.start()
    response = upload(app.test_client(), b"after another process")
    releasing.join()

    assert response.status_code == 202, response.get_json()
    with app.app_context():
        busy_timeout_ms = db.session.scalar(text("PRAGMA busy_timeout"))
        db.session.rollback()
    assert busy_timeout_ms == SHORT_BUSY_TIMEOUT["connect_args"]["timeout"] * 1000


# -- PostgreSQL ---------------------------------------------------------------------


@pytest.fixture
def unreachable_client() -> FlaskClient:
    # Nothing listens on port 1: every connection is refused.
    return create_app({**BASE_CONFIG, "DATABASE_URL": UNREACHABLE_DATABASE}).test_client()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/documents"),
        ("GET", "/api/documents/1"),
        ("POST", "/api/documents/1/reprocess"),
        ("DELETE", "/api/documents/1"),
        ("GET", "/api/queue/stats"),
        ("POST", "/api/queue/pause"),
        ("GET", "/api/queue/items"),
        ("POST", "/api/cron/process-queue"),
        ("GET", "/metrics"),
    ],
)
def test_every_endpoint_answers_503_json_when_postgresql_is_unreachable(
    method: str, path: str
) -> None:
    client = create_app(
        {
            **BASE_CONFIG,
            "DATABASE_URL": UNREACHABLE_DATABASE,
            "ADMIN_PASSWORD": "pw",
            "CRON_SECRET": "cron",
        }
    ).test_client()
    headers = {"Authorization": "Bearer cron"} if "cron" in path else {}
    if "/queue/" in path and "stats" not in path:
        headers = {"Authorization": "Basic YWRtaW46cHc="}  # admin:pw

    response = client.open(path, method=method, headers=headers)

    assert_unavailable(response, "unreachable")


def test_an_upload_to_an_unreachable_postgresql_gets_503(unreachable_client: FlaskClient) -> None:
    assert_unavailable(upload(unreachable_client), "unreachable")


def test_pages_answer_an_html_503_when_postgresql_is_unreachable(
    unreachable_client: FlaskClient,
) -> None:
    for response in (unreachable_client.get("/documents"), upload_page(unreachable_client)):
        assert response.status_code == 503
        assert response.mimetype == "text/html"
        assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)


def test_a_database_not_migrated_gives_503_naming_the_command_that_fixes_it(
    unmigrated_database_url: str,
) -> None:
    with app_factory(unmigrated_database_url) as make_app:
        client = make_app().test_client()
        for response in (upload(client), client.get("/api/documents")):
            assert_unavailable(response, "not migrated")
            assert "docqueue db upgrade" in response.get_json()["message"]


def test_healthz_says_a_database_is_not_migrated(unmigrated_database_url: str) -> None:
    with app_factory(unmigrated_database_url) as make_app:
        response = make_app().test_client().get("/healthz")

    assert response.status_code == 503
    assert response.get_json() == {"status": "error", "database": "not_migrated"}


@pytest.fixture
def read_only_postgresql(postgresql_clean: str) -> Iterator[Callable[[bool], None]]:
    """Switch the test database to read-only (new sessions), as a standby or an admin would."""
    database = postgresql_clean.rsplit("/", 1)[1]

    def set_read_only(read_only: bool) -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            value = "on" if read_only else "off"
            conn.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = {value}')

    yield set_read_only
    set_read_only(False)


def test_a_read_only_postgresql_gives_503_and_keeps_nothing(
    postgresql_clean: str, read_only_postgresql: Callable[[bool], None]
) -> None:
    app = create_app({**BASE_CONFIG, "DATABASE_URL": postgresql_clean})
    client = app.test_client()
    assert upload(client, b"before").status_code == 202
    close_connections(app)
    read_only_postgresql(True)

    assert_unavailable(upload(client, b"during"), "read-only")
    assert client.get("/api/documents").status_code == 200
    health = client.get("/healthz")
    assert (health.status_code, health.get_json()["database"]) == (503, "read_only")

    read_only_postgresql(False)
    close_connections(app)
    assert upload(client, b"after").status_code == 202
    assert row_counts(app)["documents"] == 2
    assert run_queue(app)["completed"] == 2
    close_connections(app)


def test_postgresql_connections_cannot_hang(postgresql_clean: str) -> None:
    """Connect timeout, TCP keepalives and a statement timeout on every connection."""
    app = create_app({**BASE_CONFIG, "DATABASE_URL": postgresql_clean})
    with app.app_context():
        connection = db.session.connection().connection.driver_connection
        parameters = connection.info.get_parameters()
        statement_timeout = db.session.scalar(text("SHOW statement_timeout"))
        db.session.rollback()
    close_connections(app)

    assert parameters["connect_timeout"] == "5"
    assert parameters["keepalives"] == "1"
    assert int(parameters["tcp_user_timeout"]) > 0
    assert statement_timeout == "1min"


def test_a_connection_dropped_after_the_answer_does_not_turn_it_into_an_error(
    postgresql_clean: str,
) -> None:
    """PostgreSQL restarts just after a view ran: the request's answer stands.

    Closing the request's session rolls back its transaction; on a connection the
    server dropped that rollback raises, and an upload already committed (202)
    used to reach its client as a 500.
    """
    app = create_app({**BASE_CONFIG, "DATABASE_URL": postgresql_clean})

    def answered_then_dropped() -> str:
        backend = db.session.scalar(text("SELECT pg_backend_pid()"))  # a transaction is open
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [backend])
        return "answered"

    app.add_url_rule("/answered-then-dropped", view_func=answered_then_dropped)
    client = app.test_client()

    response = client.get("/answered-then-dropped")

    assert (response.status_code, response.text) == (200, "answered")
    assert client.get("/api/documents").status_code == 200  # a new connection
    close_connections(app)


def test_pooled_connections_the_server_dropped_while_idle_are_replaced_before_use(
    postgresql_clean: str,
) -> None:
    """A restart (or a proxy's idle timeout) kills the pool's idle connections: the next
    request still succeeds, on a new connection, instead of answering 503."""
    app = create_app({**BASE_CONFIG, "DATABASE_URL": postgresql_clean})
    client = app.test_client()
    assert upload(client, b"before", "before.txt").status_code == 202
    assert drop_connections_to(postgresql_clean, PG_ADMIN_URL)
    time.sleep(PING_AFTER_IDLE_SECONDS + 0.2)  # idle long enough to be pinged

    assert upload(client, b"after", "after.txt").status_code == 202
    assert client.get("/api/documents").status_code == 200
    close_connections(app)


def test_an_upload_on_a_connection_the_server_just_dropped_gets_503_and_the_next_one_is_stored(
    postgresql_clean: str,
) -> None:
    """The server drops the pool's connection right before an upload's statement (too
    soon for the idle ping): that upload answers 503 and keeps nothing, and the broken
    connection is thrown away, so the next upload is stored on a new one."""
    app = create_app({**BASE_CONFIG, "DATABASE_URL": postgresql_clean})
    client = app.test_client()
    assert upload(client, b"before", "before.txt").status_code == 202
    drop_connections_to(postgresql_clean, PG_ADMIN_URL)

    assert_unavailable(upload(client, b"during", "during.txt"), "unreachable")
    assert upload(client, b"after", "after.txt").status_code == 202
    assert row_counts(app)["documents"] == 2
    close_connections(app)


def test_the_openapi_document_names_every_database_state_healthz_reports(
    unmigrated_database_url: str,
) -> None:
    with app_factory(unmigrated_database_url) as make_app:
        client = make_app().test_client()
        reported = client.get("/healthz").get_json()["database"]
        readiness = client.get("/readyz").get_json()["database"]
        schemas = client.get("/api/openapi.json").get_json()["components"]["schemas"]

    assert reported in schemas["Health"]["properties"]["database"]["enum"]
    assert readiness in schemas["Readiness"]["properties"]["database"]["enum"]
