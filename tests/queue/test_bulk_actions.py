"""The console's bulk actions on a big backlog, on SQLite and PostgreSQL: "Retry all
failed" after a bad day (20,000 failed documents) and "Cancel" of the selected items.

Both write in batches, each its own transaction: uploads, claims and workers go on
between them, and the request ends in seconds rather than in one transaction per
item (minutes at 20,000, past a proxy's 60 s timeout). Items that changed while
the action ran are left as they are and not counted.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, func, select, text
from sqlalchemy.orm import Session

from bench.bulk_actions import fill_failed
from bench.perf.databases import Database, fill_queue
from docqueue_app.database import database_now
from docqueue_app.models import QueueItem, db, utcnow
from docqueue_app.queue import DocumentQueueService
from docqueue_app.transactions import after_commit
from tests.conftest import app_factory
from tests.helpers import backend_name, engine_events, execute_sql, upload, wait_until

PASSWORD = "bulk-s3cret"
FAILED = 20_000
# Documents 1..3: their failed item was followed by a completed one (not what they show).
SUPERSEDED = (1, 2, 3)
# "A few hundred items per transaction": at most one transaction per this many items.
ITEMS_PER_TRANSACTION_AT_LEAST = 100


def basic_auth() -> str:
    return "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()


@pytest.fixture
def admin_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(
        ADMIN_PASSWORD=PASSWORD, WEBHOOK_URL="http://127.0.0.1:9/hook", WEBHOOK_ALLOW_PRIVATE=True
    )


@pytest.fixture
def admin(admin_app: Flask) -> FlaskClient:
    client = admin_app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = basic_auth()
    return client


def flashes(client: FlaskClient) -> list[str]:
    with client.session_transaction() as session:
        return [message for _, message in session.pop("_flashes", [])]


def scalar(app: Flask, sql: str, **params: Any) -> Any:
    with app.app_context():
        return db.session.execute(text(sql), params).scalar()


def fill_failed_backlog(app: Flask, database_url: str) -> None:
    """FAILED documents whose one item failed (with its attempt), 1..3 since completed."""
    fill_failed(Database(backend_name(app), database_url), FAILED)
    for document_id in SUPERSEDED:
        execute_sql(
            app,
            "INSERT INTO queue_items (document_id, operation, status, priority, attempts,"
            " max_attempts, run_at, created_at, started_at, finished_at)"
            " SELECT id, 'reprocess', 'completed', 5, 1, 5, created_at, created_at, created_at,"
            " created_at FROM documents WHERE id = :id",
            id=document_id,
        )
    execute_sql(app, "UPDATE documents SET status = 'completed', error = NULL WHERE id <= 3")


@contextmanager
def commits_of_this_thread(app: Flask) -> Iterator[list[int]]:
    """Counts the transactions the calling thread commits on the app's engine."""
    thread = threading.get_ident()
    commits = [0]

    def count(_connection: Any) -> None:
        if threading.get_ident() == thread:
            commits[0] += 1

    with engine_events(app, commit=count):
        yield commits


@contextmanager
def after_the_first_write_of_this_thread(action: Callable[[], None]) -> Iterator[None]:
    """Runs ``action`` once, on the calling thread, after its first write commits and
    has let go of every lock (the service's after-commit hook: SQLite's write lock and
    the process's write turn are free, PostgreSQL's row locks released)."""
    thread = threading.get_ident()
    done = threading.Event()

    def once() -> None:
        if not done.is_set():
            done.set()
            action()

    def on_begin(session: Session, *_: Any) -> None:
        if threading.get_ident() == thread and not done.is_set():
            after_commit(session, once)

    event.listen(Session, "after_begin", on_begin)
    try:
        yield
    finally:
        event.remove(Session, "after_begin", on_begin)


def in_another_thread(work: Callable[[], Any]) -> Any:
    """Run ``work`` on a thread of its own (its own app context, session and
    connection) and wait for it to end; what it returned."""
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(work()))
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the other thread's work did not end"
    assert results, "the other thread's work failed"
    return results[0]


def test_retry_all_failed_commits_in_batches_while_uploads_go_on(
    admin_app: Flask, admin: FlaskClient, database_url: str
) -> None:
    fill_failed_backlog(admin_app, database_url)
    last = FAILED
    seen_meanwhile: dict[str, Any] = {}

    def meanwhile() -> dict[str, Any]:
        """Another client uploads and changes three of the last items in the meantime."""
        other = admin_app.test_client()
        other.environ_base["HTTP_AUTHORIZATION"] = basic_auth()
        return {
            "upload": upload(other, b"uploaded during the retry-all").status_code,
            "delete": other.delete(f"/api/documents/{last}").status_code,
            "reprocess": other.post(f"/api/documents/{last - 1}/reprocess").status_code,
            "retry": other.post(f"/api/queue/items/{last - 2}/retry").status_code,
            "still_failed": scalar(
                admin_app, "SELECT count(*) FROM queue_items WHERE status = 'failed'"
            ),
        }

    with (
        commits_of_this_thread(admin_app) as commits,
        after_the_first_write_of_this_thread(
            lambda: seen_meanwhile.update(in_another_thread(meanwhile))
        ),
    ):
        response = admin.post("/admin/retry-failed", data={"next": "/admin/?status=failed"})

    assert response.status_code == 303
    changed_meanwhile = 3
    retried = FAILED - len(SUPERSEDED) - changed_meanwhile
    assert flashes(admin) == [f"Retried {retried:,} items."]
    # The other client was served while the retry-all was under way, neither before
    # it began nor after it ended: its upload committed between two of its batches.
    assert seen_meanwhile.pop("still_failed") in range(len(SUPERSEDED) + 1, FAILED)
    assert seen_meanwhile == {"upload": 202, "delete": 204, "reprocess": 202, "retry": 200}
    assert commits[0] <= FAILED // ITEMS_PER_TRANSACTION_AT_LEAST

    rows = "FROM queue_items WHERE id BETWEEN 4 AND :last"
    assert (
        scalar(
            admin_app,
            f"SELECT count(*) {rows} AND status = 'pending' AND attempts = 0"
            " AND started_at IS NULL AND finished_at IS NULL AND locked_by IS NULL",
            last=last - 3,
        )
        == retried
    )
    assert (
        scalar(
            admin_app,
            "SELECT count(*) FROM documents WHERE id BETWEEN 4 AND :last"
            " AND status = 'pending' AND error IS NULL",
            last=last - 3,
        )
        == retried
    )
    assert (
        scalar(admin_app, "SELECT count(*) FROM queue_items WHERE status = 'failed'")
        == len(SUPERSEDED) + 1  # and the reprocessed document's old item
    )
    assert scalar(admin_app, "SELECT count(*) FROM queue_items WHERE status = 'pending'") == (
        retried + 3  # the item retried alone, the reprocess and the upload
    )
    assert scalar(
        admin_app, "SELECT count(*) FROM documents WHERE status = 'completed' AND id <= 3"
    ) == len(SUPERSEDED)
    # Every attempt's history is kept (the deleted document's went with it).
    assert scalar(admin_app, "SELECT count(*) FROM queue_attempts") == FAILED - 1
    # Due now: the first worker to look claims them.
    with admin_app.app_context():
        due = select(func.count()).where(
            QueueItem.status == "pending", QueueItem.run_at <= database_now(db.session)
        )
        assert db.session.scalar(due) == retried + 3


def test_cancel_of_the_selected_items_commits_in_batches(
    admin_app: Flask, admin: FlaskClient, database_url: str
) -> None:
    """The console cancels at most its BULK_LIMIT (1,000) newest selected items: here
    the pending and in-progress ones, of 1,200 queued."""
    queued = 1_200
    fill_queue(Database(backend_name(admin_app), database_url), 1, queued, timedelta(days=1))
    running = queued - 100  # held by a worker, its attempt open
    execute_sql(
        admin_app,
        "UPDATE queue_items SET status = 'in_progress', attempts = 1, locked_by = 'worker-1',"
        " started_at = created_at, lease_expires_at = :later WHERE id = :id",
        later=utcnow() + timedelta(minutes=5),
        id=running,
    )
    execute_sql(admin_app, "UPDATE documents SET status = 'processing' WHERE id = :id", id=running)
    execute_sql(
        admin_app,
        "INSERT INTO queue_attempts (queue_item_id, attempt, worker, started_at)"
        " SELECT id, 1, 'worker-1', created_at FROM queue_items WHERE id = :id",
        id=running,
    )
    oldest_selected = queued - 999

    def meanwhile() -> None:
        """Another client deletes one of the oldest selected documents, cancels another."""
        other = admin_app.test_client()
        other.environ_base["HTTP_AUTHORIZATION"] = basic_auth()
        assert other.delete(f"/api/documents/{oldest_selected}").status_code == 204
        assert other.post(f"/api/queue/items/{oldest_selected + 1}/cancel").status_code == 200

    with (
        commits_of_this_thread(admin_app) as commits,
        after_the_first_write_of_this_thread(lambda: in_another_thread(meanwhile)),
    ):
        response = admin.post("/admin/bulk/cancel", data={})

    assert response.status_code == 303
    assert flashes(admin) == [
        "Cancelled 998 items.",
        "2 items changed in the meantime and were left as they are.",
    ]
    assert commits[0] <= 1_000 // ITEMS_PER_TRANSACTION_AT_LEAST + 1
    selected = "FROM queue_items WHERE id > :first"
    assert (
        scalar(
            admin_app,
            f"SELECT count(*) {selected} AND status = 'cancelled' AND finished_at IS NOT NULL"
            " AND locked_by IS NULL AND lease_expires_at IS NULL",
            first=queued - 1_000,
        )
        == 998 + 1  # and the one the other client cancelled
    )
    assert scalar(admin_app, "SELECT count(*) FROM queue_items WHERE status = 'pending'") == 200
    assert (
        scalar(
            admin_app,
            "SELECT count(*) FROM documents WHERE status = 'cancelled' AND id > :first",
            first=queued - 1_000,
        )
        == 998 + 1
    )
    assert (
        scalar(
            admin_app,
            "SELECT count(*) FROM queue_attempts WHERE queue_item_id = :id"
            " AND outcome = 'cancelled' AND finished_at IS NOT NULL",
            id=running,
        )
        == 1
    )
    # Each cancelled document owes its document.cancelled event, once.
    assert (
        scalar(
            admin_app,
            "SELECT count(DISTINCT document_id) FROM webhook_deliveries"
            " WHERE event = 'document.cancelled'",
        )
        == scalar(admin_app, "SELECT count(*) FROM webhook_deliveries")
        == 998 + 1
    )


@pytest.fixture
def postgresql_app(postgresql_clean: str) -> Iterator[Flask]:
    with app_factory(postgresql_clean) as factory:
        yield factory()


def test_an_item_another_transaction_holds_does_not_hold_up_the_rest_of_the_batch(
    postgresql_app: Flask, postgresql_clean: str
) -> None:
    """PostgreSQL: a cancel of three items, the middle one locked by another transaction
    (a worker writing its outcome): the other two are cancelled (and committed) at
    once, the held one as soon as it is let go."""
    database = Database("postgresql", postgresql_clean)
    fill_queue(database, 1, 3, timedelta(days=1))
    cancelled: list[int] = []

    def cancel_all_three() -> None:
        with postgresql_app.app_context():
            cancelled.append(DocumentQueueService().cancel_items([1, 2, 3]))

    with closing(database.connect()) as holder, closing(database.connect()) as observer:
        holder.execute("BEGIN")
        holder.execute("SELECT id FROM queue_items WHERE id = 2 FOR UPDATE")
        canceller = threading.Thread(target=cancel_all_three)
        canceller.start()
        wait_until(
            lambda: observer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            ).fetchone()[0]
        )
        statuses = "SELECT id, status FROM queue_items ORDER BY id"
        assert observer.execute(statuses).fetchall() == [
            (1, "cancelled"),
            (2, "pending"),
            (3, "cancelled"),
        ]
        holder.execute("COMMIT")
        canceller.join(timeout=60)
        assert not canceller.is_alive()
        assert cancelled == [3]
        assert [status for _, status in observer.execute(statuses).fetchall()] == ["cancelled"] * 3
        documents = "SELECT count(*) FROM documents WHERE status = 'cancelled'"
        assert observer.execute(documents).fetchone()[0] == 3


def test_a_retry_batch_that_a_reprocess_wins_a_document_of_retries_the_others(
    postgresql_app: Flask, postgresql_clean: str
) -> None:
    """PostgreSQL: while "Retry all failed" writes its batch, a reprocess queues a
    pending item for one of its documents (uncommitted yet, so the batch chose that
    document's failed item): the index of pending items refuses the batch once the
    reprocess commits. The others are retried all the same; that one is superseded."""
    database = Database("postgresql", postgresql_clean)
    fill_failed(database, 3)
    retried: list[int] = []

    def retry_all() -> None:
        with postgresql_app.app_context():
            retried.append(DocumentQueueService().retry_failed_items())

    with closing(database.connect()) as reprocess, closing(database.connect()) as observer:
        reprocess.execute("BEGIN")
        reprocess.execute(
            "INSERT INTO queue_items (document_id, operation, status, priority, attempts,"
            " max_attempts, run_at, created_at) VALUES (2, 'reprocess', 'pending', 5, 0, 5,"
            " now(), now())"
        )
        reprocess.execute("UPDATE documents SET status = 'pending', error = NULL WHERE id = 2")
        retrier = threading.Thread(target=retry_all)
        retrier.start()
        wait_until(
            lambda: observer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            ).fetchone()[0]
        )
        reprocess.execute("COMMIT")
        retrier.join(timeout=60)
        assert not retrier.is_alive()
        assert retried == [2]
        items = "SELECT document_id, operation, status FROM queue_items ORDER BY id"
        assert observer.execute(items).fetchall() == [
            (1, "process", "pending"),
            (2, "process", "failed"),
            (3, "process", "pending"),
            (2, "reprocess", "pending"),
        ]
        documents = "SELECT status FROM documents ORDER BY id"
        assert [status for (status,) in observer.execute(documents).fetchall()] == ["pending"] * 3
