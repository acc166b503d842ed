"""Many hosts, one clock: leases and due times are judged by PostgreSQL's clock.

A host whose own clock is off (an hour ahead, an hour behind) shares the
database with the others. Its clock is simulated by shifting the time the
service would read from this host; the database's clock is the real one.
(SQLite serves one host, whose clock is the database's: nothing to test there.)
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, timedelta

import psycopg
import pytest
from flask import Flask
from sqlalchemy import text

from docqueue_app import create_app, database
from docqueue_app.models import QueueItem, db, utcnow
from docqueue_app.queue.service import DocumentQueueService
from tests.conftest import BASE_CONFIG
from tests.helpers import close_connections, execute_sql, upload

HOUR = timedelta(hours=1)


@pytest.fixture
def app(postgresql_clean: str) -> Iterator[Flask]:
    app = create_app({**BASE_CONFIG, "DATABASE_URL": postgresql_clean})
    yield app
    close_connections(app)


def host_clock_off_by(monkeypatch: pytest.MonkeyPatch, offset: timedelta) -> None:
    monkeypatch.setattr(database, "utcnow", lambda: utcnow() + offset)


def the_item(app: Flask) -> QueueItem:
    with app.app_context():
        item = db.session.scalars(db.select(QueueItem)).one()
        db.session.expunge(item)
        db.session.rollback()
    return item


def test_a_host_an_hour_ahead_cannot_rescue_a_live_lease(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(app.test_client())
    with app.app_context():
        assert len(DocumentQueueService().claim_due_items(1, "on-time-host")) == 1

    host_clock_off_by(monkeypatch, HOUR)
    with app.app_context():
        service = DocumentQueueService()
        assert service.rescue_expired_leases() == 0
        assert service.claim_due_items(1, "fast-host") == []

    item = the_item(app)
    assert (item.status, item.locked_by, item.attempts) == ("in_progress", "on-time-host", 1)


def test_a_host_an_hour_ahead_does_not_run_a_retry_early(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(app.test_client())
    execute_sql(app, "UPDATE queue_items SET run_at = :later", later=utcnow() + HOUR / 2)

    host_clock_off_by(monkeypatch, HOUR)
    with app.app_context():
        assert DocumentQueueService().claim_due_items(1, "fast-host") == []


def test_a_host_an_hour_behind_gives_leases_their_full_length(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(app.test_client())
    host_clock_off_by(monkeypatch, -HOUR)
    with app.app_context():
        [claimed] = DocumentQueueService().claim_due_items(1, "slow-host")
        DocumentQueueService().extend_leases({claimed.id: claimed.claim})

    lease = app.config["LEASE_SECONDS"]
    assert the_item(app).lease_expires_at > utcnow() + timedelta(seconds=lease - 30)
    monkeypatch.undo()
    with app.app_context():
        assert DocumentQueueService().rescue_expired_leases() == 0


@pytest.fixture
def server_time_zone(postgresql_clean: str) -> Iterator[str]:
    """The test database's default time zone set to one far from UTC (new sessions only)."""
    name = postgresql_clean.rsplit("/", 1)[1]
    with psycopg.connect(postgresql_clean, autocommit=True) as connection:
        connection.execute(f"ALTER DATABASE \"{name}\" SET timezone TO 'Asia/Kolkata'")
    try:
        yield "Asia/Kolkata"
    finally:
        with psycopg.connect(postgresql_clean, autocommit=True) as connection:
            connection.execute(f'ALTER DATABASE "{name}" RESET timezone')


def test_sessions_run_in_utc_whatever_the_servers_default(
    server_time_zone: str, postgresql_clean: str
) -> None:
    # docqueue's timestamps are UTC; a claim reads its rows' timestamps as the
    # driver tags them, which costs nothing only when the session is in UTC.
    app = create_app({**BASE_CONFIG, "DATABASE_URL": postgresql_clean})
    try:
        upload(app.test_client())
        with app.app_context():
            assert db.session.execute(text("SHOW TimeZone")).scalar() == "UTC"
            [claimed] = DocumentQueueService().claim_due_items(1, "w")
        item = the_item(app)
        assert claimed.started_at.tzinfo is UTC
        assert (claimed.started_at, claimed.lease_expires_at, claimed.run_at) == (
            item.started_at,
            item.lease_expires_at,
            item.run_at,
        )
    finally:
        close_connections(app)
