"""The in-app scheduler: ticks process the queue, starts only when the app serves."""

from __future__ import annotations

from docqueue_app.queue import DocumentQueueService
from docqueue_app.queue.scheduler import get_scheduler
from tests.helpers import wait_until


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
