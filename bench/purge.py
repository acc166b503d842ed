"""The purge on a big history: how long it takes, and what uploads meanwhile wait.

Run from the project root:

    .venv/bin/python -m bench.purge [--sizes 10000 100000] [--backends postgresql sqlite]
        [--explain]

For each back end and size: a fresh migrated database (``bench.perf.databases``)
holding ``size`` documents, each with one item completed 40 days ago, its attempt
in the history and a delivered webhook (deliveries name documents, not items:
a purge leaves them), then VACUUM ANALYZE on PostgreSQL, as autovacuum would.
Three rounds, each on a fresh copy:

- ``vacuumed``: the purge runs on that table;
- ``churned``: every item is first retried and completed again (two updates of
  every row, as a "Retry all failed" and a drain leave them) with no vacuum after,
  the case where a purge of 100,000 took 31 s on PostgreSQL (README);
- ``kept``: every other item was retried and is pending: the purge takes the others
  and keeps these (a batch that started from the first item again read all those
  it passed).

Each purge is the console's ``POST /admin/purge`` of everything finished more than
30 days ago, in the Flask test client with the admin login, while a second thread
uploads one small file after the other through the API (``bench.bulk_actions``).
It prints how long the purge took, how many items it deleted, how many transactions
it committed, and how many uploads committed during it and the slowest of them.

``--explain`` prints PostgreSQL's EXPLAIN (ANALYZE, BUFFERS) of a batch's DELETE
(rolled back), the first and one nine tenths of the way through the ids, on each
round.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .bulk_actions import PROXY_READ_TIMEOUT_SECONDS, Figures, admin_app, timed_post
from .perf.databases import BACKENDS, Database, fill_queue, templates

_FORTY_DAYS_AGO = {
    "postgresql": "now() - interval '40 days'",
    "sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now', '-40 days')",
}
_DELIVERY_ID = {
    "postgresql": "lpad(to_hex(id), 36, '0')",
    "sqlite": "printf('%036x', id)",
}
_FINISH_ALL = (
    "UPDATE queue_items SET status = 'completed', attempts = 1, started_at = {ago},"
    " finished_at = {ago}",
    "UPDATE documents SET status = 'completed', processed_at = {ago}",
    "INSERT INTO queue_attempts (queue_item_id, attempt, worker, started_at, finished_at,"
    " outcome) SELECT id, 1, 'bench', {ago}, {ago}, 'completed' FROM queue_items",
    "INSERT INTO webhook_deliveries (delivery_id, document_id, event, url, payload, status,"
    " attempts, max_attempts, next_attempt_at, created_at, delivered_at)"
    " SELECT {delivery_id}, id, 'document.completed', 'http://receiver.invalid/hook', '{{}}',"
    " 'delivered', 1, 8, {ago}, {ago}, {ago} FROM documents",
)
# A retry and a drain: two updates of every item, each changing indexed columns.
_CHURN = (
    "UPDATE queue_items SET status = 'pending', finished_at = NULL",
    "UPDATE queue_items SET status = 'completed', finished_at = {ago}",
)
# Every other item retried (pending again, not run yet): the purge keeps those.
_KEEP_EVERY_OTHER = (
    "UPDATE queue_items SET status = 'pending', finished_at = NULL WHERE id % 2 = 0",
    "UPDATE documents SET status = 'pending', processed_at = NULL WHERE id % 2 = 0",
)
ROUNDS = ("vacuumed", "churned", "kept")


@dataclass(frozen=True)
class PurgeFigures:
    figures: Figures
    deleted: int
    transactions: int


def fill_finished(database: Database, size: int, round_: str) -> None:
    """``size`` documents, each with one item completed 40 days ago and its history,
    as ``round_`` leaves them."""
    fill_queue(database, 1, size, timedelta(seconds=-1))
    values = {"ago": _FORTY_DAYS_AGO[database.kind], "delivery_id": _DELIVERY_ID[database.kind]}
    with closing(database.connect()) as connection:
        connection.execute("BEGIN")
        for statement in _FINISH_ALL:
            connection.execute(statement.format(**values))
        connection.execute("COMMIT")
        if round_ == "kept":
            for statement in _KEEP_EVERY_OTHER:
                connection.execute(statement.format(**values))
        if database.kind == "postgresql":
            connection.execute("VACUUM ANALYZE")
        if round_ == "churned":
            for statement in _CHURN:
                connection.execute(statement.format(**values))


@contextmanager
def counted_commits(app: Any) -> Iterator[Callable[[], int]]:
    """Counts the commits of the app's engine made by this thread (the purge's request)."""
    from sqlalchemy import event

    from docqueue_app.models import db

    with app.app_context():
        engine = db.engine
    mine = threading.get_ident()
    commits = [0]

    def count(connection: Any) -> None:
        if threading.get_ident() == mine:
            commits[0] += 1

    event.listen(engine, "commit", count)
    try:
        yield lambda: commits[0]
    finally:
        event.remove(engine, "commit", count)


def explain_batches(app: Any) -> None:
    """EXPLAIN ANALYZE of a purge's first batch and of one nine tenths of the way
    through its ids, each rolled back (PostgreSQL)."""
    from sqlalchemy.dialects import postgresql

    from docqueue_app.models import db
    from docqueue_app.queue import queries
    from docqueue_app.queue.service import MAINTENANCE_BATCH
    from docqueue_app.states import FINISHED_STATUSES
    from docqueue_app.transactions import RANGE_DELETE_PLANNER_SETTINGS

    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    with app.app_context():
        cutoff = datetime.now(UTC) - timedelta(days=30)
        bounds = queries.purgeable_ids(cutoff, FINISHED_STATUSES)
        first, last = db.session.execute(bounds).one()
        for label, after in (
            ("first batch", first - 1),
            ("at 9/10", first + (last - first) * 9 // 10),
        ):
            batch = queries.purge_batch(
                cutoff, FINISHED_STATUSES, after, after + MAINTENANCE_BATCH, "postgresql"
            )
            sql = str(batch.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
            db.session.execute(RANGE_DELETE_PLANNER_SETTINGS)
            plan = db.session.connection().exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
            print(f"-- {label}")
            print("\n".join(f"   {line}" for line in plan.scalars()))
            db.session.rollback()
        db.session.remove()


def measure(database: Database, size: int, round_: str, explain: bool) -> PurgeFigures:
    fill_finished(database, size, round_)
    with admin_app(database) as app:
        if explain and database.kind == "postgresql":
            explain_batches(app)
        with counted_commits(app) as commits:
            figures = timed_post(app, "purge > 30 days", "/admin/purge", {"days": "30"})
            transactions = commits()
        with closing(database.connect()) as connection:
            left = connection.execute("SELECT count(*) FROM queue_items").fetchone()[0]
        uploads = figures.uploads
    # The uploads' items and the kept ones are not finished: whatever is gone was purged.
    return PurgeFigures(figures, size + uploads - left, transactions)


def run_rounds(
    description: str | None, rounds: tuple[str, ...], header: str, row: Callable[..., str]
) -> None:
    """The command line of this bench and of ``bench.prune``: for each back end, size
    and round, a fresh database and the line ``row(database, size, round_, explain)``."""
    parser = argparse.ArgumentParser(description=(description or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--rounds", nargs="+", choices=rounds, default=list(rounds))
    parser.add_argument("--explain", action="store_true")
    args = parser.parse_args()
    print(f"{'back end':<11} {header}")
    with templates() as made:
        for kind in args.backends:
            for size in args.sizes:
                for round_ in args.rounds:
                    with made.fresh(kind) as database:
                        line = row(database, size, round_, args.explain)
                    print(f"{kind:<11} {line}", flush=True)


def purge_row(database: Database, size: int, round_: str, explain: bool) -> str:
    p = measure(database, size, round_, explain)
    f = p.figures
    over = " (past a proxy_read_timeout of 60 s)"
    return (
        f"{size:>8,}  {round_:<9} {f.seconds:8.2f} {p.deleted:>8,}"
        f" {p.transactions:>8,}  {f.uploads:7,} {f.slowest_upload_ms:6.0f}ms"
        f"  {f.answer}{over if f.seconds > PROXY_READ_TIMEOUT_SECONDS else ''}"
    )


def main() -> None:
    header = (
        f"{'items':>8}  {'round':<9} {'seconds':>8} {'deleted':>8} {'commits':>8}  uploads  slowest"
    )
    run_rounds(__doc__, ROUNDS, header, purge_row)


if __name__ == "__main__":
    main()
