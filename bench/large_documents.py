"""Memory a standalone worker (and its sandbox) takes to process one large document.

Run from the project root:

    .venv/bin/python bench/large_documents.py [--database-url URL] [--isolation none]
        [--kind text|csv] [--mb 50]

It submits one document of ``--mb`` MiB of plain text (or CSV), starts a real
``docqueue queue worker`` on the database (a fresh SQLite file by default; a
PostgreSQL URL is emptied first), samples the worker's and its sandbox's memory
from /proc while the document is processed, and prints one line of JSON: the
worker's resident high-water mark (VmHWM) during the document, its resident size
once it is done (VmRSS, after a few idle polls), its size before it (idle after a
small first document, so imports, connections and sandbox are in place), and the
largest sandbox's high-water mark and idle size afterwards, all in MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from flask_migrate import upgrade
from sqlalchemy import text

from docqueue_app import create_app
from docqueue_app.models import Document, db
from docqueue_app.queue import DocumentQueueService

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WORKER = [str(PROJECT_ROOT / ".venv" / "bin" / "docqueue"), "queue", "worker"]
SAMPLE_SECONDS = 0.01
# Polls the worker idles through after the document before its resident size is read.
SETTLE_SECONDS = 1.0
TABLES = "webhook_deliveries, queue_attempts, queue_items, document_contents, documents"
KIB = 1024
MIB = 1024 * KIB


@dataclass
class Memory:
    """What one run measured, in MiB."""

    database: str
    document_id: int
    isolation: str
    kind: str
    document_mib: float
    status: str
    worker_before_mib: float
    worker_peak_mib: float
    worker_after_mib: float
    sandbox_peak_mib: float
    sandbox_after_mib: float


def large_document(kind: str, size: int) -> tuple[str, bytes, str]:
    """(filename, bytes, content type) of ``size`` bytes of ASCII text in words or CSV rows."""
    if kind == "csv":
        line = b"1042,Jane Doe,jane.doe@example.org,Springfield,2024-05-17,19.99\n"
        name, content_type = "large.csv", "text/csv"
    else:
        line = b"The quick brown fox jumps over the lazy dog near the river bank.\n"
        name, content_type = "large.txt", "text/plain"
    return name, (line * (size // len(line) + 1))[:size], content_type


def status_kib(pid: int, field: str) -> int:
    """A /proc/PID/status memory field (VmRSS, VmHWM) in KiB; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the fork server and its sandboxes)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(parent, []).append(int(stat.parent.name))
    found, below = [], [pid]
    while below:
        for child in parents.get(below.pop(), []):
            found.append(child)
            below.append(child)
    return found


def prepared_app(database_url: str):
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": False})
    with app.app_context():
        upgrade(directory=str(PROJECT_ROOT / "migrations"))
        if db.engine.dialect.name == "postgresql":
            db.session.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
            db.session.commit()
    return app


def submitted(app, kind: str, size: int, content: bytes | None = None) -> int:
    """A document of ``kind`` queued: ``size`` bytes of it, or ``content`` if given."""
    with app.app_context():
        name, large, content_type = large_document(kind, size)
        service = DocumentQueueService()
        document, _ = service.submit_document(name, content or large, content_type, 5)
        return document.id


def reset_high_water_mark(pid: int) -> None:
    """Start VmHWM afresh from the current size (Linux's clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def status_of(app, document_id: int) -> str:
    with app.app_context():
        status = db.session.get(Document, document_id).status
        db.session.remove()
        return str(getattr(status, "value", status))


@contextmanager
def running_worker(database_url: str, isolation: str, log: Path) -> Iterator[subprocess.Popen]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DOCQUEUE_SECRET_KEY": "bench",
        "DOCQUEUE_PROCESS_ISOLATION": isolation,
        "DOCQUEUE_POLL_INTERVAL": "0.2",
    }
    with log.open("wb") as stderr:
        worker = subprocess.Popen(WORKER, cwd=PROJECT_ROOT, env=env, stderr=stderr)
    try:
        yield worker
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def sample_until(done: Callable[[], bool], worker: subprocess.Popen, timeout: float) -> int:
    """The largest VmHWM (KiB) any process below the worker reached before ``done``."""
    deadline = time.monotonic() + timeout
    sandbox_peak = 0
    next_look = 0.0
    while time.monotonic() < deadline:
        for pid in descendants(worker.pid):
            sandbox_peak = max(sandbox_peak, status_kib(pid, "VmHWM"))
        if time.monotonic() >= next_look:
            if done():
                return sandbox_peak
            next_look = time.monotonic() + 0.2
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}")
        time.sleep(SAMPLE_SECONDS)
    raise TimeoutError("the document was not processed in time")


def measure(
    database_url: str, isolation: str, kind: str, mib: float, timeout: float = 300
) -> Memory:
    """One large document through a fresh ``queue worker``: its memory and its sandbox's."""
    app = prepared_app(database_url)
    size = int(mib * MIB)
    with (
        tempfile.TemporaryDirectory() as folder,
        running_worker(database_url, isolation, Path(folder) / "worker.log") as worker,
    ):
        finished = ("completed", "failed")
        # A small document first: the worker's imports, connections and sandbox are
        # then in place, and its size once idle is the baseline.
        warm_up = submitted(app, kind, 0, b"warming up\n")
        sample_until(lambda: status_of(app, warm_up) in finished, worker, timeout)
        time.sleep(SETTLE_SECONDS)
        before = status_kib(worker.pid, "VmRSS")
        reset_high_water_mark(worker.pid)
        document_id = submitted(app, kind, size)
        sandbox_peak = sample_until(
            lambda: status_of(app, document_id) in finished, worker, timeout
        )
        time.sleep(SETTLE_SECONDS)
        peak = status_kib(worker.pid, "VmHWM")
        after = status_kib(worker.pid, "VmRSS")
        # The fork server's and the sandbox's, now idle (none without isolation).
        sandbox_after = max(
            (status_kib(pid, "VmRSS") for pid in descendants(worker.pid)), default=0
        )
    with app.app_context():
        db.engine.dispose()
    return Memory(
        database=database_url.split(":", 1)[0],
        document_id=document_id,
        isolation=isolation,
        kind=kind,
        document_mib=round(size / MIB, 1),
        status=status_of(app, document_id),
        worker_before_mib=round(before / KIB, 1),
        worker_peak_mib=round(peak / KIB, 1),
        worker_after_mib=round(after / KIB, 1),
        sandbox_peak_mib=round(sandbox_peak / KIB, 1),
        sandbox_after_mib=round(sandbox_after / KIB, 1),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="default: a fresh SQLite file")
    parser.add_argument("--isolation", choices=("subprocess", "none"), default="subprocess")
    parser.add_argument("--kind", choices=("text", "csv"), default="text")
    parser.add_argument("--mb", type=float, default=50, help="document size in MiB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.database_url or f"sqlite:///{folder}/docqueue.db"
        print(json.dumps(asdict(measure(url, args.isolation, args.kind, args.mb))))


if __name__ == "__main__":
    main()
