"""The webhook deliveries' prune on a big history: how long it takes, how long its
first batch and one nine tenths of the way through take, and what uploads wait.

Run from the project root:

    .venv/bin/python -m bench.prune [--sizes 10000 100000] [--backends postgresql sqlite]
        [--explain]

For each back end and size: a fresh migrated database (``bench.perf.databases``)
holding ``size`` documents and, for each, a webhook delivery recorded 40 days ago,
then VACUUM ANALYZE on PostgreSQL, as autovacuum would. Two rounds, each on a fresh
copy:

- ``delivered``: every delivery was delivered: the prune takes them all;
- ``kept``: every other delivery is still pending (owed): the prune keeps those (a
  batch that started from the first delivery again read all those it passed).

The prune is the pruner's (``DeliveryService.prune_finished(30)``, as maintenance
runs it), while a second thread uploads one small file after the other through the
API (``bench.bulk_actions``). It prints how long the prune took, how many deliveries
it deleted, how many transactions it committed, the first batch's and the batch's
nine tenths of the way through (each transaction's time, its commit included), and
how many uploads committed during it and the slowest of them.

``--explain`` prints the plan of the statements of those two batches, taken in their
transaction just before they run: PostgreSQL's EXPLAIN (ANALYZE, BUFFERS) (in a
savepoint, rolled back), SQLite's EXPLAIN QUERY PLAN.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import timedelta
from typing import Any

from .bulk_actions import Uploader, admin_app
from .perf.databases import Database, fill_queue
from .purge import _DELIVERY_ID, _FORTY_DAYS_AGO, run_rounds

_DELIVERIES = (
    "INSERT INTO webhook_deliveries (delivery_id, document_id, event, url, payload, status,"
    " attempts, max_attempts, next_attempt_at, created_at, delivered_at)"
    " SELECT {delivery_id}, id, 'document.completed', 'http://receiver.invalid/hook', '{{}}',"
    " 'delivered', 1, 8, {ago}, {ago}, {ago} FROM documents"
)
_KEEP_EVERY_OTHER = (
    "UPDATE webhook_deliveries SET status = 'pending', delivered_at = NULL WHERE id % 2 = 0"
)
ROUNDS = ("delivered", "kept")
BATCH = 500


def fill_deliveries(database: Database, size: int, round_: str) -> int:
    """``size`` deliveries recorded 40 days ago, as ``round_`` leaves them; how many may go."""
    fill_queue(database, 1, size, timedelta(seconds=-1))
    values = {"ago": _FORTY_DAYS_AGO[database.kind], "delivery_id": _DELIVERY_ID[database.kind]}
    with closing(database.connect()) as connection:
        connection.execute(_DELIVERIES.format(**values))
        if round_ == "kept":
            connection.execute(_KEEP_EVERY_OTHER)
        if database.kind == "postgresql":
            connection.execute("VACUUM ANALYZE")
    return size // 2 if round_ == "kept" else size


@contextmanager
def batches_watched(app: Any, watched: set[int], explain: bool) -> Iterator[list[float]]:
    """The times this thread's transactions committed; the plans of the statements of
    the transactions numbered in ``watched`` printed just before they run."""
    from sqlalchemy import event

    from docqueue_app.models import db

    with app.app_context():
        engine = db.engine
    mine = threading.get_ident()
    commits: list[float] = []

    def committed(connection: Any) -> None:
        if threading.get_ident() == mine:
            commits.append(time.perf_counter())

    def before(connection: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if threading.get_ident() != mine or len(commits) not in watched:
            return
        if "webhook_deliveries" not in statement:
            return
        print(f"-- transaction {len(commits)}: {' '.join(statement.split())[:160]}")
        explainer = cursor.connection.cursor()
        if engine.dialect.name == "postgresql":
            explainer.execute("SAVEPOINT bench_explain")
            explainer.execute(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters)
            plan = [row[0] for row in explainer.fetchall()]
            explainer.execute("ROLLBACK TO SAVEPOINT bench_explain")
        else:
            explainer.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plan = [row[-1] for row in explainer.fetchall()]
        print("\n".join(f"   {line}" for line in plan))

    event.listen(engine, "commit", committed)
    if explain:
        event.listen(engine, "before_cursor_execute", before)
    try:
        yield commits
    finally:
        event.remove(engine, "commit", committed)
        if explain:
            event.remove(engine, "before_cursor_execute", before)


def prune_row(database: Database, size: int, round_: str, explain: bool) -> str:
    to_go = fill_deliveries(database, size, round_)
    from docqueue_app.webhooks.deliveries import DeliveryService

    # The read of the cutoff (and of the range to walk) commits first: batch 1 is
    # commit 1 (the way through, one batch of BATCH each, is counted from it).
    at_nine_tenths = 1 + to_go * 9 // 10 // BATCH
    with admin_app(database) as app, batches_watched(app, {1, at_nine_tenths}, explain) as commits:
        uploader = Uploader(app)
        uploader.start()
        started = time.perf_counter()
        with app.app_context():
            deleted = DeliveryService().prune_finished(30)
        seconds = time.perf_counter() - started
        uploader.stopped.set()
        uploader.join()
    took = [(b - a) * 1000 for a, b in itertools.pairwise(commits)]
    nine_tenths = took[min(at_nine_tenths - 1, len(took) - 1)] if took else 0.0
    timings = uploader.timings_ms
    return (
        f"{size:>10,}  {round_:<9} {seconds:8.2f} {deleted:>8,} {len(commits):>8,}"
        f" {took[0] if took else 0:7.1f}ms {nine_tenths:7.1f}ms"
        f"  {len(timings):7,} {max(timings, default=0.0):6.0f}ms"
    )


def main() -> None:
    header = (
        f"{'deliveries':>10}  {'round':<9} {'seconds':>8} {'deleted':>8} {'commits':>8}"
        "    first   at 9/10  uploads  slowest"
    )
    run_rounds(__doc__, ROUNDS, header, prune_row)


if __name__ == "__main__":
    main()
