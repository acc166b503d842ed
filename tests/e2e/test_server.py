"""End to end: a real gunicorn server, killed and restarted, never loses or repeats work."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.processors import RECORD_ENV
from tests.e2e.server import Server, run_cli
from tests.processing.test_isolation import flate_bomb_pdf

DOCUMENTS = 12


@pytest.fixture(params=["sqlite", "postgresql"])
def server_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "postgresql":
        database_url = request.getfixturevalue("postgresql_clean")
    else:
        database_url = f"sqlite:///{tmp_path / 'docqueue.db'}"
    env = {
        "DATABASE_URL": database_url,
        "DOCQUEUE_SECRET_KEY": "e2e",
        "DOCQUEUE_POLL_INTERVAL": "0.2",
        "DOCQUEUE_PROCESS_ISOLATION": "subprocess",
    }
    migrated = run_cli(env, "db", "upgrade")
    assert migrated.returncode == 0, migrated.stderr
    return env


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
