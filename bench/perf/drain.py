"""docqueue's side of the drain and production-path measures: workers started as users do.

N items are queued up front, then ``docqueue queue worker --concurrency 1`` is started
W times; the figure is the steady-state rate (common.steady_rate): the items finished
after the first one was seen finished, over the time from then to the last one,
watched with a count of the items still pending or in progress. The workers' start-up
is target 7's business.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from datetime import timedelta

from .common import (
    CORPUS,
    NOOP_PROCESSOR,
    NotMeasured,
    docqueue_env,
    running,
    start_worker,
    steady_rate,
)
from .databases import Database, Probe, docqueue_context, fill_queue

DEFAULT_PROCESSOR = "docqueue_app.processing:extract"


def _timed_drain(
    database: Database, jobs: int, env: dict[str, str], workers: int, batch: int | None
) -> float:
    probe = Probe(database)
    try:
        # Counted from the items left, so that a history of finished items the
        # database already holds neither counts nor slows each look.
        with running([start_worker(env, batch) for _ in range(workers)]) as processes:
            rate = steady_rate(lambda: jobs - probe.unfinished(), jobs, processes)
        if failed := probe.failed():
            raise NotMeasured(f"{failed} of {jobs} documents failed")
    finally:
        probe.close()
    return rate


def docqueue_drain(
    database: Database, jobs: int, batch: int, workers: int = 2, first: int = 1
) -> float:
    """Jobs per second: no-op processor, isolation none, ``jobs`` queued up front
    (documents numbered from ``first``)."""
    fill_queue(database, first, jobs, due_in=timedelta(seconds=-1))
    env = docqueue_env(database.url, NOOP_PROCESSOR, "none")
    return _timed_drain(database, jobs, env, workers, batch)


def one_page_pdfs() -> list[tuple[str, bytes]]:
    """The corpus's 1-page PDFs that extract cleanly (from its MANIFEST.json)."""
    manifest = json.loads((CORPUS / "MANIFEST.json").read_text())
    return [
        (entry["file"].rsplit("/", 1)[-1], (CORPUS / entry["file"]).read_bytes())
        for entry in manifest
        if entry.get("kind") == "pdf"
        and entry.get("expect", {}).get("page_count") == 1
        and entry.get("expect", {}).get("outcome") == "completed"
    ]


def distinct_copies(pdfs: list[tuple[str, bytes]], count: int) -> list[tuple[str, bytes]]:
    """``count`` documents cycling through ``pdfs``, each made distinct by a trailing comment
    (PDF readers ignore bytes after %%EOF; docqueue would take equal bytes as a duplicate)."""
    return [
        (f"{number}-{name}", data + f"\n% bench copy {number}\n".encode())
        for number, (name, data) in ((n, pdfs[n % len(pdfs)]) for n in range(count))
    ]


def docqueue_production(database: Database, documents: list[tuple[str, bytes]]) -> float:
    """Documents per second: the default processor, isolation on, two workers."""
    from docqueue_app.queue import DocumentQueueService

    with docqueue_context(database):
        service = DocumentQueueService()
        for filename, data in documents:
            service.submit_document(filename, data, "application/pdf")
    env = docqueue_env(database.url, DEFAULT_PROCESSOR, "subprocess")
    return _timed_drain(database, len(documents), env, workers=2, batch=None)


def _extract_one(document: tuple[str, bytes]) -> int:
    from docqueue_app.processing import extract

    filename, data = document
    return len(extract(data, filename, "application/pdf")["text"])


def pool_production(documents: list[tuple[str, bytes]]) -> float:
    """Documents per second of a plain multiprocessing.Pool(2) running the same extraction,
    in steady state as docqueue's side: from the first result to the last."""
    # Spawned, not forked: a child forked from this process (which holds threads
    # and connections of the docqueue measures) once died at start, and the
    # pool then hung in terminate() on its lock.
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.imap_unordered(_extract_one, documents, chunksize=1)
        next(results)
        started = time.perf_counter()
        for _ in results:
            pass
        finished = time.perf_counter()
    return (len(documents) - 1) / (finished - started)
