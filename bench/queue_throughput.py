"""Queue throughput: enqueue N documents, then drain them with P worker processes.

Run from the project root (or `make bench`):

    .venv/bin/python bench/queue_throughput.py [--jobs 5000] [--workers 2] [--batch 100]
        [--database sqlite|postgresql|both]

The processor is a no-op (`bench.queue_throughput:noop`) run in-process
(PROCESS_ISOLATION=none), so the figures measure the queue itself — claims,
outcome writes, document bookkeeping — and compare with the raw database loops and
the Python peers of ../shared/MEASUREMENTS.md ("Queue throughput"). Each worker
process loops over `process_document_queue(batch)` until the queue is empty.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path

import psycopg

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_BENCH_DATABASE = "docqueue_bench"


def noop(content: bytes, filename: str, content_type: str) -> dict:
    return {"text": "", "title": None, "page_count": None, "metadata": {}}


def make_app(database_url: str):
    from docqueue_app import create_app

    return create_app(
        {
            "DATABASE_URL": database_url,
            "SECRET_KEY": "bench",
            "SCHEDULER_ENABLED": False,
            "PROCESS_ISOLATION": "none",
            "PROCESSOR": "bench.queue_throughput:noop",
        }
    )


def fresh_database(kind: str, folder: Path) -> str:
    from flask_migrate import upgrade

    if kind == "sqlite":
        url = f"sqlite:///{folder / 'bench.db'}"
    else:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{PG_BENCH_DATABASE}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{PG_BENCH_DATABASE}"')
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + PG_BENCH_DATABASE
    app = make_app(url)
    with app.app_context():
        upgrade()
    return url


def enqueue(url: str, jobs: int) -> float:
    """Uploads as the API makes them (bytes + row + item in one transaction); jobs/s."""
    from docqueue_app.queue import DocumentQueueService

    app = make_app(url)
    with app.app_context():
        service = DocumentQueueService()
        started = time.perf_counter()
        for n in range(jobs):
            service.submit_document(f"{n}.txt", f"document {n}".encode(), "text/plain")
        return jobs / (time.perf_counter() - started)


def drain(url: str, batch: int) -> None:
    from docqueue_app.queue import process_document_queue

    app = make_app(url)
    with app.app_context():
        while process_document_queue(batch)["processed"]:
            pass


def process(url: str, workers: int, batch: int, jobs: int) -> float:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=drain, args=(url, batch)) for _ in range(workers)]
    started = time.perf_counter()
    for worker in processes:
        worker.start()
    for worker in processes:
        worker.join()
    return jobs / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    for kind in kinds:
        with tempfile.TemporaryDirectory() as folder:
            url = fresh_database(kind, Path(folder))
            enqueued = enqueue(url, args.jobs)
            processed = process(url, args.workers, args.batch, args.jobs)
        print(
            f"{kind:10} enqueue {enqueued:8.0f} jobs/s   "
            f"process {processed:8.0f} jobs/s "
            f"({args.jobs} jobs, {args.workers} workers, batch {args.batch})"
        )


if __name__ == "__main__":
    main()
