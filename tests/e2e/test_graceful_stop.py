"""End to end: SIGTERM to gunicorn mid-batch hands the unstarted work back at once.

The worker's ``worker_exit`` hook stops the scheduler's pass: the document in
hand finishes, the rest of the batch goes back to pending with its attempt not
counted, instead of waiting a lease (300 s) and losing an attempt.
"""

from __future__ import annotations

import base64
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.e2e.server import Server

# The processor below marks each document it starts with a file in this folder
# and returns once a "release" file appears there, so the test sees the
# document in hand and decides when it ends instead of racing a sleep.
HOLD_ENV = "DOCQUEUE_TEST_HOLD_DIR"
RELEASE_WAIT_SECONDS = 120
BATCH = 5
ADMIN = {"Authorization": "Basic " + base64.b64encode(b"admin:stop-test").decode()}


def held_until_released(content: bytes, filename: str, content_type: str) -> dict:
    """A slow processor: it says it started, then works until the test releases it."""
    hold = Path(os.environ[HOLD_ENV])
    (hold / f"started-{filename}").touch()
    deadline = time.monotonic() + RELEASE_WAIT_SECONDS
    while not (hold / "release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the test never released the document")
        time.sleep(0.02)
    return {"text": content.decode(), "title": None, "page_count": None, "metadata": {}}


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def document_statuses(server: Server) -> list[str]:
    status, body = server.get("/api/documents?per_page=100")
    assert status == 200, body
    return [document["status"] for document in body["items"]]


def queue_items(database_url: str) -> list[tuple[str, int]]:
    """(status, attempts) of every queue item, read straight from the database."""
    from docqueue_app import create_app
    from docqueue_app.models import QueueItem, db

    app = create_app({"DATABASE_URL": database_url, "SECRET_KEY": "t", "SCHEDULER_ENABLED": False})
    with app.app_context():
        rows = db.session.execute(
            db.select(QueueItem.status, QueueItem.attempts).order_by(QueueItem.id)
        ).all()
        db.engine.dispose()
    return [tuple(row) for row in rows]


def test_sigterm_mid_batch_finishes_the_document_in_hand_and_hands_back_the_rest(
    server_env, tmp_path
):
    hold = tmp_path / "hold"
    hold.mkdir()
    release = hold / "release"
    log_path = tmp_path / "server.log"
    env = {
        **server_env,
        HOLD_ENV: str(hold),
        "DOCQUEUE_PROCESSOR": "tests.e2e.test_graceful_stop:held_until_released",
        "DOCQUEUE_BATCH_SIZE": str(BATCH),
        "DOCQUEUE_ADMIN_PASSWORD": "stop-test",
    }
    server = Server(env, workers=1, log_path=log_path).start()
    try:
        # Paused while uploading, so that one tick claims the whole batch.
        assert server.request("POST", "/api/queue/pause", headers=ADMIN)[0] == 200
        for n in range(BATCH):
            assert server.upload(f"slow-{n}.txt", f"slow document {n}".encode())[0] == 202
        assert server.request("POST", "/api/queue/resume", headers=ADMIN)[0] == 200
        wait_for(lambda: any(hold.glob("started-*")), "the first document to start")
        assert document_statuses(server) == ["processing"] * BATCH  # one pass claimed them all

        os.kill(server.process.pid, signal.SIGTERM)  # the master, as an orchestrator would
        # The hook logs this once the stop is asked for; released any earlier, the
        # document in hand could end before it and the next one would start.
        wait_for(
            lambda: b"Stopping the queue scheduler" in log_path.read_bytes(),
            "the worker to stop its scheduler",
        )
        release.touch()
        assert server.process.wait(timeout=60) == 0
    finally:
        release.touch()  # never leave a processor waiting
        server.stop()

    items = queue_items(env["DATABASE_URL"])
    assert sorted(items) == [("completed", 1)] + [("pending", 0)] * (BATCH - 1), items
    assert len(list(hold.glob("started-*"))) == 1  # the others never started
