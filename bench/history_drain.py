"""A burst of uploads onto a long history: the drain beside the same drain onto an empty table.

Run from the project root (not part of ``make bench``):

    .venv/bin/python -m bench.history_drain [--history 200000] [--jobs 10000]
        [--batch 10,100] [--rounds 3] [--backends postgresql,sqlite]

Each round drains ``--jobs`` no-op documents with two ``docqueue queue worker``
processes (isolation none) twice, alternated: onto a fresh database, and onto one
holding ``--history`` finished items (each with its attempt) whose statistics were
taken, as autovacuum takes them, while none was pending, so they have not seen the
burst. That is a queue's everyday state: most of its items are finished, and a
burst outnumbers nothing the statistics know. The rate is the steady-state rate of
every throughput measure (bench.perf.drain.docqueue_drain); printed are the medians
of the rounds and their ratio, which stays near 1 when claims and outcomes read
index ranges whatever the statistics say.
"""

from __future__ import annotations

import argparse
import statistics
from contextlib import closing
from datetime import timedelta

from bench.perf.databases import BACKENDS, Database, Templates, fill_queue, templates
from bench.perf.drain import docqueue_drain

# Every queued item finished (completed, with its attempt), as a long history is.
FINISH_EVERY_ITEM = (
    "UPDATE queue_items SET status = 'completed', attempts = 1, started_at = created_at,"
    " finished_at = created_at",
    "INSERT INTO queue_attempts (queue_item_id, attempt, worker, started_at, finished_at,"
    " outcome) SELECT id, 1, 'history', started_at, finished_at, 'completed' FROM queue_items",
    "UPDATE documents SET status = 'completed'",
)
_ANALYZE = {"postgresql": "VACUUM ANALYZE", "sqlite": "ANALYZE"}


def add_finished_history(database: Database, items: int) -> None:
    """``items`` finished documents, then the statistics taken while none is pending."""
    fill_queue(database, 1, items, due_in=timedelta(hours=-1))
    with closing(database.connect()) as connection:
        for statement in FINISH_EVERY_ITEM:
            connection.execute(statement)
        connection.execute(_ANALYZE[database.kind])


def drain(made: Templates, kind: str, history: int, jobs: int, batch: int) -> float:
    """Jobs per second of two workers draining ``jobs`` queued after ``history``."""
    with made.fresh(kind) as database:
        if history:
            add_finished_history(database, history)
        return docqueue_drain(database, jobs, batch, first=history + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=200_000)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--batch", default="10,100", help="claim sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args()
    batches = [int(size) for size in args.batch.split(",")]
    rates: dict[tuple[str, int, int], list[float]] = {}
    with templates() as made:
        for _ in range(args.rounds):
            for kind in args.backends.split(","):
                for batch in batches:
                    for history in (0, args.history):
                        rate = drain(made, kind, history, args.jobs, batch)
                        rates.setdefault((kind, batch, history), []).append(rate)
    for kind in args.backends.split(","):
        for batch in batches:
            empty = statistics.median(rates[kind, batch, 0])
            onto = statistics.median(rates[kind, batch, args.history])
            print(
                f"{kind}, claims of {batch}: {args.jobs:,} jobs onto {args.history:,} finished"
                f" {onto:,.0f}/s, onto an empty table {empty:,.0f}/s, ratio {onto / empty:.2f}"
                f" (medians of {args.rounds})"
            )


if __name__ == "__main__":
    main()
