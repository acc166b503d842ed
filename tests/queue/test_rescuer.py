"""The rescuer: expired leases handed back in batches, one bad row never blocking the rest."""

from __future__ import annotations

from datetime import timedelta

import pytest

from docqueue_app.models import QueueItem, db, utcnow
from docqueue_app.queue import DocumentQueueService, rescuer
from tests.helpers import backend_name, execute_sql


@pytest.fixture
def service(app_ctx):
    return DocumentQueueService()


def claimed_documents(service: DocumentQueueService, count: int) -> list[int]:
    for n in range(count):
        service.submit_document(f"{n}.txt", f"document {n}".encode(), "text/plain")
    ids = [item.id for item in service.claim_due_items(count, "doomed-worker")]
    db.session.commit()  # reading the ids began a transaction; DDL must not wait on it
    return ids


def expire_all(app) -> None:
    execute_sql(
        app,
        "UPDATE queue_items SET lease_expires_at = :t WHERE status = 'in_progress'",
        t=utcnow() - timedelta(seconds=1),
    )


def statuses() -> dict[int, str]:
    db.session.commit()
    return dict(db.session.execute(db.select(QueueItem.id, QueueItem.status)).all())


def test_a_sweep_rescues_every_expired_item_batch_after_batch(app, service, monkeypatch):
    monkeypatch.setattr(rescuer, "MAINTENANCE_BATCH", 2)
    ids = claimed_documents(service, 5)
    expire_all(app)
    assert rescuer.rescue_lost_items(service) == 5
    assert set(statuses().values()) == {"pending"}
    assert sorted(statuses()) == sorted(ids)


def test_live_leases_are_left_alone(app, service):
    claimed_documents(service, 2)
    assert rescuer.rescue_lost_items(service) == 0
    assert set(statuses().values()) == {"in_progress"}


def refuse_leaving_progress(app, item_id: int) -> None:
    """A fault injected with the database's own means: this row refuses to be rescued."""
    if backend_name(app) == "sqlite":
        execute_sql(
            app,
            "CREATE TRIGGER refuse BEFORE UPDATE OF status ON queue_items "
            f"WHEN OLD.id = {item_id} BEGIN SELECT RAISE(ABORT, 'row refuses'); END",
        )
        return
    execute_sql(
        app,
        "CREATE OR REPLACE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
        "RAISE EXCEPTION 'row refuses'; END $$ LANGUAGE plpgsql",
    )
    execute_sql(
        app,
        "CREATE TRIGGER refuse BEFORE UPDATE OF status ON queue_items FOR EACH ROW "
        f"WHEN (OLD.id = {item_id}) EXECUTE FUNCTION refuse()",
    )


def test_one_row_that_cannot_be_rescued_never_blocks_the_others(app, service):
    ids = claimed_documents(service, 3)
    refuse_leaving_progress(app, ids[1])
    try:
        expire_all(app)
        assert rescuer.rescue_lost_items(service) == 2
        assert statuses() == {ids[0]: "pending", ids[1]: "in_progress", ids[2]: "pending"}
        # The next claims go on: the stuck row does not make every pass raise.
        assert len(service.claim_due_items(10, "next-worker")) == 2
    finally:
        db.session.rollback()  # DDL waits for every open transaction on the table
        execute_sql(
            app,
            "DROP TRIGGER refuse" + ("" if backend_name(app) == "sqlite" else " ON queue_items"),
        )
