"""A database error that is no outage repeats at every try of a loop until someone
fixes it (a role's grants changed, a trigger an operator added): the log shows it in
full once, then a short line while it repeats, and one line when it works again,
not a traceback every few seconds."""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from flask import Flask
from sqlalchemy import create_engine, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

from docqueue_app.database import (
    OUTAGES,
    REPEATED_ERRORS,
    STILL_FAILING_LOG_EVERY_SECONDS,
    RepeatedErrorLog,
    report_failure,
)
from docqueue_app.models import QueueItem, db
from docqueue_app.queue import DocumentQueueService, maintenance, process_document_queue
from docqueue_app.queue.runner import QUEUE_PASS
from docqueue_app.queue.scheduler import QueueScheduler
from tests.conftest import PG_ADMIN_URL, PG_TEST_DATABASE, app_factory
from tests.e2e.server import migrated_env, start_worker, stop_worker, wait_for

DOCUMENTS = 3


@dataclass
class BreakableClaims:
    """A migrated database whose claims (an UPDATE of queue_items) can be made to fail."""

    database_url: str  # docqueue's own, to queue documents as an upload would
    worker_env: dict[str, str]  # the worker's, which runs into the error
    error: str  # the first line of the driver's message
    break_claims: Callable[[], None]
    repair: Callable[[], None]


@pytest.fixture(params=["sqlite", "postgresql"])
def claims(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BreakableClaims]:
    if request.param == "sqlite":
        yield _sqlite_with_a_trigger(request.getfixturevalue("sqlite_template"), tmp_path)
    else:
        request.getfixturevalue("postgres_url")  # reachable, else skipped (failed under CI=true)
        yield from _postgresql_with_a_role_of_its_own()


def _sqlite_with_a_trigger(template: Path, tmp_path: Path) -> BreakableClaims:
    """SQLite has no grants: an operator's trigger that refuses updates (IntegrityError)."""
    path = tmp_path / "docqueue.db"
    shutil.copyfile(template, path)

    def run(sql: str) -> None:
        with sqlite3.connect(path) as connection:
            connection.execute(sql)
        connection.close()

    url = f"sqlite:///{path}"
    return BreakableClaims(
        database_url=url,
        worker_env=migrated_env(url, {"DOCQUEUE_PROCESS_ISOLATION": "none"}),
        error="queue items are frozen for an audit",
        break_claims=lambda: run(
            "CREATE TRIGGER audit_freeze BEFORE UPDATE ON queue_items "
            "BEGIN SELECT RAISE(ABORT, 'queue items are frozen for an audit'); END"
        ),
        repair=lambda: run("DROP TRIGGER audit_freeze"),
    )


def _postgresql_with_a_role_of_its_own() -> Iterator[BreakableClaims]:
    """A database made for the test, and a role that owns nothing there but is granted
    what docqueue needs; taking back its UPDATE on queue_items is a 42501 on each claim."""
    database, role = f"{PG_TEST_DATABASE}_grants", f"docqueue_worker_{os.getpid()}"
    password = secrets.token_hex(8)  # for a server that asks one (this one trusts)
    admin = make_url(PG_ADMIN_URL).set(database=database)
    admin_url = admin.render_as_string(hide_password=False)
    worker_url = admin.set(username=role, password=password).render_as_string(hide_password=False)

    def run(sql: str, url: str = PG_ADMIN_URL) -> None:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(sql)

    run(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    run(f'CREATE DATABASE "{database}"')
    run(f'DROP ROLE IF EXISTS "{role}"')
    run(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
    try:
        migrated_env(admin_url)
        run(
            f'GRANT CONNECT ON DATABASE "{database}" TO "{role}";'
            f'GRANT USAGE ON SCHEMA public TO "{role}";'
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}";'
            f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{role}"',
            admin_url,
        )
        yield BreakableClaims(
            database_url=admin_url,
            worker_env={
                "DATABASE_URL": worker_url,
                "DOCQUEUE_SECRET_KEY": "repeats",
                "DOCQUEUE_POLL_INTERVAL": "0.2",
                "DOCQUEUE_PROCESS_ISOLATION": "none",
            },
            error="permission denied for table queue_items",
            break_claims=lambda: run(f'REVOKE UPDATE ON queue_items FROM "{role}"', admin_url),
            repair=lambda: run(f'GRANT UPDATE ON queue_items TO "{role}"', admin_url),
        )
    finally:
        run(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        run(f'DROP ROLE IF EXISTS "{role}"')


def test_a_worker_logs_an_error_that_repeats_in_full_once(
    claims: BreakableClaims, tmp_path: Path
) -> None:
    claims.break_claims()
    log_path = tmp_path / "worker.log"
    worker = start_worker(claims.worker_env, log_path)
    with app_factory(claims.database_url) as make_app:
        app = make_app()
        try:
            submit(app, 0)
            # Its second failed try (before the fix: a second traceback); each upload
            # after it wakes the worker for one more.
            wait_for(
                lambda: (
                    "still failing" in log_path.read_text()
                    or len(logged_with_traceback(log_path.read_text())) > 1
                ),
                "the worker to fail twice",
            )
            for number in range(1, DOCUMENTS):
                submit(app, number)
            claims.repair()
            wait_for(lambda: completed(app) == DOCUMENTS, "the documents to be processed")
        finally:
            assert stop_worker(worker) == 0
    log = log_path.read_text()

    logged_in_full = logged_with_traceback(log)
    assert len(logged_in_full) == 1, f"{len(logged_in_full)} tracebacks:\n{log}"
    in_full = logged_in_full[0]
    assert in_full.startswith("ERROR queue pass failed\nTraceback"), in_full
    assert claims.error in in_full
    still_failing = [line for line in log.splitlines() if "still failing" in line]
    assert re.fullmatch(
        rf"ERROR queue pass still failing \(2 times since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC\): "
        rf"{re.escape(claims.error)}",
        still_failing[0],
    ), still_failing
    (works_again,) = re.findall(r"^INFO queue pass works again after (\d+) failures$", log, re.M)
    assert int(works_again) >= 2
    # Nothing else per try either (psycopg's "error ignored terminating <Pipeline>" was one).
    warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert warnings == ["ERROR queue pass failed", *still_failing], warnings


def test_the_scheduler_counts_each_failed_pass_and_says_when_it_works_again(
    claims: BreakableClaims, caplog: pytest.LogCaptureFixture
) -> None:
    REPEATED_ERRORS.succeeded(QUEUE_PASS)  # an earlier test's failures are not this one's
    claims.break_claims()
    with app_factory(claims.database_url) as make_app:
        submit(make_app(), 0)
    with app_factory(claims.worker_env["DATABASE_URL"]) as make_app:
        app = make_app(POLL_INTERVAL=0.2)
        scheduler = QueueScheduler(app)  # ticked by the test, not by APScheduler
        caplog.set_level(logging.INFO)
        for _ in range(5):
            scheduler.tick()  # one failed pass, then a pause...
            scheduler.wakes.wake()  # ...which a notification ends
        failures = logged(caplog)
        claims.repair()
        scheduler.tick()
        assert completed(app) == 1

    assert [(level, traceback) for level, _, traceback in failures] == [
        ("ERROR", True),
        ("ERROR", False),
    ]
    assert failures[0][1] == "queue pass failed"
    assert failures[1][1].startswith("queue pass still failing (2 times since ")
    assert ("INFO", "queue pass works again after 5 failures", False) in logged(caplog)


def submit(app: Flask, number: int) -> None:
    """Queue a document as an upload would (which wakes the worker)."""
    with app.app_context():
        DocumentQueueService().submit_document(f"{number}.txt", b"words %d" % number, "text/plain")


def completed(app: Flask) -> int:
    with app.app_context():
        return DocumentQueueService().get_queue_stats()["completed"]


def logged_with_traceback(log: str) -> list[str]:
    """The records of a worker's log that carry a traceback (chained ones included)."""
    records = re.split(r"\n(?=(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) )", log)
    return [record for record in records if "\nTraceback (most recent call last):" in record]


# -- the pace of the short lines, on a clock the test moves -----------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def database_error(message: str) -> DBAPIError:
    """A real driver's error that is no outage: an operator's trigger refusing an update."""
    engine = create_engine("sqlite://")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (a)"))
        connection.execute(text("INSERT INTO t VALUES (1)"))
        refuse = f"SELECT RAISE(ABORT, '{message}')"
        connection.execute(text(f"CREATE TRIGGER t_frozen BEFORE UPDATE ON t BEGIN {refuse}; END"))
    with pytest.raises(IntegrityError) as raised, engine.begin() as connection:
        connection.execute(text("UPDATE t SET a = 2"))
    engine.dispose()
    return raised.value


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, bool]]:
    """(level, message, with a traceback) of each record since the last call."""
    records = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    caplog.clear()
    return records


def test_while_one_error_repeats_a_short_line_says_so_at_most_once_a_minute(caplog) -> None:
    caplog.set_level(logging.INFO, logger="docqueue_app.database")
    clock = Clock()
    repeats = RepeatedErrorLog(clock=clock)
    frozen = database_error("frozen")

    repeats.failed(frozen, "writing %d outcomes", 3)
    assert logged(caplog) == [("ERROR", "writing 3 outcomes failed", True)]
    clock.now += 0.2
    repeats.failed(frozen, "writing %d outcomes", 4)  # the same place, the same error
    ((level, message, traceback),) = logged(caplog)
    assert (level, traceback) == ("ERROR", False)
    assert re.fullmatch(
        r"writing 4 outcomes still failing \(2 times since .+ UTC\): frozen", message
    )

    clock.now += STILL_FAILING_LOG_EVERY_SECONDS - 1
    repeats.failed(frozen, "writing %d outcomes", 4)
    assert logged(caplog) == []
    clock.now += 1
    repeats.failed(frozen, "writing %d outcomes", 4)
    assert "still failing (4 times since" in logged(caplog)[0][1]

    other = database_error("another trigger")
    repeats.failed(other, "writing %d outcomes", 4)  # a different error: in full again
    assert logged(caplog) == [("ERROR", "writing 4 outcomes failed", True)]
    repeats.failed(frozen, "lease heartbeat")  # another place: in full
    assert logged(caplog) == [("ERROR", "lease heartbeat failed", True)]

    repeats.succeeded("writing %d outcomes")
    assert logged(caplog) == [("INFO", "writing 4 outcomes works again after 1 failure", False)]
    repeats.succeeded("writing %d outcomes")
    assert logged(caplog) == []
    repeats.failed(other, "writing %d outcomes", 5)  # it broke again: news
    assert logged(caplog) == [("ERROR", "writing 5 outcomes failed", True)]


def test_an_outage_keeps_its_own_one_line(caplog) -> None:
    caplog.set_level(logging.INFO, logger="docqueue_app.database")
    OUTAGES.succeeded()  # an earlier test's outage must not hide this one's line
    engine = create_engine("sqlite:////nonexistent-folder/docqueue.db")
    with pytest.raises(DBAPIError) as raised, engine.connect():
        pass
    for _ in range(3):
        report_failure(raised.value, "queue pass")
    ((level, message, traceback),) = logged(caplog)
    assert (level, traceback) == ("WARNING", False)
    assert message.startswith("database outage: the database is unreachable")
    OUTAGES.succeeded()


# An operator's trigger that keeps every queue item (an audit): the pruner's deletes fail.
KEEP_ITEMS = {
    "sqlite": (
        "CREATE TRIGGER keep_items BEFORE DELETE ON queue_items "
        "BEGIN SELECT RAISE(ABORT, 'queue items are kept for an audit'); END",
    ),
    "postgresql": (
        "CREATE FUNCTION keep_items() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'queue items are kept for an audit'; END $$",
        "CREATE TRIGGER keep_items BEFORE DELETE ON queue_items "
        "FOR EACH ROW EXECUTE FUNCTION keep_items()",
    ),
}
# Dropped after the test: PostgreSQL's test database outlives it.
DROP_KEEP_ITEMS = {
    "sqlite": ("DROP TRIGGER keep_items",),
    "postgresql": ("DROP TRIGGER keep_items ON queue_items", "DROP FUNCTION keep_items()"),
}


@contextmanager
def operator_keeping_queue_items(app: Flask) -> Iterator[None]:
    with app.app_context():
        kind = db.engine.dialect.name
        run_each(KEEP_ITEMS[kind])
        try:
            yield
        finally:
            run_each(DROP_KEEP_ITEMS[kind])


def run_each(statements: tuple[str, ...]) -> None:
    with db.engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))


def test_a_failing_maintenance_round_is_told_as_such_not_as_a_failed_pass(
    make_app, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pass processed and recorded its documents; only the pruner after it failed.
    # Told as "queue pass failed", the operator looked for a claim or a processor at fault.
    app = make_app(POLL_INTERVAL=0.2, PROCESS_ISOLATION="none")
    with app.app_context():
        submit(app, 0)
        process_document_queue()
        past_retention = datetime.now(UTC) - timedelta(days=app.config["RETENTION_DAYS"] + 1)
        db.session.execute(update(QueueItem).values(finished_at=past_retention))
        db.session.commit()
    submit(app, 1)
    monkeypatch.setitem(maintenance._last_round, "at", float("-inf"))  # a round is due
    caplog.set_level(logging.INFO)

    with operator_keeping_queue_items(app):
        QueueScheduler(app).tick()

    assert completed(app) == 2
    assert "queue items are kept for an audit" in caplog.text  # the traceback's
    records = logged(caplog)
    assert [message for _, message, _ in records if "failed" in message] == [
        "queue maintenance failed"
    ]
    [(level, _, traceback)] = [r for r in records if r[1] == "queue maintenance failed"]
    assert (level, traceback) == ("ERROR", True)
