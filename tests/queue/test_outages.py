"""Schedulers and workers live through a database outage: one log line, backoff, recovery.

The outage is real: another process holds SQLite's write lock for longer than
the busy timeout, so every claim fails with "database is locked" until it lets go.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from flask import Flask
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from docqueue_app import create_app
from docqueue_app.database import OUTAGES
from docqueue_app.models import db
from docqueue_app.queue.scheduler import QueueScheduler
from docqueue_app.queue.service import DocumentQueueService, Outcome
from tests.conftest import BASE_CONFIG
from tests.e2e.server import BIN, ROOT
from tests.helpers import (
    SHORT_BUSY_TIMEOUT,
    close_connections,
    hold_write_lock,
    upload,
    wait_until,
)

OUTAGE_BEGINS = "database outage"
OUTAGE_ENDS = "database reachable again"


@pytest.fixture
def sqlite_path(tmp_path: Path, sqlite_template: Path) -> Path:
    path = tmp_path / "docqueue.db"
    shutil.copyfile(sqlite_template, path)
    return path


@pytest.fixture
def no_outage_in_progress() -> None:
    OUTAGES.succeeded()  # an earlier test's outage must not hide this one's first line


@pytest.fixture
def locked_app(sqlite_path: Path, no_outage_in_progress: None) -> Iterator[Flask]:
    app = create_app(
        {
            **BASE_CONFIG,
            "DATABASE_URL": f"sqlite:///{sqlite_path}",
            "SQLALCHEMY_ENGINE_OPTIONS": SHORT_BUSY_TIMEOUT,
            "POLL_INTERVAL": 0.05,
        }
    )
    yield app
    close_connections(app)


def document_status(app: Flask, document_id: int) -> str:
    return app.test_client().get(f"/api/documents/{document_id}").get_json()["status"]


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if text in record.getMessage()]


def test_the_scheduler_logs_an_outage_once_backs_off_and_recovers(
    locked_app: Flask, sqlite_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    document_id = upload(locked_app.test_client()).get_json()["id"]
    scheduler = QueueScheduler(locked_app)  # ticked by the test, not by APScheduler
    scheduler.enabled, scheduler.last_tick = True, time.monotonic()
    caplog.set_level(logging.INFO)

    with hold_write_lock(sqlite_path):
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # 60 ticks fall due in these 3 s
            scheduler.tick()
            time.sleep(0.05)
        assert scheduler.state() == "ok"  # backing off is not hanging

    wait_until(lambda: scheduler.tick() or document_status(locked_app, document_id) == "completed")
    assert len(messages(caplog, OUTAGE_BEGINS)) == 1
    assert len(messages(caplog, OUTAGE_ENDS)) == 1
    assert not [record for record in caplog.records if record.exc_info]  # no tracebacks
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 2


def test_a_standalone_worker_rides_out_an_outage_with_one_line_of_log(
    sqlite_path: Path, tmp_path: Path, no_outage_in_progress: None
) -> None:
    app = create_app({**BASE_CONFIG, "DATABASE_URL": f"sqlite:///{sqlite_path}"})
    client = app.test_client()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{sqlite_path}",
        "DOCQUEUE_SECRET_KEY": "outage",
        "DOCQUEUE_PROCESS_ISOLATION": "none",
        "DOCQUEUE_SQLALCHEMY_ENGINE_OPTIONS": json.dumps(SHORT_BUSY_TIMEOUT),
    }
    document_id = upload(client).get_json()["id"]
    log_path = tmp_path / "worker.log"
    with hold_write_lock(sqlite_path) as release, open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [str(BIN / "docqueue"), "queue", "worker", "--poll-interval", "0.1"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            # Claims fail (the lock outlasts the busy timeout) until it is released.
            wait_until(lambda: OUTAGE_BEGINS in log_path.read_text(), timeout=60)
            time.sleep(1)  # several more failed tries, still one line
            assert worker.poll() is None, log_path.read_text()
            release()
            wait_until(lambda: document_status(app, document_id) == "completed", timeout=30)
        finally:
            worker.terminate()
            assert worker.wait(timeout=30) == 0
    close_connections(app)

    output = log_path.read_text()
    assert output.count(OUTAGE_BEGINS) == 1, output
    assert output.count(OUTAGE_ENDS) == 1, output
    assert "Traceback" not in output, output


def test_a_service_whose_connection_was_dropped_mid_transaction_recovers(
    postgresql_clean: str,
) -> None:
    """PostgreSQL restarted (or a failover) under a session: the next call reconnects.

    The bookkeeping thread of a pass keeps one session for the whole pass; a
    connection dropped in the middle of its transaction must not leave that
    session refusing every later call ("Can't reconnect until invalid
    transaction is rolled back"), or the pass never ends.
    """
    app = create_app({**BASE_CONFIG, "DATABASE_URL": postgresql_clean})
    upload(app.test_client())
    with app.app_context(), Session(db.engine) as session:
        service = DocumentQueueService(session)
        [item] = service.claim_due_items(1, "worker")
        claims = {item.id: item.claim}
        session.execute(text("SELECT 1"))  # a transaction open when the server drops it
        backend = session.scalar(text("SELECT pg_backend_pid()"))
        with psycopg.connect(postgresql_clean, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [backend])

        with pytest.raises(OperationalError):
            service.lost_claims(claims)
        assert service.lost_claims(claims) == set()
        assert service.record_outcomes([Outcome.of(item)]) == 1
        db.engine.dispose()
