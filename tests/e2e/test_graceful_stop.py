"""End to end: SIGTERM to gunicorn mid-batch hands the unstarted work back at once.

The worker's ``worker_exit`` hook stops the scheduler's pass: the document in
hand finishes, the rest of the batch goes back to pending with its attempt not
counted, instead of waiting a lease (300 s) and losing an attempt.
"""

from __future__ import annotations

import os
import signal

from tests.e2e.processors import HOLD_ENV
from tests.e2e.server import Server, admin_headers, document_statuses, queue_items, wait_for

BATCH = 5
ADMIN = admin_headers("stop-test")


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
        "DOCQUEUE_PROCESSOR": "tests.e2e.processors:held_until_released",
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
