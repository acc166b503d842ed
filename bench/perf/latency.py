"""Latencies of one worker process: pickup on an idle queue, spawn to first document,
and its memory after many documents.

The worker's processor (bench.perf.noop:record_call) appends time.time() of each call
to a file, so "processor called" is read from the worker's own clock (same host).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from .common import (
    CALLS_FILE_ENV,
    NOOP_PROCESSOR,
    RECORDING_PROCESSOR,
    bench_env,
    docqueue_env,
    rss_kib,
    running,
    start_worker,
    wait_until,
)
from .databases import Database, Probe, docqueue_context, fill_queue

PICKUP_SPACING_SECONDS = (0.1, 0.2)


class CallLog:
    """The file the recording processor appends to: how many calls, and when the last was."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def size(self) -> int:
        return os.stat(self.path).st_size

    def last_call(self) -> float:
        return float(self.path.read_text().splitlines()[-1].split()[0])


@contextmanager
def call_log() -> Iterator[CallLog]:
    with tempfile.TemporaryDirectory(prefix="docqueue-bench-calls-") as folder:
        yield CallLog(Path(folder) / "calls.log")


def _recording_env(database: Database, log: CallLog) -> dict[str, str]:
    return docqueue_env(
        database.url, RECORDING_PROCESSOR, "none", **{CALLS_FILE_ENV: str(log.path)}
    )


def pickup_ms(database: Database, samples: int) -> list[float]:
    """Upload committed (submit_document returned) to processor called, in ms, per sample.

    One worker at its default poll interval; one warm-up upload first; uploads spaced
    100-200 ms apart so that each finds the queue idle.
    """
    from docqueue_app.queue import DocumentQueueService

    latencies: list[float] = []
    with call_log() as log, docqueue_context(database):
        service = DocumentQueueService()
        with running([start_worker(_recording_env(database, log))]):
            for number in range(samples + 1):
                seen = log.size()
                service.submit_document(
                    f"{number}.txt", os.urandom(16).hex().encode(), "text/plain"
                )
                committed = time.time()
                wait_until(lambda seen=seen: log.size() > seen, timeout=30, every=0.0005)
                if number:  # the first one also waits for the worker to start
                    latencies.append((log.last_call() - committed) * 1000)
                time.sleep(random.uniform(*PICKUP_SPACING_SECONDS))
    return latencies


def spawn_to_first_document(database: Database) -> float:
    """Seconds from spawning ``docqueue queue worker`` to its processor's first call."""
    fill_queue(database, 1, 1, due_in=timedelta(seconds=-1))
    with call_log() as log:
        env = _recording_env(database, log)
        started = time.time()
        with running([start_worker(env)]):
            wait_until(lambda: log.size() > 0, timeout=60, every=0.001)
        return log.last_call() - started


# What any worker built on docqueue's stack imports before it can do anything: the
# Flask-SQLAlchemy that docqueue_app.models.db is (SPEC §3) and, on PostgreSQL, the
# driver. A fresh interpreter importing them is the floor under target 7.
STACK_IMPORTS = {
    "postgresql": "import flask_sqlalchemy, psycopg",
    "sqlite": "import flask_sqlalchemy",
}


def stack_import_seconds(kind: str) -> float:
    """Seconds for a fresh interpreter of the venv to import docqueue's stack and exit."""
    started = time.time()
    subprocess.run([sys.executable, "-c", STACK_IMPORTS[kind]], check=True, env=bench_env())
    return time.time() - started


def worker_rss_kib(database: Database, early: int, late: int) -> tuple[int, int]:
    """VmRSS of one worker (no-op, isolation none) after ``early`` and ``late`` documents."""
    fill_queue(database, 1, late, due_in=timedelta(seconds=-1))
    probe = Probe(database)
    env = docqueue_env(database.url, NOOP_PROCESSOR, "none")
    try:
        with running([start_worker(env, batch_size=100)]) as (worker,):
            wait_until(lambda: probe.finished() >= early, timeout=120, every=0.002)
            after_early = rss_kib(worker.pid)
            wait_until(lambda: probe.finished() >= late, timeout=600, every=0.02)
            return after_early, rss_kib(worker.pid)
    finally:
        probe.close()
