"""One worker's CPU per job, without the noise: an in-process drain of no-op documents.

Run from the project root:

    .venv/bin/python -m bench.inprocess_drain postgresql 100 1500

fills a fresh database (PostgreSQL at 127.0.0.1:5432, or a temporary SQLite file)
with JOBS small text documents (or, with ``--documents pdf``, copies of the
corpus's 1-page PDFs, 12-88 KB: the claim then carries their bytes), then calls
``process_document_queue(BATCH)`` until the queue is empty, in this process
(isolation none, no-op processor), and prints the rate and this process's CPU
per job. CPU time moves 10-40% between runs on a shared
machine; instruction counts do not. For those, run it under callgrind for two sizes
and divide the difference of the totals by the difference of the sizes, which
leaves out start-up and the fill:

    valgrind --tool=callgrind --callgrind-out-file=small.out \\
        .venv/bin/python -m bench.inprocess_drain postgresql 100 500
    valgrind --tool=callgrind --callgrind-out-file=large.out \\
        .venv/bin/python -m bench.inprocess_drain postgresql 100 1500
    # instructions per job: (total of large.out - total of small.out) / 1000
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import timedelta

from bench.perf.common import NOOP_PROCESSOR, docqueue_env
from bench.perf.databases import BACKENDS, Database, docqueue_context, fill_queue, templates
from bench.perf.drain import distinct_copies, one_page_pdfs


def _fill(database: Database, documents: str, jobs: int) -> None:
    if documents == "text":
        fill_queue(database, 1, jobs, due_in=timedelta(seconds=-1))
        return
    from docqueue_app.queue import DocumentQueueService
    from docqueue_app.queue.submissions import NewDocument

    files = [
        NewDocument(name, data, "application/pdf")
        for name, data in distinct_copies(one_page_pdfs(), jobs)
    ]
    with docqueue_context(database):
        DocumentQueueService().submit_documents(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backend", choices=BACKENDS)
    parser.add_argument("batch", type=int, help="claim size (process_document_queue's limit)")
    parser.add_argument("jobs", type=int)
    parser.add_argument("--documents", choices=("text", "pdf"), default="text")
    args = parser.parse_args()
    with templates() as made, made.fresh(args.backend) as database:
        _fill(database, args.documents, args.jobs)
        # As the bench's workers are configured, in this process.
        os.environ.update(docqueue_env(database.url, NOOP_PROCESSOR, "none"))
        from docqueue_app import create_app
        from docqueue_app.queue import process_document_queue

        with create_app(serve_http=False).app_context():
            started, cpu_started, processed = time.perf_counter(), time.process_time(), 0
            while passed := process_document_queue(args.batch, look_first=False)["processed"]:
                processed += passed
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    print(
        f"{args.backend}, claims of {args.batch}, {args.documents}: {processed} jobs,"
        f" {processed / seconds:,.0f}/s,"
        f" this process's CPU {cpu / processed * 1e6:.0f} us a job"
    )


if __name__ == "__main__":
    main()
