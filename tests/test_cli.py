"""The command line: db upgrade from any folder, queue commands printing one JSON line."""

from __future__ import annotations

import json
import subprocess

from docqueue_app.queue import DocumentQueueService
from tests.e2e.server import BIN


def submit(app, data: bytes = b"some words here") -> int:
    with app.app_context():
        document, _ = DocumentQueueService().submit_document("a.txt", data, "text/plain")
        return document.id


def test_queue_process_prints_its_counts_as_json(app, runner):
    submit(app)
    result = runner.invoke(args=["queue", "process"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"processed": 1, "completed": 1, "failed": 0, "retried": 0}


def test_queue_stats_prints_one_json_line(app, runner):
    submit(app)
    result = runner.invoke(args=["queue", "stats"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    stats = json.loads(lines[0])
    assert (stats["pending"], stats["total"]) == (1, 1)


def test_retry_failed_and_purge(app, runner):
    doc_id = submit(app)
    with app.app_context():
        service = DocumentQueueService()
        [item] = service.claim_due_items(1, "w")
        service.mark_failed(item, "boom", permanent=True)
    assert json.loads(runner.invoke(args=["queue", "retry-failed"]).stdout) == {"retried": 1}
    runner.invoke(args=["queue", "process"])
    runner.invoke(args=["queue", "retry-failed"])  # nothing failed now: nothing retried
    with app.app_context():
        DocumentQueueService().enqueue(doc_id, "reprocess")
    runner.invoke(args=["queue", "process"])
    purged = runner.invoke(args=["queue", "purge", "--older-than-days", "0"])
    assert json.loads(purged.stdout) == {"deleted": 1}  # the document's latest item stays
    with app.app_context():
        assert DocumentQueueService().get_queue_stats()["total"] == 1


def test_console_script_migrates_from_any_folder(tmp_path):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}", "DOCQUEUE_SECRET_KEY": "k"}

    def docqueue(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "docqueue"), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    upgrade = docqueue("db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    stats = docqueue("queue", "stats")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["total"] == 0
