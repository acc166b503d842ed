"""The in-app scheduler: ticks process the queue, starts only when the app serves."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import NamedTuple

import pytest
from flask import Flask
from sqlalchemy import select

from docqueue_app.models import Document, QueueItem, db
from docqueue_app.queue import DocumentQueueService
from docqueue_app.queue.scheduler import STALE_AFTER_INTERVALS, get_scheduler
from tests.helpers import wait_until

# Runs in the scheduler's own thread (PROCESS_ISOLATION="none"), so the test
# sees a document start and decides when it ends instead of racing a sleep.
HELD_PROCESSOR = "tests.queue.test_scheduler:held_processor"
_started = threading.Event()
_released = threading.Event()


def held_processor(content: bytes, filename: str, content_type: str) -> dict:
    """A processor that works until the test releases it (a minute at most)."""
    _started.set()
    if not _released.wait(timeout=60):
        raise TimeoutError("the test never released the document")
    return {"text": content.decode(), "title": None, "page_count": None, "metadata": {}}


class Held(NamedTuple):
    started: threading.Event  # set once a document is in hand
    released: threading.Event  # set by the test: documents may end


@pytest.fixture
def held() -> Iterator[Held]:
    """Hold every document until the test releases them; released at the end, so nothing hangs."""
    _started.clear()
    _released.clear()
    yield Held(_started, _released)
    _released.set()


def submit(app: Flask, count: int) -> None:
    with app.app_context():
        for n in range(count):
            DocumentQueueService().submit_document(f"{n}.txt", f"doc {n}".encode(), "text/plain")


def statuses(app: Flask) -> list[tuple[str, str, int]]:
    """(document status, item status, item attempts) of every document, in upload order."""
    with app.app_context():
        rows = db.session.execute(
            select(Document.status, QueueItem.status, QueueItem.attempts)
            .join(QueueItem, QueueItem.document_id == Document.id)
            .order_by(Document.id)
        ).all()
        db.session.rollback()
        return [tuple(row) for row in rows]


def test_disabled_scheduler_never_starts(app, client):
    client.get("/healthz")
    scheduler = get_scheduler(app)
    assert scheduler.state() == "disabled"
    assert scheduler.start() is False


def test_first_request_starts_it_and_ticks_process_the_queue(make_app):
    app = make_app(SCHEDULER_ENABLED=True, POLL_INTERVAL=0.1)
    scheduler = get_scheduler(app)
    try:
        with app.app_context():
            DocumentQueueService().submit_document("a.txt", b"tick tock", "text/plain")
        assert scheduler.last_tick is None  # building the app started nothing
        app.test_client().get("/healthz")
        assert scheduler.state() == "ok"

        def completed() -> bool:
            with app.app_context():
                return DocumentQueueService().get_queue_stats()["completed"] == 1

        wait_until(completed, timeout=20)
    finally:
        scheduler.shutdown()


def test_cli_commands_do_not_start_it(make_app):
    app = make_app(SCHEDULER_ENABLED=True)
    result = app.test_cli_runner().invoke(args=["queue", "stats"])
    assert result.exit_code == 0
    assert get_scheduler(app).last_tick is None


def test_a_scheduler_that_stopped_ticking_reads_stale(make_app):
    app = make_app(SCHEDULER_ENABLED=True, POLL_INTERVAL=0.01)
    scheduler = get_scheduler(app)
    assert scheduler.state() == "stale"  # enabled but never ticked
    scheduler.last_tick = 0.0
    assert scheduler.state() == "stale"


def test_a_long_pass_that_makes_progress_reads_ok(make_app, held):
    interval = 0.05
    app = make_app(
        SCHEDULER_ENABLED=True,
        POLL_INTERVAL=interval,
        PROCESSOR=HELD_PROCESSOR,
        PROCESS_ISOLATION="none",
    )
    scheduler = get_scheduler(app)
    submit(app, 1)
    scheduler.start()
    try:
        assert held.started.wait(timeout=30)
        # Longer than a scheduler that stopped ticking may stay quiet: the
        # document is held, so the pass is still running afterwards.
        time.sleep(2 * STALE_AFTER_INTERVALS * interval)
        response = app.test_client().get("/readyz")
        assert statuses(app)[0][0] == "processing"
        assert (response.status_code, response.json["scheduler"]) == (200, "ok")
    finally:
        held.released.set()
        scheduler.shutdown()
    assert statuses(app) == [("completed", "completed", 1)]


def test_a_pass_stuck_longer_than_a_document_may_take_reads_stale(make_app, held):
    app = make_app(
        SCHEDULER_ENABLED=True,
        POLL_INTERVAL=0.05,
        PROCESSOR=HELD_PROCESSOR,
        PROCESS_ISOLATION="none",
        PROCESS_TIMEOUT_SECONDS=0.2,  # not enforced without isolation: the pass hangs
    )
    scheduler = get_scheduler(app)
    submit(app, 1)
    scheduler.start()
    try:
        assert held.started.wait(timeout=30)
        wait_until(lambda: scheduler.state() == "stale", timeout=30)
        response = app.test_client().get("/readyz")
        assert (response.status_code, response.json["scheduler"]) == (503, "stale")
    finally:
        held.released.set()
        scheduler.shutdown()


def test_shutdown_finishes_the_document_in_hand_and_hands_back_the_rest(make_app, held):
    app = make_app(
        SCHEDULER_ENABLED=True,
        POLL_INTERVAL=0.05,
        BATCH_SIZE=3,
        PROCESSOR=HELD_PROCESSOR,
        PROCESS_ISOLATION="none",
    )
    scheduler = get_scheduler(app)
    submit(app, 3)
    scheduler.start()
    stopping = threading.Thread(target=scheduler.shutdown)
    try:
        assert held.started.wait(timeout=30)
        # One pass claimed all three; the first is in hand.
        assert [row[0] for row in statuses(app)] == ["processing"] * 3
        stopping.start()
        wait_until(lambda: scheduler.stopping, timeout=30)
    finally:
        held.released.set()  # the document in hand may end now that the stop was asked for
        scheduler.shutdown()  # returns once the pass has ended (after the thread's call)
    stopping.join(timeout=60)
    assert statuses(app) == [
        ("completed", "completed", 1),
        ("pending", "pending", 0),
        ("pending", "pending", 0),
    ]


def test_no_tick_starts_once_shutdown_began(make_app):
    app = make_app(SCHEDULER_ENABLED=True, POLL_INTERVAL=0.05)
    scheduler = get_scheduler(app)
    assert scheduler.start() is True
    try:
        scheduler.shutdown()
        submit(app, 1)
        scheduler.tick()  # one that was already due when the shutdown began
        assert scheduler.start() is False
        app.test_client().get("/healthz")  # nor does a request start it again
        assert statuses(app) == [("pending", "pending", 0)]
    finally:
        scheduler.shutdown()
