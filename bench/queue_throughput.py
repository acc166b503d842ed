"""Queue throughput: enqueue N documents, then drain them with P worker processes.

Run from the project root (or `make bench`):

    .venv/bin/python -m bench.queue_throughput [--jobs 5000] [--workers 2] [--batch 100]
        [--database sqlite|postgresql|both] [--pdf PATH]

By default the processor is a no-op (`bench.queue_throughput:noop`) run in-process
(PROCESS_ISOLATION=none), so the figures measure the queue itself — claims,
outcome writes, document bookkeeping — and compare with the raw database loops and
the Python peers of ../shared/MEASUREMENTS.md ("Queue throughput"). With `--pdf`,
each job is that PDF (made unique by a trailing comment) run through the built-in
extractor in an isolated child process: the production path end to end. Each
worker process loops over `process_document_queue(batch)` until the queue is empty.

Keep this module's top-level imports light: each isolated child process imports
the main module again (multiprocessing's rule), as it would the gunicorn or
docqueue launcher in production.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# One database per run, so benches run side by side never drop each other's.
PG_BENCH_DATABASE = f"docqueue_bench_{os.getpid()}"


def noop(content: bytes, filename: str, content_type: str) -> dict:
    return {"text": "", "title": None, "page_count": None, "metadata": {}}


NO_OP = {"PROCESS_ISOLATION": "none", "PROCESSOR": "bench.queue_throughput:noop"}
REAL = {"PROCESS_ISOLATION": "subprocess", "PROCESSOR": "docqueue_app.processing:extract"}


def make_app(database_url: str, processing: dict | None = None):
    from docqueue_app import create_app

    return create_app(
        {
            "DATABASE_URL": database_url,
            "SECRET_KEY": "bench",
            "SCHEDULER_ENABLED": False,
            **(processing or NO_OP),
        }
    )


def fresh_database(kind: str, folder: Path) -> str:
    import psycopg
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


def drop_database() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{PG_BENCH_DATABASE}" WITH (FORCE)')


def enqueue(url: str, jobs: int, pdf: bytes | None) -> float:
    """Uploads as the API makes them (bytes + row + item in one transaction); jobs/s."""
    from docqueue_app.queue import DocumentQueueService

    app = make_app(url)
    with app.app_context():
        service = DocumentQueueService()
        started = time.perf_counter()
        for n in range(jobs):
            if pdf is None:
                service.submit_document(f"{n}.txt", f"document {n}".encode(), "text/plain")
            else:
                unique = pdf + f"\n% copy {n}\n".encode()
                service.submit_document(f"{n}.pdf", unique, "application/pdf")
        return jobs / (time.perf_counter() - started)


def drain(url: str, batch: int, processing: dict) -> None:
    from docqueue_app.queue import process_document_queue

    app = make_app(url, processing)
    with app.app_context():
        while process_document_queue(batch)["processed"]:
            pass


def process(url: str, workers: int, batch: int, jobs: int, processing: dict) -> float:
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=drain, args=(url, batch, processing)) for _ in range(workers)
    ]
    started = time.perf_counter()
    for worker in processes:
        worker.start()
    for worker in processes:
        worker.join()
    return jobs / (time.perf_counter() - started)


def add_backlog(url: str, count: int, due_in_seconds: float, first: int = 1) -> None:
    """``count`` documents, each with a pending item of priority n % 11, due in so many seconds.

    Two INSERT ... SELECT over a recursive counter: a million rows in seconds.
    """
    from datetime import timedelta

    from sqlalchemy import bindparam, text

    from docqueue_app.models import UTCDateTime, db, utcnow

    counter = (
        "WITH RECURSIVE n(i) AS (SELECT CAST(:first AS INTEGER)"
        " UNION ALL SELECT i + 1 FROM n WHERE i < :last)"
    )
    stamps = [bindparam("now", type_=UTCDateTime), bindparam("run_at", type_=UTCDateTime)]
    documents = (
        f"{counter} INSERT INTO documents"
        " (filename, content_type, size, sha256, status, created_at, updated_at)"
        " SELECT 'backlog-' || i, 'text/plain', 1, 'backlog-' || i, 'pending', :now, :now FROM n"
    )
    items = (
        "INSERT INTO queue_items (document_id, operation, status, priority, attempts,"
        " max_attempts, run_at, created_at)"
        " SELECT d.id, 'process', 'pending', d.id % 11, 0, 3, :run_at, :now"
        " FROM documents AS d WHERE d.id >= :first"
    )
    now = utcnow()
    params = {"first": first, "last": first + count - 1, "now": now}
    params["run_at"] = now + timedelta(seconds=due_in_seconds)
    app = make_app(url)
    with app.app_context(), db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL statement_timeout = 0")  # a million rows take a while
        conn.execute(text(documents).bindparams(*stamps[:1]), params)
        conn.execute(text(items).bindparams(*stamps), params)
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE")


def median_ms(action, repeat: int) -> float:
    import statistics

    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def claim_costs(kind: str, backlog: int) -> None:
    """The idle poll, choosing 10 due items and claiming 10, over ``backlog`` items not yet due.

    Median milliseconds; a claim includes its commit, so the disk's sync time.
    """
    from docqueue_app.queue import DocumentQueueService

    with tempfile.TemporaryDirectory() as folder:
        url = fresh_database(kind, Path(folder))
        add_backlog(url, backlog, due_in_seconds=86400)
        app = make_app(url)
        with app.app_context():
            service = DocumentQueueService()
            idle = median_ms(lambda: service.claim_due_items(10, "bench"), 30)
            add_backlog(url, 300, due_in_seconds=-60, first=backlog + 1)
            # Choosing without claiming: the claim's query without its commit (a disk sync).
            choose = median_ms(lambda: service.get_pending_items(10), 15)
            claim = median_ms(lambda: service.claim_due_items(10, "bench"), 15)
        if kind == "postgresql":
            drop_database()
    print(
        f"{kind:10} backlog {backlog:>9,} not yet due:  idle poll {idle:7.2f} ms"
        f"   choose 10 due {choose:7.2f} ms   claim 10 {claim:7.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", "--batch-size", type=int, default=100)
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--pdf", type=Path, help="process this PDF for real, isolated")
    parser.add_argument(
        "--backlog",
        help="instead: idle poll and claim cost over these backlogs, e.g. 1000,100000,1000000",
    )
    args = parser.parse_args()
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    if args.backlog:
        for kind in kinds:
            for backlog in args.backlog.split(","):
                claim_costs(kind, int(backlog))
        return
    pdf = args.pdf.read_bytes() if args.pdf else None
    processing = REAL if pdf else NO_OP
    for kind in kinds:
        with tempfile.TemporaryDirectory() as folder:
            url = fresh_database(kind, Path(folder))
            enqueued = enqueue(url, args.jobs, pdf)
            processed = process(url, args.workers, args.batch, args.jobs, processing)
            if kind == "postgresql":
                drop_database()
        print(
            f"{kind:10} enqueue {enqueued:8.0f} jobs/s   "
            f"process {processed:8.0f} jobs/s "
            f"({args.jobs} jobs, {args.workers} workers, batch {args.batch}, "
            f"{'isolated extraction of ' + args.pdf.name if pdf else 'no-op processor'})"
        )


if __name__ == "__main__":
    main()
