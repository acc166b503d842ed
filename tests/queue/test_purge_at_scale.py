"""The purge on a big history, on SQLite and PostgreSQL: 20,000 finished items.

It deletes in batches, each its own transaction, so uploads, retries and claims go
on between them; an item retried while the purge runs is no longer finished and
stays. Each batch reads the items of its own range of ids only: a batch that
started again from the first item each time read every item the purge keeps
(failed ones, for a purge of completed items) once per batch, and sorted all that
were left, so the purge slowed as it went.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from bench.bulk_actions import fill_failed
from bench.perf.databases import Database
from docqueue_app.models import utcnow
from tests.helpers import backend_name, execute_sql, upload
from tests.queue.test_bulk_actions import (
    ITEMS_PER_TRANSACTION_AT_LEAST,
    admin,  # noqa: F401 (a fixture)
    admin_app,  # noqa: F401 (a fixture)
    after_the_first_write_of_this_thread,
    basic_auth,
    commits_of_this_thread,
    flashes,
    in_another_thread,
    scalar,
)
from tests.queue.test_claim_plans import in_service, plan_of, queue_statements_sent, table_scans

ITEMS = 20_000


def finished_long_ago(app: Flask, database_url: str) -> None:
    """ITEMS documents whose one item failed 40 days ago (with its attempt)."""
    fill_failed(Database(backend_name(app), database_url), ITEMS)
    execute_sql(app, "UPDATE queue_items SET finished_at = :t", t=utcnow() - timedelta(days=40))
    if backend_name(app) == "postgresql":
        execute_sql(app, "ANALYZE")


def upload_and_retry(app: Flask, item_id: int) -> dict[str, Any]:
    """Another client, while the purge runs: an upload, a retry of the item, and how
    many items it sees left."""
    headers = {"Authorization": basic_auth()}
    other = app.test_client()
    return {
        "upload": upload(other, b"uploaded during the purge", headers=headers).status_code,
        "retry": other.post(f"/api/queue/items/{item_id}/retry", headers=headers).status_code,
        "items_left": scalar(app, "SELECT count(*) FROM queue_items"),
    }


def test_uploads_and_a_retry_go_on_between_the_batches_of_a_purge(
    admin_app: Flask,  # noqa: F811
    admin: FlaskClient,  # noqa: F811
    database_url: str,
) -> None:
    finished_long_ago(admin_app, database_url)
    last = ITEMS  # taken by the purge's last batch, retried before it comes
    meanwhile: dict[str, Any] = {}

    with (
        commits_of_this_thread(admin_app) as commits,
        after_the_first_write_of_this_thread(
            lambda: meanwhile.update(in_another_thread(lambda: upload_and_retry(admin_app, last)))
        ),
    ):
        response = admin.post("/admin/purge", data={"days": "30"})

    assert response.status_code == 303
    assert flashes(admin) == [f"Purged {ITEMS - 1:,} items finished more than 30 days ago."]
    # Served while the purge was under way: after its first batch, before its last.
    assert meanwhile.pop("items_left") in range(2, ITEMS)
    assert meanwhile == {"upload": 202, "retry": 200}
    assert commits[0] <= ITEMS // ITEMS_PER_TRANSACTION_AT_LEAST
    # What is left: the retried item, pending again with its history, and the upload's.
    assert scalar(admin_app, "SELECT status FROM queue_items WHERE id = :id", id=last) == "pending"
    assert scalar(admin_app, "SELECT status FROM documents WHERE id = :id", id=last) == "pending"
    assert scalar(admin_app, "SELECT count(*) FROM queue_items") == 2
    assert scalar(admin_app, "SELECT count(*) FROM queue_attempts") == 1
    # Every document is kept; the purged ones show their last status (failed).
    assert scalar(admin_app, "SELECT count(*) FROM documents") == ITEMS + 1
    assert scalar(admin_app, "SELECT count(*) FROM documents WHERE status = 'failed'") == ITEMS - 1


def test_each_batch_reads_only_its_own_range_of_items(app: Flask, database_url: str) -> None:
    """A purge of the completed items among failed ones it keeps: no batch reads the
    whole table, or sorts what is left, to find its next items."""
    finished_long_ago(app, database_url)
    execute_sql(app, "UPDATE queue_items SET status = 'completed' WHERE id % 2 = 0")
    execute_sql(app, "UPDATE documents SET status = 'completed' WHERE id % 2 = 0")
    if backend_name(app) == "postgresql":
        execute_sql(app, "ANALYZE")

    purge = in_service(app, lambda service: service.purge_items(30, ["completed"]))
    sent = queue_statements_sent(app, purge)

    assert scalar(app, "SELECT count(*) FROM queue_items") == ITEMS // 2
    assert scalar(app, "SELECT count(*) FROM queue_items WHERE status = 'failed'") == ITEMS // 2
    for statement, parameters, settings in sent:
        plan = plan_of(app, statement, parameters, settings)
        assert table_scans(plan) == [], plan
        if statement.lstrip().upper().startswith("DELETE"):
            # Not the entries of every item left to delete, joined with its range.
            assert "ix_queue_items_status_finished" not in plan, plan
