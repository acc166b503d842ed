"""The deliveries' prune on a big history, on SQLite and PostgreSQL: 20,000 deliveries.

It deletes in batches, each its own transaction, and each batch reads the
deliveries of its own range of ids only: a batch that started again from the
first delivery each time read every delivery the prune keeps (pending ones, still
owed) once per batch, or sorted all the finished ones left, so the prune slowed as
it went, as the queue's purge did (tests/queue/test_purge_at_scale.py).
"""

from __future__ import annotations

import itertools
import re
import threading
from contextlib import closing
from datetime import timedelta

from flask import Flask

from bench.perf.databases import Database
from docqueue_app.models import utcnow
from docqueue_app.webhooks.deliveries import DeliveryService
from tests.helpers import backend_name, execute_sql, statements_run, wait_until
from tests.queue.test_bulk_actions import postgresql_app, scalar  # noqa: F401 (a fixture)
from tests.queue.test_claim_plans import plan_of, table_scans

DELIVERIES = 20_000


def deliveries_recorded_long_ago(app: Flask, count: int = DELIVERIES) -> None:
    """``count`` deliveries recorded 40 days ago: the odd ids delivered, the even ones
    still pending (owed: the prune keeps them)."""
    execute_sql(
        app,
        "INSERT INTO webhook_deliveries (delivery_id, event, url, payload, status, attempts,"
        " max_attempts, next_attempt_at, created_at)"
        " WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)"
        " SELECT 'd' || CAST(i AS VARCHAR(12)), 'document.completed', 'http://receiver.invalid/',"
        " '{}', CASE WHEN i % 2 = 1 THEN 'delivered' ELSE 'pending' END, 1, 8, :t, :t FROM n",
        count=count,
        t=utcnow() - timedelta(days=40),
    )
    if backend_name(app) == "postgresql":
        execute_sql(app, "ANALYZE")


def reads_beyond_a_range_of_ids(plan: str) -> list[str]:
    """``table_scans``, and each read of the deliveries not bounded by their ids: a
    seq scan, the primary key walked from its first id with a filter, or the status
    index's entries of every delivery left, sorted."""
    bad = table_scans(plan)
    lines = plan.splitlines()
    for number, line in enumerate(lines):
        if "webhook_deliveries" not in line or line.lstrip().startswith("Delete on"):
            continue
        if line.lstrip().startswith(("SEARCH", "SCAN")):  # SQLite: its search says its bounds
            bounded = re.search(r"\((rowid|id)[<>=]|AND id[<>=]", line)
        else:  # PostgreSQL: the scan's Index Cond, on the lines below it
            below = "".join(itertools.takewhile(lambda x: "->" not in x, lines[number + 1 :]))
            bounded = re.search(r"Index Cond: .*\bid (>|=)", below)
        if not bounded:
            bad.append(line)
    return bad


def test_each_batch_of_the_prune_reads_only_its_own_range_of_deliveries(app: Flask) -> None:
    deliveries_recorded_long_ago(app)

    def prune() -> int:
        with app.app_context():
            return DeliveryService().prune_finished(30)

    with statements_run(app) as run:
        pruned = prune()

    assert pruned == DELIVERIES // 2
    assert scalar(app, "SELECT count(*) FROM webhook_deliveries") == DELIVERIES // 2
    assert scalar(app, "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'") == (
        DELIVERIES // 2
    )
    # The first read finds the first and last id that may go, once; each batch after it
    # reads the next range of ids, wherever the prune has got to.
    settings: list[str] = []
    reads = 0
    for statement, parameters in run:
        if statement.strip().upper() in ("BEGIN", "COMMIT", "ROLLBACK"):
            settings = []
        elif "set_config(" in statement:
            settings.append(statement)
        elif "webhook_deliveries" in statement:
            plan = plan_of(app, statement, parameters, settings)
            if reads:
                assert reads_beyond_a_range_of_ids(plan) == [], (statement, plan)
            else:  # may read the status index's entries of the finished deliveries, once
                scans = [line for line in table_scans(plan) if "(status=?)" not in line]
                assert scans == [], (statement, plan)
            reads += 1
    assert reads >= DELIVERIES // 2 // 500


def test_a_delivery_sent_again_while_the_prune_waits_for_it_stays(
    postgresql_app: Flask,  # noqa: F811
    postgresql_clean: str,
) -> None:
    """PostgreSQL: an admin's "Deliver again" of a failed delivery, not yet committed
    when the prune's batch comes to it: the batch waits for it, then keeps it (pending,
    owed again). Before, the batch chose its ids first and deleted by id."""
    deliveries_recorded_long_ago(postgresql_app, 3)
    execute_sql(postgresql_app, "UPDATE webhook_deliveries SET status = 'failed'")
    pruned: list[int] = []

    def prune() -> None:
        with postgresql_app.app_context():
            pruned.append(DeliveryService().prune_finished(30))

    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND datname = current_database()"
    )
    with closing(Database("postgresql", postgresql_clean).connect()) as admin:
        admin.execute("BEGIN")
        admin.execute("UPDATE webhook_deliveries SET status = 'pending', attempts = 0 WHERE id = 2")
        pruner = threading.Thread(target=prune)
        pruner.start()
        wait_until(lambda: scalar(postgresql_app, waiting))
        admin.execute("COMMIT")
    pruner.join(timeout=60)

    assert pruned == [2]
    assert (
        scalar(
            postgresql_app, "SELECT string_agg(id || ' ' || status, ',') FROM webhook_deliveries"
        )
        == "2 pending"
    )
