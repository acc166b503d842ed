"""Idle poll and claim cost against a growing backlog of not-yet-due items.

The backlog grows in place (1,000, then 10,000, ...): items due in a day, with their
documents, bulk-inserted. At each size: the median time of ``claim_due_items`` calls
that find nothing (idle polls), and of calls that claim 10 due items placed among
the backlog just before (their insert is not timed; they are marked completed after).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta

from .common import median
from .databases import Database, docqueue_context, fill_queue

NOT_DUE = timedelta(days=1)
DUE = timedelta(seconds=-1)
CLAIMED = 10
WORKER = "bench-backlog"


@dataclass(frozen=True)
class BacklogPoint:
    backlog: int
    idle_ms: float
    claim_ms: float


def _ms(call: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return (time.perf_counter() - started) * 1000, result


def _analyze(database: Database) -> None:
    """What autovacuum would do after a bulk insert on PostgreSQL."""
    if database.kind == "postgresql":
        with closing(database.connect()) as connection:
            connection.execute("VACUUM ANALYZE queue_items")
            connection.execute("VACUUM ANALYZE documents")


def _finish(database: Database, first: int) -> None:
    with closing(database.connect()) as connection:
        connection.execute(
            "UPDATE queue_items SET status = 'completed', lease_expires_at = NULL"
            f" WHERE id >= {first}"
        )


def _median_idle_ms(poll: Callable[[], list], calls: int) -> float:
    poll()  # warm-up: the statement's plan and the connection
    timings = []
    for _ in range(calls):
        elapsed, claimed = _ms(poll)
        if claimed:
            raise RuntimeError("an idle poll claimed an item that was not due")
        timings.append(elapsed)
    return median(timings)


class Backlog:
    """The queue being grown: the next free id, so each insert numbers after the last."""

    def __init__(self, database: Database) -> None:
        self.database = database
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


def _median_claim_ms(backlog: Backlog, poll: Callable[[], list], calls: int) -> float:
    timings = []
    for _ in range(calls):
        first = backlog.add_due()
        elapsed, claimed = _ms(poll)
        if len(claimed) != CLAIMED:
            raise RuntimeError(f"claimed {len(claimed)} of {CLAIMED} due items")
        timings.append(elapsed)
        _finish(backlog.database, first)
    return median(timings)


def backlog_curve(
    database: Database, sizes: list[int], idle_calls: int = 50, claim_calls: int = 15
) -> list[BacklogPoint]:
    """Median idle-poll and claim milliseconds at each backlog size (ascending)."""
    from docqueue_app.queue import DocumentQueueService

    points = []
    backlog = Backlog(database)
    with docqueue_context(database):
        service = DocumentQueueService()

        def poll() -> list:
            return service.claim_due_items(CLAIMED, WORKER)

        for size in sizes:
            backlog.grow_to(size)
            idle = _median_idle_ms(poll, idle_calls)
            claim = _median_claim_ms(backlog, poll, claim_calls)
            points.append(BacklogPoint(size, idle, claim))
    return points
