"""End to end: a real gunicorn server, killed and restarted, never loses or repeats work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter

from tests.e2e.processors import RECORD_ENV
from tests.e2e.server import BIN, ROOT, Server, run_cli
from tests.helpers import wait_until
from tests.processing.test_isolation import flate_bomb_pdf

DOCUMENTS = 12


def wait_for_statuses(server: Server, count: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = server.get("/api/documents?per_page=100")
        assert status == 200
        finished = [d for d in body["items"] if d["status"] in ("completed", "failed")]
        if len(finished) == count:
            return body["items"]
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(finished)} of {count} finished: {body['items']}")
        time.sleep(0.2)


def test_sigkill_loses_nothing_and_processes_each_document_once(server_env, tmp_path):
    record = tmp_path / "processed.log"
    env = {
        **server_env,
        RECORD_ENV: str(record),
        "DOCQUEUE_PROCESSOR": "tests.e2e.processors:recording_extract",
    }
    first = Server({**env, "DOCQUEUE_SCHEDULER_ENABLED": "false"}, log_path=tmp_path / "1.log")
    first.start()
    try:
        for n in range(DOCUMENTS):
            status, body = first.upload(f"doc-{n}.txt", f"document number {n}\n".encode())
            assert status == 202, body
            assert body["status"] == "pending"
    finally:
        first.kill()

    second = Server({**env, "DOCQUEUE_SCHEDULER_ENABLED": "true"}, log_path=tmp_path / "2.log")
    second.start()
    try:
        documents = wait_for_statuses(second, DOCUMENTS)
        assert {d["status"] for d in documents} == {"completed"}
        assert all(d["queue_item"]["attempts"] == 1 for d in documents)
        status, text = second.get(f"/api/documents/{documents[0]['id']}/text")
        assert status == 200 and "document number" in text
        stats = json.loads(run_cli(env, "queue", "stats").stdout)
        assert stats["completed"] == DOCUMENTS and stats["pending"] == 0
    finally:
        second.stop()
    runs = Counter(record.read_text().split())
    assert runs == Counter({f"doc-{n}.txt": 1 for n in range(DOCUMENTS)})


def test_hostile_documents_fail_alone_and_the_server_stays_healthy(server_env, tmp_path):
    env = {
        **server_env,
        "DOCQUEUE_PROCESSOR": "tests.e2e.processors:crash_on_marker",
        "DOCQUEUE_MAX_ATTEMPTS": "1",
        "DOCQUEUE_PROCESS_MEMORY_MB": "512",
    }
    server = Server(env, log_path=tmp_path / "server.log").start()
    try:
        assert server.upload("crash.txt", b"CRASH right now")[0] == 202
        assert server.upload("bomb.pdf", flate_bomb_pdf())[0] == 202
        assert server.upload("fine.txt", b"a perfectly fine document")[0] == 202
        documents = {d["filename"]: d for d in wait_for_statuses(server, 3)}
        assert documents["fine.txt"]["status"] == "completed"
        crashed = documents["crash.txt"]
        assert crashed["status"] == "failed"
        assert "exit code 3" in crashed["error"]
        bomb = documents["bomb.pdf"]
        assert bomb["status"] == "failed"
        assert "memory cap of 512 MB exceeded" in bomb["error"]
        assert server.get("/healthz") == (200, {"status": "ok", "database": "ok"})
        assert server.get("/readyz")[1]["scheduler"] == "ok"
    finally:
        server.stop()


def item_history(database_url: str) -> dict[str, list[tuple[str, str | None]]]:
    """Each document's attempts (worker, outcome), read straight from the database."""
    from docqueue_app import create_app
    from docqueue_app.models import Document, QueueAttempt, QueueItem, db

    app = create_app({"DATABASE_URL": database_url, "SECRET_KEY": "t", "SCHEDULER_ENABLED": False})
    with app.app_context():
        rows = db.session.execute(
            db.select(Document.filename, QueueAttempt.worker, QueueAttempt.outcome)
            .join(QueueItem, QueueItem.document_id == Document.id)
            .join(QueueAttempt, QueueAttempt.queue_item_id == QueueItem.id)
            .order_by(QueueAttempt.id)
        ).all()
        db.engine.dispose()
    history: dict[str, list[tuple[str, str | None]]] = {}
    for filename, worker, outcome in rows:
        history.setdefault(filename, []).append((worker, outcome))
    return history


def test_a_server_killed_mid_document_has_it_reclaimed_after_the_lease(server_env, tmp_path):
    env = {
        **server_env,
        "DOCQUEUE_PROCESSOR": "tests.e2e.processors:sleep_briefly",
        "DOCQUEUE_LEASE_SECONDS": "2",
        "DOCQUEUE_BATCH_SIZE": "1",
        "DOCQUEUE_CONCURRENCY": "1",  # one document in hand when the server is killed
    }
    first = Server(env, workers=1, log_path=tmp_path / "1.log").start()
    try:
        for n in range(2):
            assert first.upload(f"slow-{n}.txt", f"slow document {n}".encode())[0] == 202

        def processing() -> bool:
            return any(d["status"] == "processing" for d in first.get("/api/documents")[1]["items"])

        deadline = time.monotonic() + 30
        while not processing():
            assert time.monotonic() < deadline, "nothing started processing"
            time.sleep(0.05)
    finally:
        first.kill()

    second = Server(env, workers=1, log_path=tmp_path / "2.log").start()
    try:
        documents = wait_for_statuses(second, 2)
    finally:
        second.stop()
    assert {d["status"] for d in documents} == {"completed"}
    outcomes = {
        name: [o for _, o in runs] for name, runs in item_history(env["DATABASE_URL"]).items()
    }
    interrupted = [name for name, runs in outcomes.items() if runs == ["lost", "completed"]]
    assert len(interrupted) == 1, outcomes
    assert [d["queue_item"]["attempts"] for d in documents if d["filename"] in interrupted] == [2]


WORKER_ARGS = ("queue", "worker", "--concurrency", "2", "--batch-size", "2")


def cron_pass(server: Server, headers: dict[str, str]) -> dict:
    return server.request("POST", "/api/cron/process-queue", headers=headers)[1]


def test_schedulers_workers_and_cron_together_process_each_document_once(server_env, tmp_path):
    record = tmp_path / "processed.log"
    env = {
        **server_env,
        RECORD_ENV: str(record),
        "DOCQUEUE_PROCESSOR": "tests.e2e.processors:recording_extract",
        "DOCQUEUE_BATCH_SIZE": "3",
        "DOCQUEUE_CRON_SECRET": "tick",
        "PYTHONPATH": str(ROOT),
    }
    server = Server({**env, "DOCQUEUE_SCHEDULER_ENABLED": "false"}, log_path=tmp_path / "s.log")
    server.start()
    try:
        count = 40
        busy = Server(env, log_path=tmp_path / "busy.log")  # a second host, scheduling
        worker_log = tmp_path / "worker.log"
        try:
            busy.start()
            worker = subprocess.Popen(
                [str(BIN / "docqueue"), *WORKER_ARGS],
                cwd=ROOT,
                env={**os.environ, **env},
                stderr=open(worker_log, "wb"),  # noqa: SIM115
            )
            try:
                # Everyone running before the work comes: the worker started, so that
                # SIGTERM meets a running worker, not one still importing.
                wait_until(lambda: b"listening for new work" in worker_log.read_bytes(), 60)
                for n in range(count):
                    assert server.upload(f"many-{n}.txt", f"one of many {n}".encode())[0] == 202
                cron = {"Authorization": "Bearer tick"}
                while cron_pass(server, cron)["processed"]:
                    pass
                documents = wait_for_statuses(server, count)
            finally:
                worker.send_signal(signal.SIGTERM)
                assert worker.wait(timeout=30) == 0, worker_log.read_text()
        finally:
            busy.stop()  # whatever failed: a server left running would work on later tests' rows
    finally:
        server.stop()
    assert {d["status"] for d in documents} == {"completed"}
    runs = Counter(record.read_text().split())
    assert runs == Counter({f"many-{n}.txt": 1 for n in range(count)})
    workers = {worker for runs in item_history(env["DATABASE_URL"]).values() for worker, _ in runs}
    assert len(workers) >= 2  # the work really was shared
