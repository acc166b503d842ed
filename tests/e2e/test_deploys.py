"""End to end: deploys (a reload, a stop) with documents in hand lose nothing and charge nothing.

``test_graceful_stop.py`` covers SIGTERM to a lone gunicorn mid-batch. Here:

- SIGHUP to the master (a reload: every worker replaced, the master stays);
- SIGTERM to the master while a standalone worker keeps running and takes
  over the work the server hands back.

Each time every document ends ``completed``, processed once: its queue item
shows one attempt and a history of one ``completed`` entry (admin API), so no
attempt was charged for an item that was claimed but never started, and the
documents in hand were finished, not lost. Isolation is ``subprocess`` (from
``server_env``): this is about production behaviour.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.e2e.processors import HOLD_ENV
from tests.e2e.server import (
    Server,
    admin_headers,
    document_statuses,
    start_worker,
    stop_worker,
    wait_for,
)

PASSWORD = "deploy-test"
ADMIN = admin_headers(PASSWORD)
BATCH = 5
DOCUMENTS = 8
STOPPING = b"Stopping the queue scheduler"


def deploy_env(server_env: dict[str, str], hold: Path) -> dict[str, str]:
    return {
        **server_env,
        HOLD_ENV: str(hold),
        "DOCQUEUE_PROCESSOR": "tests.e2e.processors:held_until_released",
        "DOCQUEUE_BATCH_SIZE": str(BATCH),
        "DOCQUEUE_ADMIN_PASSWORD": PASSWORD,
    }


def upload_while_paused(server: Server) -> list[int]:
    """Upload DOCUMENTS documents, then resume: the first tick claims a whole batch."""
    assert server.request("POST", "/api/queue/pause", headers=ADMIN)[0] == 200
    ids = []
    for n in range(DOCUMENTS):
        status, body = server.upload(f"deploy-{n}.txt", f"deploy document {n}".encode())
        assert status == 202, body
        ids.append(body["id"])
    assert server.request("POST", "/api/queue/resume", headers=ADMIN)[0] == 200
    return ids


def wait_for_work_in_hand(server: Server, hold: Path) -> None:
    """Until a document is in hand and claimed items wait behind it, unstarted."""
    wait_for(lambda: any(hold.glob("started-*")), "a document to start")
    started = len(list(hold.glob("started-*")))
    assert document_statuses(server).count("processing") > started, "no unstarted claim"


def assert_each_completed_once(server: Server, ids: list[int]) -> None:
    """Every document completed, its item with one attempt and one history entry."""

    def all_completed() -> bool:
        return set(document_statuses(server)) == {"completed"}

    wait_for(all_completed, "every document to complete", timeout=90)
    charged = {}
    for document_id in ids:
        status, document = server.get(f"/api/documents/{document_id}")
        assert status == 200, document
        status, item = server.request(
            "GET", f"/api/queue/items/{document['queue_item']['id']}", headers=ADMIN
        )
        assert status == 200, item
        outcomes = [entry["outcome"] for entry in item["history"]]
        if item["attempts"] != 1 or outcomes != ["completed"]:
            charged[document["filename"]] = (item["attempts"], outcomes)
    assert not charged, f"attempts charged beyond the one that ran: {charged}"


def test_sighup_replaces_the_workers_and_strands_nothing(server_env, tmp_path):
    hold = tmp_path / "hold"
    hold.mkdir()
    log_path = tmp_path / "server.log"
    server = Server(deploy_env(server_env, hold), workers=2, log_path=log_path).start()
    try:
        master, old_workers = server.process.pid, server.worker_pids()
        ids = upload_while_paused(server)
        wait_for_work_in_hand(server, hold)

        os.kill(master, signal.SIGHUP)  # a reload, as `systemctl reload` sends it
        wait_for(
            lambda: log_path.read_bytes().count(STOPPING) == len(old_workers),
            "the old workers to stop their schedulers",
        )
        (hold / "release").touch()
        wait_for(
            lambda: len(server.worker_pids()) == 2 and not server.worker_pids() & old_workers,
            "the old workers to be replaced",
        )
        assert server.process.poll() is None and server.process.pid == master
        assert_each_completed_once(server, ids)
        assert server.get("/readyz")[0] == 200
    finally:
        (hold / "release").touch()  # never leave a processor waiting
        server.stop()


def test_sigterm_to_the_master_hands_work_to_a_running_standalone_worker(server_env, tmp_path):
    hold = tmp_path / "hold"
    hold.mkdir()
    env = deploy_env(server_env, hold)
    log_path = tmp_path / "server.log"
    server = Server(env, workers=2, log_path=log_path).start()
    worker = start_worker(env, tmp_path / "worker.log", "--concurrency", "1")
    restarted = None
    try:
        ids = upload_while_paused(server)
        wait_for_work_in_hand(server, hold)

        os.kill(server.process.pid, signal.SIGTERM)  # the server's deploy; the worker stays
        wait_for(lambda: STOPPING in log_path.read_bytes(), "the server to stop its schedulers")
        (hold / "release").touch()
        assert server.process.wait(timeout=60) == 0
        assert worker.poll() is None, "the standalone worker exited with the server"

        restarted = Server(env, workers=2, log_path=tmp_path / "restarted.log").start()
        assert_each_completed_once(restarted, ids)
    finally:
        (hold / "release").touch()
        worker_exit = stop_worker(worker)
        server.stop()
        if restarted is not None:
            restarted.stop()
    assert worker_exit == 0
