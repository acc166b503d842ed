"""PostgreSQL's statistics of the queue's tables follow a burst within autovacuum's round.

A queue's everyday state, all finished, is what autovacuum's ANALYZE sees
most. By default it analyzes a table again once a tenth of it has changed: a
burst of a few thousand uploads onto a long history waits for hours of them.
Meanwhile PostgreSQL plans the claim with statistics that say nothing is in
progress, and checks "no other item of this document in progress" by reading
every item in progress for each candidate: 14-17 ms a claim of 10 with 16,000
in progress, against 1.4 ms once analyzed. The migration 0007 has autovacuum
analyze the queue's tables after every thousand changed rows instead.

On a cluster this test owns, so that autovacuum can look every second (its
default round is a minute) without touching the shared server.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from flask import Flask
from flask_migrate import upgrade

from docqueue_app.queue import DocumentQueueService
from tests.conftest import app_factory
from tests.e2e.pg_cluster import PostgresCluster
from tests.queue.test_claim_plans import (
    add_history_then_a_backlog,
    in_service,
    plan_of,
    queue_statements_sent,
)

HISTORY = 100_000  # by default, autovacuum would wait for 10,050 changed rows
BURST = 3_000
IN_PROGRESS = 2_000
AUTOVACUUM_ROUNDS = 30  # of one second each

# The busy check as an index lookup per candidate (by document), not a read of
# every item in progress.
BUSY_CHECK_BY_DOCUMENT = (
    "Index Cond: ((document_id = q.document_id) AND ((status)::text = 'in_progress'::text))"
)


def autovacuum_every_second(cluster: PostgresCluster) -> None:
    with psycopg.connect(cluster.admin_url, autocommit=True) as connection:
        connection.execute("ALTER SYSTEM SET autovacuum_naptime = 1")
        connection.execute("SELECT pg_reload_conf()")


def a_claim_of_ten(app: Flask) -> tuple[str, Any, list]:
    """A claim of 10 as a worker sends it (run once): its statement, parameters and settings."""
    claim = in_service(app, lambda service: service.claim_due_items(10, "w", look_first=False))
    [sent] = [sent for sent in queue_statements_sent(app, claim) if "WITH claimed AS" in sent[0]]
    return sent


def test_a_burst_onto_a_long_history_is_claimed_by_index_once_autovacuum_has_looked(
    pg_cluster: PostgresCluster,
) -> None:
    autovacuum_every_second(pg_cluster)
    with app_factory(pg_cluster.url) as make_app:
        app = make_app()
        with app.app_context():
            upgrade()
        add_history_then_a_backlog(app, HISTORY, BURST)
        with app.app_context():
            service = DocumentQueueService()
            for _ in range(IN_PROGRESS // 100):
                service.claim_due_items(100, "w", look_first=False)
        claim = a_claim_of_ten(app)

        plan = plan_of(app, *claim)
        for _ in range(AUTOVACUUM_ROUNDS * 2):
            if BUSY_CHECK_BY_DOCUMENT in plan:
                break
            time.sleep(0.5)
            plan = plan_of(app, *claim)

    assert BUSY_CHECK_BY_DOCUMENT in plan, plan
