"""Idle poll and claim cost against a growing backlog of not-yet-due items.

The backlog grows in place (1,000, then 10,000, ...): items due in a day, with their
documents, bulk-inserted. At each size: the median time of ``claim_due_items`` calls
that find nothing (idle polls), and of calls that claim 10 due items placed among
the backlog just before (their insert is not timed; they are marked completed after).

Each call alternates with the same call on a second queue kept at the smallest size,
so the ratio at a size compares medians taken over the same seconds. Measured one
size after the other, the two ends of the curve were minutes apart, and this
machine's speed moves more than the backlog does: medians of the idle poll at one
size differed by up to 2x from one process to the next, while the poll's SQL alone
took 0.011 ms at 1,000 items and at 1,000,000.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .common import median
from .databases import Database, app_on, fill_queue

NOT_DUE = timedelta(days=1)
DUE = timedelta(seconds=-1)
CLAIMED = 10
WORKER = "bench-backlog"


@dataclass(frozen=True)
class BacklogPoint:
    backlog: int
    idle_ms: float
    claim_ms: float
    # The same calls on the queue kept at the smallest size, alternated with these.
    smallest_idle_ms: float
    smallest_claim_ms: float


def _analyze(database: Database) -> None:
    """What autovacuum would do after a bulk insert on PostgreSQL."""
    if database.kind == "postgresql":
        with closing(database.connect()) as connection:
            connection.execute("VACUUM ANALYZE queue_items")
            connection.execute("VACUUM ANALYZE documents")


class Backlog:
    """A queue being grown, and docqueue's app on it. Ids are numbered by the queue, so
    each insert numbers after the last."""

    def __init__(self, database: Database, app: Any) -> None:
        self.database = database
        self.app = app
        self.next_id = 1
        self.size = 0

    def grow_to(self, size: int) -> None:
        added = size - self.size
        fill_queue(self.database, self.next_id, added, NOT_DUE)
        self.next_id += added
        self.size = size
        _analyze(self.database)

    def add_due(self) -> int:
        """Queue CLAIMED due items; the id of the first."""
        first = self.next_id
        fill_queue(self.database, first, CLAIMED, DUE)
        self.next_id += CLAIMED
        return first

    def finish(self, first: int) -> None:
        """Mark the items from ``first`` on completed (not timed)."""
        with closing(self.database.connect()) as connection:
            connection.execute(
                "UPDATE queue_items SET status = 'completed', lease_expires_at = NULL"
                f" WHERE id >= {first}"
            )

    def timed_claim(self) -> tuple[float, list]:
        """Milliseconds of one ``claim_due_items`` call, and what it claimed.

        The app context is pushed before the clock starts: the call itself takes a
        pooled connection and ends its transaction, as a worker's does.
        """
        from docqueue_app.queue import DocumentQueueService

        with self.app.app_context():
            service = DocumentQueueService()
            started = time.perf_counter()
            claimed = service.claim_due_items(CLAIMED, WORKER)
            return (time.perf_counter() - started) * 1000, claimed


def _alternating(
    queues: list[Backlog], calls: int, one_call: Callable[[Backlog], float]
) -> list[float]:
    """The median of each queue's ``calls`` timed calls, the queues taking turns."""
    timings: list[list[float]] = [[] for _ in queues]
    for _ in range(calls):
        for queue, series in zip(queues, timings, strict=True):
            series.append(one_call(queue))
    return [median(series) for series in timings]


def _idle_poll(queue: Backlog) -> float:
    elapsed, claimed = queue.timed_claim()
    if claimed:
        raise RuntimeError("an idle poll claimed an item that was not due")
    return elapsed


def _claim_of_due_items(queue: Backlog) -> float:
    first = queue.add_due()
    elapsed, claimed = queue.timed_claim()
    if len(claimed) != CLAIMED:
        raise RuntimeError(f"claimed {len(claimed)} of {CLAIMED} due items")
    queue.finish(first)
    return elapsed


def backlog_curve(
    database: Database,
    smallest_database: Database,
    sizes: list[int],
    idle_calls: int = 200,
    claim_calls: int = 20,
) -> list[BacklogPoint]:
    """Median idle-poll and claim milliseconds at each backlog size (ascending), each
    beside the same medians on ``smallest_database``, kept at ``sizes[0]``."""
    points = []
    with app_on(database) as app, app_on(smallest_database) as smallest_app:
        grown, smallest = Backlog(database, app), Backlog(smallest_database, smallest_app)
        smallest.grow_to(sizes[0])
        for queue in (grown, smallest):
            queue.timed_claim()  # warm-up: the statements' plans, the pool's connection
        for size in sizes:
            grown.grow_to(size)
            idle, smallest_idle = _alternating([grown, smallest], idle_calls, _idle_poll)
            claim, smallest_claim = _alternating(
                [grown, smallest], claim_calls, _claim_of_due_items
            )
            points.append(BacklogPoint(size, idle, claim, smallest_idle, smallest_claim))
    return points
