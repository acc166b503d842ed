"""Upgrading (and rolling back one deploy) with documents in every queue state.

The rows are written with SQL that fits the revision the database is at (the
current models may not), as the code of that time left them; then the database is
migrated and today's worker runs the queue: nothing lost, nothing stuck, nothing
done twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask_migrate import downgrade, upgrade
from sqlalchemy import text

from docqueue_app import create_app
from docqueue_app.models import db
from docqueue_app.queue import DocumentQueueService, process_document_queue
from tests.conftest import BASE_CONFIG
from tests.helpers import backend_name, close_connections, execute_sql

# The revisions an install may have run before the current one (0005 added the
# PostgreSQL notifications, 0006 webhooks, 0007 statistics).
OLDER_REVISIONS = ("0005", "0006", "0007")
HEAD, BEFORE_HEAD = "0008", "0007"

# name: (item status, attempts, lease) for each document written behind the code's back.
# "abandoned" was claimed by a worker the deploy stopped (its lease ran out); "leased"
# by one still running the old code (its lease holds: no one else may take it).
QUEUE_STATES = {
    "pending": ("pending", 0, None),
    "waiting-retry": ("pending", 1, None),
    "abandoned": ("in_progress", 1, timedelta(minutes=-1)),
    "leased": ("in_progress", 1, timedelta(minutes=10)),
    "completed": ("completed", 1, None),
    "failed": ("failed", 3, None),
    "cancelled": ("cancelled", 0, None),
}
DOCUMENT_STATUS = {"in_progress": "processing"}
FINISHED = ("completed", "failed", "cancelled")
OLD_WORKER = "old-host:1234"


@pytest.fixture
def old_app(unmigrated_database_url: str) -> Iterator[Flask]:
    app = create_app({**BASE_CONFIG, "DATABASE_URL": unmigrated_database_url})
    yield app
    close_connections(app)


@pytest.mark.parametrize("revision", OLDER_REVISIONS)
def test_upgrading_with_work_in_flight_loses_nothing_and_repeats_nothing(old_app, revision):
    with old_app.app_context():
        upgrade(revision=revision)
    write_documents_in_every_state(old_app, with_webhooks=revision >= "0006")
    before = snapshot(old_app)

    with old_app.app_context():
        upgrade()
        process_document_queue(worker_id="new-host:1")

    assert_queue_carried_on(old_app, before)


def test_rolling_back_one_deploy_keeps_the_documents_and_upgrading_again_works(old_app):
    with old_app.app_context():
        upgrade()
    write_documents_in_every_state(old_app, with_webhooks=True)
    before = snapshot(old_app)

    with old_app.app_context():
        downgrade(revision=BEFORE_HEAD)
        assert snapshot(old_app) == before
        upgrade(revision=HEAD)
        process_document_queue(worker_id="new-host:1")

    assert_queue_carried_on(old_app, before)
    with old_app.app_context():  # and ids are still never given twice (0008)
        service = DocumentQueueService()
        newest, _ = service.submit_document("new.txt", b"new", "text/plain", 5)
        service.delete_document(newest.id)
        again, _ = service.submit_document("again.txt", b"again", "text/plain", 5)
        assert again.id > newest.id


def write_documents_in_every_state(app: Flask, with_webhooks: bool) -> None:
    """One document per queue state, in the columns every revision since 0001 has."""
    now = datetime.now(UTC)
    for number, (name, (status, attempts, lease)) in enumerate(QUEUE_STATES.items(), 1):
        write_document(app, number, name, status, now)
        write_item(app, number, status, attempts, lease, now)
        for attempt in range(1, attempts + 1):
            outcome = attempt_outcome(status, attempt, attempts)
            insert_row(
                app,
                "queue_attempts",
                queue_item_id=number,
                attempt=attempt,
                worker=OLD_WORKER,
                started_at=now - timedelta(minutes=40),
                finished_at=None if outcome is None else now - timedelta(minutes=30),
                outcome=outcome,
            )
        if with_webhooks and status in FINISHED:
            write_delivery(app, number, status, now)
    if backend_name(app) == "postgresql":  # the ids were given, not drawn
        for table in ("documents", "queue_items", "queue_attempts"):
            execute_sql(
                app,
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                f" (SELECT coalesce(max(id), 0) + 1 FROM {table}), false)",
            )


def insert_row(app: Flask, table: str, **values: object) -> None:
    columns = ", ".join(values)
    placeholders = ", ".join(f":{column}" for column in values)
    execute_sql(app, f"INSERT INTO {table} ({columns}) VALUES ({placeholders})", **values)


def write_document(app: Flask, number: int, name: str, status: str, now: datetime) -> None:
    content = f"the {name} document".encode()
    insert_row(
        app,
        "documents",
        id=number,
        filename=f"{name}.txt",
        content_type="text/plain",
        size=len(content),
        sha256=f"{number:064x}",
        status=DOCUMENT_STATUS.get(status, status),
        error="unreadable" if status == "failed" else None,
        text=content.decode() if status == "completed" else None,
        created_at=now - timedelta(hours=1),
        updated_at=now - timedelta(hours=1),
        processed_at=now - timedelta(minutes=30) if status in FINISHED else None,
    )
    insert_row(app, "document_contents", document_id=number, data=content)


def write_item(
    app: Flask, number: int, status: str, attempts: int, lease: timedelta | None, now: datetime
) -> None:
    insert_row(
        app,
        "queue_items",
        id=number,
        document_id=number,
        operation="process",
        status=status,
        priority=5,
        attempts=attempts,
        max_attempts=3,
        run_at=now - timedelta(minutes=5),
        locked_by=OLD_WORKER if lease else None,
        lease_expires_at=now + lease if lease else None,
        last_error="timed out" if attempts and status == "pending" else None,
        created_at=now - timedelta(hours=1),
        started_at=now - timedelta(minutes=40) if attempts else None,
        finished_at=now - timedelta(minutes=30) if status in FINISHED else None,
    )


def attempt_outcome(status: str, attempt: int, attempts: int) -> str | None:
    """How the old worker recorded an attempt; None while it runs."""
    if attempt < attempts or status == "pending":
        return "retry"
    return None if status == "in_progress" else status


def write_delivery(app: Flask, number: int, status: str, now: datetime) -> None:
    insert_row(
        app,
        "webhook_deliveries",
        delivery_id=f"00000000-0000-4000-8000-{number:012d}",
        document_id=number,
        event=f"document.{status}",
        url="https://example.com/hook",
        payload="{}",
        status="pending",
        attempts=0,
        max_attempts=5,
        next_attempt_at=now,
        created_at=now,
    )


def snapshot(app: Flask) -> dict[str, list[tuple]]:
    """What the operator would notice: each document, item, attempt and delivery."""
    queries = {
        "documents": "SELECT d.id, d.filename, d.status, d.text, c.data FROM documents d"
        " JOIN document_contents c ON c.document_id = d.id ORDER BY d.id",
        "items": "SELECT id, document_id, status, attempts, locked_by, last_error"
        " FROM queue_items ORDER BY id",
        "attempts": "SELECT queue_item_id, attempt, outcome FROM queue_attempts"
        " ORDER BY queue_item_id, attempt",
        "deliveries": "SELECT document_id, event, status FROM webhook_deliveries ORDER BY id",
    }
    with app.app_context(), db.engine.connect() as connection:
        tables = set(db.inspect(connection).get_table_names())
        return {
            name: [tuple(row) for row in connection.execute(text(sql))]
            for name, sql in queries.items()
            if name != "deliveries" or "webhook_deliveries" in tables
        }


def assert_queue_carried_on(app: Flask, before: dict[str, list[tuple]]) -> None:
    after = snapshot(app)
    items = {row[0]: row for row in after["items"]}
    documents = {row[0]: row for row in after["documents"]}
    attempts = [(item, attempt) for item, attempt, _ in after["attempts"]]
    assert [row[0] for row in after["documents"]] == [row[0] for row in before["documents"]]
    assert len(attempts) == len(set(attempts))  # no attempt recorded twice
    for number, name in enumerate(QUEUE_STATES, 1):
        item, document = items[number], documents[number]
        old_item = before["items"][number - 1]
        if name == "leased":  # its worker still holds it: untouched
            assert item == old_item
        elif old_item[2] in FINISHED:  # finished before the upgrade: never run again
            assert item == old_item
            assert document == before["documents"][number - 1]
        else:  # due work: done once, by the new worker
            assert (item[2], document[2]) == ("completed", "completed"), name
            assert document[3] == f"the {name} document", name
            assert item[3] == old_item[3] + 1, name
    if "deliveries" in before:
        assert after["deliveries"][: len(before["deliveries"])] == before["deliveries"]
