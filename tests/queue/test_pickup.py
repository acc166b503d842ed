"""Pickup: an idle worker or scheduler takes new work when it is committed, not at its next poll.

POLL_INTERVAL is 30 s here, so a document processed within PROMPTLY seconds
was picked up because its commit woke the worker: PostgreSQL's NOTIFY, or on
SQLite the committing process (its own scheduler directly, other processes
through their wake sockets).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from flask import Flask
from sqlalchemy import make_url

from docqueue_app.queue import DocumentQueueService
from docqueue_app.queue.notify import LISTENER_APPLICATION_NAME, host_path
from docqueue_app.queue.scheduler import get_scheduler
from tests.e2e.server import start_worker, stop_worker
from tests.helpers import upload, wait_until

POLL_INTERVAL = 30
PROMPTLY = 10  # seconds: a third of the poll interval
# Long enough for a loop that just ran to be asleep again.
SETTLE_SECONDS = 0.5


def completed(app: Flask) -> int:
    with app.app_context():
        return DocumentQueueService().get_queue_stats()["completed"]


def assert_uploads_picked_up_promptly(app: Flask, count: int = 2) -> None:
    """Upload documents one at a time into an idle queue; each completes promptly.

    The first may meet a loop that is still starting; the next ones meet it asleep.
    """
    client = app.test_client()
    for n in range(count):
        time.sleep(SETTLE_SECONDS)
        upload(client, f"picked up {n}".encode(), f"{n}.txt")
        wait_until(lambda n=n: completed(app) == n + 1, timeout=PROMPTLY)


@pytest.fixture
def worker(database_url: str, tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen]]:
    """Start `docqueue queue worker` (polling every 30 s) and wait until it listens."""
    log_path = tmp_path / "worker.log"
    env = {
        "DATABASE_URL": database_url,
        "DOCQUEUE_SECRET_KEY": "pickup",
        "DOCQUEUE_POLL_INTERVAL": str(POLL_INTERVAL),
        "DOCQUEUE_PROCESS_ISOLATION": "none",
    }
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        started.append(start_worker(env, log_path, "--concurrency", "2"))
        wait_until(lambda: b"listening for new work" in log_path.read_bytes(), timeout=60)
        return started[-1]

    yield start
    for process in started:
        assert stop_worker(process) == 0, log_path.read_text()


def test_an_idle_worker_picks_up_an_upload_of_another_process_at_once(make_app, worker):
    worker()
    assert_uploads_picked_up_promptly(make_app())


def test_the_idle_scheduler_picks_up_an_upload_at_once(make_app):
    app = make_app(SCHEDULER_ENABLED=True, POLL_INTERVAL=POLL_INTERVAL)
    scheduler = get_scheduler(app)
    assert scheduler.start()
    try:
        assert_uploads_picked_up_promptly(app)
    finally:
        scheduler.shutdown()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # NOTIFY only
def test_a_notification_lost_with_the_listener_connection_is_made_up_for(make_app, worker):
    app = make_app()
    worker()
    assert_uploads_picked_up_promptly(app, count=1)

    # The listener's connection dies, and the upload's notification goes nowhere:
    # the listener must reconnect and look, instead of sleeping out its poll.
    assert terminate_listeners(app) >= 1
    upload(app.test_client(), b"notified while nobody listened", "lost.txt")

    wait_until(lambda: completed(app) == 2, timeout=PROMPTLY)


def terminate_listeners(app: Flask) -> int:
    """Kill the backends of the database's queue listeners; how many there were."""
    url = app.config["SQLALCHEMY_DATABASE_URI"].replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()",
            (LISTENER_APPLICATION_NAME,),
        ).fetchall()
    return len(rows)


def test_an_idle_worker_picks_up_queued_work_when_the_queue_is_resumed(make_app, worker):
    app = make_app()
    worker()
    with app.app_context():
        DocumentQueueService().set_paused(True)
    upload(app.test_client(), b"queued while paused", "paused.txt")
    time.sleep(SETTLE_SECONDS)  # woken by the upload, the worker found the queue paused
    assert completed(app) == 0

    with app.app_context():
        DocumentQueueService().set_paused(False)

    wait_until(lambda: completed(app) == 1, timeout=PROMPTLY)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # wake sockets only
def test_a_worker_starts_with_a_deep_database_path_and_a_long_temp_folder(
    database_url, make_app, tmp_path
):
    # A socket's path holds at most 107 bytes: the wake folder goes to the temp folder
    # when it does not fit beside the database, and it did not fit there either (the
    # worker died at start: "AF_UNIX path too long").
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    database = deep / "docqueue.db"
    shutil.copyfile(database_url.removeprefix("sqlite:///"), database)
    long_temp = tmp_path / ("t" * 70)
    long_temp.mkdir()
    app = make_app(DATABASE_URL=f"sqlite:///{database}")
    log_path = tmp_path / "worker.log"
    env = {
        "DATABASE_URL": f"sqlite:///{database}",
        "DOCQUEUE_SECRET_KEY": "pickup",
        "DOCQUEUE_POLL_INTERVAL": str(POLL_INTERVAL),
        "DOCQUEUE_PROCESS_ISOLATION": "none",
        "TMPDIR": str(long_temp),
    }
    process = start_worker(env, log_path)
    try:
        wait_until(
            lambda: (
                process.poll() is not None or b"listening for new work" in log_path.read_bytes()
            ),
            timeout=60,
        )
        assert process.poll() is None, log_path.read_text()
        assert_uploads_picked_up_promptly(app, count=1)
    finally:
        assert stop_worker(process) == 0, log_path.read_text()
        # The worker's wake folder, which went to /tmp: named alike in any temp folder.
        wake_folder = host_path(make_url(f"sqlite:///{database}"), ".wake")
        shutil.rmtree(Path("/tmp", Path(wake_folder).name), ignore_errors=True)
