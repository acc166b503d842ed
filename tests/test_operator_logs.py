"""What an operator reads in the logs of real processes: each event once, on one line,
with the ids to look it up (document, queue item, attempt)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask

from docqueue_app.models import db, latest_items, utcnow
from docqueue_app.queue import DocumentQueueService
from tests.e2e.server import Server, start_worker, stop_worker, wait_for
from tests.helpers import close_connections, execute_sql

SETTINGS = {
    "DOCQUEUE_SECRET_KEY": "logs",
    "DOCQUEUE_POLL_INTERVAL": "0.2",
    "DOCQUEUE_PROCESS_ISOLATION": "subprocess",
    "DOCQUEUE_MAX_ATTEMPTS": "2",
    "DOCQUEUE_RETRY_BASE_SECONDS": "0",
    # Kills the processing process of a document that starts with CRASH: a transient error.
    "DOCQUEUE_PROCESSOR": "tests.e2e.processors:crash_on_marker",
}


@pytest.fixture
def app(make_app) -> Flask:
    """Queues documents as the processes under test would: two attempts each."""
    return make_app(MAX_ATTEMPTS=2)


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, **SETTINGS}


def submit(app: Flask, filename: str, content: bytes, content_type: str) -> tuple[int, int]:
    """A document queued as an upload queues it: (document id, queue item id)."""
    with app.app_context():
        service = DocumentQueueService()
        document, _ = service.submit_document(filename, content, content_type)
        return document.id, latest_items(db.session, [document.id])[document.id].id


def all_finished(app: Flask) -> bool:
    with app.app_context():
        stats = DocumentQueueService().get_queue_stats()
    close_connections(app)
    return stats["pending"] == 0 and stats["in_progress"] == 0


def worker_log_until_all_finished(app: Flask, env: dict[str, str], log_path: Path) -> str:
    """What a real ``docqueue queue worker`` logged, from its start to its stop (SIGTERM)
    once no document is left to process."""
    worker = start_worker(env, log_path)
    try:
        wait_for(lambda: all_finished(app), "every document to finish")
    finally:
        assert stop_worker(worker) == 0
    return log_path.read_text()


def lines_about(log: str, document_id: int) -> list[str]:
    return [line for line in log.splitlines() if re.search(rf"\bdocument {document_id}\b", line)]


def test_a_worker_logs_each_outcome_once_with_the_ids_to_look_it_up(app, env, tmp_path):
    done, _ = submit(app, "fine.txt", b"one two three", "text/plain")
    flaky, flaky_item = submit(app, "flaky.txt", b"CRASH every time", "text/plain")
    broken, broken_item = submit(app, "broken.pdf", b"not a pdf at all", "application/pdf")
    log = worker_log_until_all_finished(app, env, tmp_path / "worker.log")

    assert "INFO worker started" in log and "INFO worker stopped" in log
    # Completions are counted, not logged (a debug line): at thousands a second they
    # would drown the lines someone must act on.
    assert lines_about(log, done) == []
    retried, failed = lines_about(log, flaky)
    assert retried.startswith(
        f"WARNING document {flaky} will be retried: queue item {flaky_item}, attempt 1 of 2 "
        "failed: processing process died"
    )
    assert failed.startswith(
        f"ERROR document {flaky} failed for good: queue item {flaky_item}, attempt 2 of 2: "
        "processing process died"
    )
    (given_up,) = lines_about(log, broken)
    assert given_up.startswith(
        f"ERROR document {broken} failed for good: queue item {broken_item}, attempt 1 of 2: "
    )
    assert "Traceback" not in log
    # The documents' own lines say it all: a summary of each pass doubled them.
    assert not [line for line in log.splitlines() if line.startswith("INFO processed")]


def test_the_scheduler_in_gunicorn_logs_its_documents_with_time_and_level(app, env, tmp_path):
    # Python drops a library's INFO lines unless a handler takes them: under gunicorn
    # the scheduler's start was not logged, and errors came out bare, without time or
    # process.
    document, item = submit(app, "broken.pdf", b"not a pdf at all", "application/pdf")
    log_path = tmp_path / "gunicorn.log"

    server = Server(env, workers=1, log_path=log_path).start()
    try:
        server.wait_healthy()
        wait_for(lambda: all_finished(app), "the document to finish")
    finally:
        server.stop()
    log = log_path.read_text()

    assert re.search(r"\[\d+\] \[INFO\] queue scheduler started", log), log
    (failed,) = lines_about(log, document)
    assert re.search(
        rf"^\[.+\] \[\d+\] \[ERROR\] document {document} failed for good: queue item {item}, "
        "attempt 1 of 2: ",
        failed,
    )


def test_a_worker_logs_each_item_it_rescues_from_a_dead_worker(app, env, tmp_path):
    document, item = submit(app, "fine.txt", b"one two three", "text/plain")
    with app.app_context():
        DocumentQueueService().claim_due_items(1, "dead-host:4242:abcdef")
    execute_sql(app, "UPDATE queue_items SET lease_expires_at = :past", past=utcnow())
    log = worker_log_until_all_finished(app, env, tmp_path / "worker.log")

    (rescued,) = lines_about(log, document)
    assert rescued == (
        f"WARNING queue item {item} of document {document}: the lease of worker "
        "dead-host:4242:abcdef ran out during attempt 1 of 2; handed back to run again"
    )
