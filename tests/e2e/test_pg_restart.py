"""End to end: PostgreSQL goes away for 10 s under load, comes back, and nothing is lost.

A real gunicorn (2 workers, schedulers on) and a standalone worker share a
cluster this test owns (``pg_cluster``). Uploads arrive every few tens of
milliseconds throughout; the cluster is stopped (``-m immediate``: a crash, the
harsher case) for 10 s and started again on the same port. SPEC §4: every
answer is a 202 or a JSON 503 with Retry-After, never a 500 or a dropped
connection; nothing half-written (a 503'd upload left no document); every
accepted document is processed, once (SPEC §3: the lease, 300 s, holds for the
whole test, so a second processing would be a defect, not a retry); no process
needed a restart.

Isolation is ``subprocess`` (the production default): this is about production
behaviour.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.pg_cluster import PostgresCluster
from tests.e2e.processors import RECORD_ENV, WORK_ENV
from tests.e2e.server import Server, run_cli, start_worker, stop_worker

OUTAGE_SECONDS = 10
UPLOAD_EVERY_SECONDS = 0.04
BEFORE_OUTAGE_SECONDS = 3
AFTER_OUTAGE_SECONDS = 5
DRAIN_TIMEOUT_SECONDS = 90
UPLOAD_TIMEOUT_SECONDS = 20


@dataclass
class Answer:
    filename: str
    sent: float  # time.monotonic() when sent
    received: float
    status: int | None  # None: the connection itself failed
    data: bytes
    retry_after: str | None = None
    body: Any = None


class Uploader(threading.Thread):
    """Uploads small unique documents one after another until stopped."""

    def __init__(self, server: Server) -> None:
        super().__init__(name="uploader", daemon=True)
        self.server = server
        self.answers: list[Answer] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            filename = f"pg-{n}.txt"
            data = f"document {n} {uuid.uuid4().hex}\n".encode()
            sent = time.monotonic()
            try:
                reply = self.server.upload_reply(filename, data, timeout=UPLOAD_TIMEOUT_SECONDS)
            except OSError as exc:  # refused, reset, timed out: a failure of the server
                self.answers.append(
                    Answer(filename, sent, time.monotonic(), None, data, body=repr(exc))
                )
            else:
                self.answers.append(
                    Answer(
                        filename,
                        sent,
                        time.monotonic(),
                        reply.status,
                        data,
                        reply.headers.get("Retry-After"),
                        reply.body,
                    )
                )
            n += 1
            self.stopping.wait(UPLOAD_EVERY_SECONDS)


def is_json_503(answer: Answer) -> bool:
    body = answer.body
    return (
        answer.status == 503
        and answer.retry_after is not None
        and isinstance(body, dict)
        and body.get("code") == 503
        and isinstance(body.get("status"), str)
        and isinstance(body.get("message"), str)
    )


def log_lines(path: Path, *markers: str) -> list[str]:
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    return [line for line in lines if any(marker in line for marker in markers)]


def test_postgresql_restart_under_load_loses_nothing_and_needs_no_restart(
    pg_cluster: PostgresCluster, tmp_path: Path
):
    record = tmp_path / "processed.log"
    record.touch()
    env = {
        "DATABASE_URL": pg_cluster.url,
        "DOCQUEUE_SECRET_KEY": "e2e",
        "DOCQUEUE_POLL_INTERVAL": "0.2",
        "DOCQUEUE_PROCESS_ISOLATION": "subprocess",
        "DOCQUEUE_PROCESSOR": "tests.e2e.processors:recording_extract",
        RECORD_ENV: str(record),
        # Slow enough that documents are in hand when the database goes away.
        WORK_ENV: "0.3",
    }
    migrated = run_cli(env, "db", "upgrade")
    assert migrated.returncode == 0, migrated.stderr
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    server = Server(env, workers=2, log_path=server_log).start()
    worker = start_worker(env, worker_log, "--concurrency", "2")
    uploader = Uploader(server)
    try:
        master, gunicorn_workers = server.process.pid, server.worker_pids()
        assert len(gunicorn_workers) == 2
        uploader.start()
        time.sleep(BEFORE_OUTAGE_SECONDS)
        outage_began = time.monotonic()
        pg_cluster.stop("immediate")
        stopped = time.monotonic()
        time.sleep(OUTAGE_SECONDS)
        pg_cluster.start()
        back = time.monotonic()
        time.sleep(AFTER_OUTAGE_SECONDS)
        uploader.stopping.set()
        uploader.join(timeout=UPLOAD_TIMEOUT_SECONDS + 5)
        assert not uploader.is_alive(), "an upload never returned"

        accepted = {a.filename: a.body["id"] for a in uploader.answers if a.status == 202}
        # What a client does with a 503: send the same bytes again.
        refused = [a for a in uploader.answers if a.status == 503]
        retried = {a.filename: (a, server.upload(a.filename, a.data)) for a in refused}
        assert {status for _, (status, _) in retried.values()} <= {200, 202}, retried
        landed = {name: a for name, (a, (status, _)) in retried.items() if status == 200}
        # Only an upload sent before the server was gone can have been committed.
        assert all(a.sent < stopped for a in landed.values()), sorted(landed)
        stored = {**accepted, **{name: body["id"] for name, (_, (_, body)) in retried.items()}}

        stats = drain(server, len(stored))
        drained_at = time.monotonic() if stats is None else None

        # Figures, printed with -s.
        during = [a for a in uploader.answers if outage_began <= a.sent < back]
        first_accepted = min(
            (a.received for a in uploader.answers if a.sent >= back and a.status == 202),
            default=None,
        )
        print(
            f"\nPG restart: {len(uploader.answers)} uploads, {len(accepted)} accepted; "
            f"{len(retried)} retried after a 503, {len(landed)} of them stored already; "
            f"during the {OUTAGE_SECONDS} s outage: {dict(Counter(a.status for a in during))}; "
            f"first 202 {_seconds(first_accepted, back)} after the cluster started; "
            f"queue drained {_seconds(drained_at, back)} after it started; "
            f"log lines server/worker (ERROR|Traceback): "
            f"{len(log_lines(server_log, 'ERROR', 'Traceback'))}/"
            f"{len(log_lines(worker_log, 'ERROR', 'Traceback'))} (logs in {tmp_path})"
        )

        assert stats is None, f"the queue did not drain in {DRAIN_TIMEOUT_SECONDS} s: {stats}"
        unexpected = [a for a in uploader.answers if a.status != 202 and not is_json_503(a)]
        assert not unexpected, [
            (a.filename, a.status, a.retry_after, a.body) for a in unexpected[:5]
        ] + [f"{len(unexpected)} unexpected answers in all"]
        assert first_accepted is not None, "no upload was accepted after the cluster came back"

        documents = {}
        for filename, document_id in stored.items():
            status, document = server.get(f"/api/documents/{document_id}")
            assert status == 200, (filename, document)
            documents[filename] = document["status"]
        assert set(documents.values()) == {"completed"}, Counter(documents.values())
        runs = Counter(record.read_text().split())
        assert runs == Counter(dict.fromkeys(stored, 1)), {
            name: count for name, count in runs.items() if stored.get(name) is None or count > 1
        }
        status, listing = server.get("/api/documents?per_page=1")
        assert listing["total"] == len(stored), "a 503'd upload left a document behind"

        # Nobody needed a restart: same master, same gunicorn workers, same worker.
        assert server.process.poll() is None and server.process.pid == master
        assert server.worker_pids() == gunicorn_workers, "a gunicorn worker was replaced"
        assert worker.poll() is None, "the standalone worker exited"
        status, ready = server.get("/readyz")
        assert status == 200, ready
        # One line when the outage began, per process, and no traceback per tick.
        assert len(log_lines(worker_log, "database outage")) == 1
        assert 1 <= len(log_lines(server_log, "database outage")) <= len(gunicorn_workers)
        assert not log_lines(server_log, "Traceback") + log_lines(worker_log, "Traceback")
    finally:
        uploader.stopping.set()
        worker_exit = stop_worker(worker)
        server.stop()
    assert worker_exit == 0, log_lines(worker_log, "ERROR", "Traceback")[-10:]


def drain(server: Server, accepted: int) -> dict | None:
    """Wait until nothing is pending or running; None then, else the last stats seen."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    while True:
        status, stats = server.get("/api/queue/stats")
        idle = status == 200 and stats["pending"] == stats["in_progress"] == 0
        if idle and stats["completed"] >= accepted:
            return None
        if time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


def _seconds(moment: float | None, since: float) -> str:
    return "never" if moment is None else f"{moment - since:.2f} s"
